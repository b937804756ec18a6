"""A real Prometheus scrapes a real Pushgateway fed by a real Celery task; PromQL reads the values back.

The test setup starts Debian's ``prometheus`` and ``prometheus-pushgateway``
binaries (``make services`` installs them) on free 127.0.0.1 ports, with a
temporary configuration: Prometheus scrapes the gateway every second with
``honor_labels`` and loads the shipped rules (docs/alerts.yml). Under CI=true a
missing binary fails the run (tests/services.py ``missing``).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.celery.conftest import ROOT, CeleryEnv, seed_store, wait_until
from tests.services import missing
from workflow_retention.celery import TASK_NAME
from workflow_retention.exceptions import StorageError

pytestmark = pytest.mark.slow

RULES = ROOT / "docs" / "alerts.yml"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed (make services installs the Debian packages prometheus and "
                "prometheus-pushgateway)")
    assert path is not None
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        body = response.read()
    return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()


def answers(url: str) -> bool:
    try:
        get(url)
        return True
    except OSError:
        return False


@dataclass
class Monitoring:
    gateway: str
    prometheus: str

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant PromQL query: the result vector."""
        reply = get(f"{self.prometheus}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
        assert reply["status"] == "success", reply
        return list(reply["data"]["result"])

    def value(self, promql: str, timeout: float = 30, until: Any = None) -> float:
        """The single value of ``promql`` once Prometheus has scraped it (and ``until(value)`` holds)."""
        def ready() -> tuple[float] | None:  # a tuple: a value of 0 is an answer too
            result = self.query(promql)
            if len(result) == 1:
                found = float(result[0]["value"][1])
                if until is None or until(found):
                    return (found,)
            return None

        return float(wait_until(ready, timeout, f"Prometheus to return {promql}", interval=0.25)[0])


@pytest.fixture
def monitoring(tmp_path: Path) -> Iterator[Monitoring]:
    prometheus, pushgateway = binary("prometheus"), binary("prometheus-pushgateway")
    gateway_port, prometheus_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: pushgateway\n    honor_labels: true\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{gateway_port}']\n")
    procs = [
        subprocess.Popen([pushgateway, f"--web.listen-address=127.0.0.1:{gateway_port}",
                          f"--persistence.file={tmp_path / 'pushgateway.data'}"],
                         stdout=(tmp_path / "pushgateway.log").open("wb"), stderr=subprocess.STDOUT,
                         start_new_session=True),
        subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                         stdout=(tmp_path / "prometheus.log").open("wb"), stderr=subprocess.STDOUT,
                         start_new_session=True),
    ]
    world = Monitoring(f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{prometheus_port}")
    try:
        for name, url in (("pushgateway", f"{world.gateway}/-/ready"), ("prometheus", f"{world.prometheus}/-/ready")):
            def up(name: str = name, url: str = url) -> bool:
                for proc in procs:
                    if proc.poll() is not None:
                        pytest.fail(f"{proc.args[0]} exited with {proc.returncode}:\n"
                                    f"{(tmp_path / (Path(proc.args[0]).name + '.log')).read_text()[-3000:]}")
                return answers(url)

            wait_until(up, 60, f"{name} to be ready")
        yield world
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_prometheus_reads_the_pushed_metrics_of_a_real_task_run(
        celery_env: CeleryEnv, monitoring: Monitoring, tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'pyworkflow.db'}"
    total = seed_store(url)
    env = celery_env.env("faulty+" + url, PYWORKFLOW_RETENTION_PUSHGATEWAY_URL=monitoring.gateway)
    worker = celery_env.worker(env)
    worker.wait_for(r"\bready\.", timeout=60)
    client = celery_env.client()
    started = time.time()
    result = client.send_task(TASK_NAME).get(timeout=120)
    assert result["status"] == "purged" and result["counts"]["runs"] == total > 0
    worker.wait_for(r"workflow-retention metrics pushed", timeout=30)

    store = f'store="faulty+{url}",job="workflow-retention"'
    assert monitoring.value(f"workflow_retention_runs_deleted_total{{{store}}}") == total
    assert monitoring.value(f'workflow_retention_data_deleted_total{{{store},kind="events"}}') == \
        result["counts"]["events"]
    assert monitoring.value(f'workflow_retention_last_run_success{{{store},operation="purge"}}') == 1
    last_success = monitoring.value(f"workflow_retention_last_success_timestamp_seconds{{{store}}}")
    assert started <= last_success <= time.time()
    assert monitoring.value(f'workflow_retention_last_duration_seconds{{{store},operation="purge"}}') > 0
    assert monitoring.value(f'workflow_retention_batch_duration_seconds_count{{{store},operation="purge"}}') == \
        result["batches"]
    assert monitoring.value(f"workflow_retention_lag_seconds{{{store}}}") < 60
    assert monitoring.value(f"time() - workflow_retention_last_success_timestamp_seconds{{{store}}}") < 120

    # A run that fails: the counters keep their totals, the failure is counted, and the shipped rule fires.
    (tmp_path / "pyworkflow.db").write_bytes(b"this is not a SQLite database\n" * 512)
    with pytest.raises(StorageError, match="pyworkflow.db"):
        client.send_task(TASK_NAME).get(timeout=120)
    assert monitoring.value(f'workflow_retention_failures_total{{{store},operation="purge",outcome="failed"}}',
                            until=lambda v: v == 1) == 1
    assert monitoring.value(f'workflow_retention_last_run_success{{{store},operation="purge"}}',
                            until=lambda v: v == 0) == 0
    assert monitoring.value(f"workflow_retention_runs_deleted_total{{{store}}}") == total
    assert monitoring.value(f'ALERTS{{alertname="WorkflowRetentionRunFailed",alertstate="firing",{store}}}',
                            timeout=30) == 1


def test_promtool_accepts_the_shipped_alert_rules() -> None:
    done = subprocess.run([binary("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 3 rules found" in done.stdout
