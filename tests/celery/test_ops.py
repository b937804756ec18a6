"""The task's run history and metrics push, and the worker's start-up line: in this process and in real workers."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.celery.conftest import BATCH, NOW, CeleryEnv, seed_store, wait_until
from tests.services import clear_retention_env, delete_keys
from workflow_retention import config
from workflow_retention.backends import by_url
from workflow_retention.celery import TASK_NAME, run_retention, startup_audit
from workflow_retention.exceptions import StorageError
from workflow_retention.history import History
from workflow_retention.seed import generate

PASSWORD = "Gw7-secret-Pw"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, redis_service: Any) -> Iterator[dict[str, str]]:
    """A retention environment with its own memory store, lock key (which names the history) and fault key."""
    clear_retention_env(monkeypatch)
    uid = uuid.uuid4().hex[:10]
    values = {config.RETENTION_DAYS: "30", config.STORAGE_URL: f"memory://ops-{uid}",
              config.LOCK_URL: redis_service.url, config.LOCK_KEY: f"wr-test-{uid}:lock",
              config.BATCH_SIZE: str(BATCH), "TEST_FAULTS_REDIS": redis_service.url,
              "TEST_FAULTS_KEY": f"wr-test-{uid}:faults"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    yield values
    delete_keys(redis_service.url, f"wr-test-{uid}")


def seeded(url: str, n: int = 120) -> int:
    by_url(url).seed(generate(n, now=NOW, seed=3))
    return by_url(url).delete_old_runs(datetime.now(UTC) - timedelta(days=30), dry_run=True).runs


def history(env: dict[str, str]) -> History:
    return History.open(env[config.LOCK_URL], env[config.LOCK_KEY], store=env[config.STORAGE_URL], source="t")


def test_the_task_records_each_purge_and_orphan_sweep(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    total = seeded(env[config.STORAGE_URL])
    monkeypatch.setenv(config.REPAIR_ORPHANS, "true")
    assert run_retention(broker_url=None)["status"] == "purged"
    orphans, purge = history(env).runs()
    assert (purge["operation"], purge["source"], purge["outcome"]) == ("purge", "celery", "succeeded")
    assert purge["report"]["runs"] == total
    assert (orphans["operation"], orphans["outcome"]) == ("orphans", "succeeded")
    totals = history(env).totals()
    assert totals["runs_deleted"] == total
    assert totals["batch|purge|count"] >= total // BATCH


def test_a_failed_purge_is_recorded_with_its_error_and_still_fails_the_task(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch, faulty_scheme: None) -> None:
    url = env[config.STORAGE_URL]
    seeded(url)
    monkeypatch.setenv(config.STORAGE_URL, "faulty+" + url)
    redis.Redis.from_url(env["TEST_FAULTS_REDIS"]).set(env["TEST_FAULTS_KEY"], '{"fail_at": 2}')
    with pytest.raises(StorageError, match="injected failure at batch 2"):
        run_retention(broker_url=None)
    [record] = History.open(env[config.LOCK_URL], env[config.LOCK_KEY], store="x", source="t").runs()
    assert record["outcome"] == "failed" and "injected failure at batch 2" in record["error"]


def test_a_push_that_fails_is_an_error_line_and_the_task_keeps_its_outcome(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    total = seeded(env[config.STORAGE_URL])
    monkeypatch.setenv(config.PUSHGATEWAY_URL, f"http://ops:{PASSWORD}@127.0.0.1:1")
    with caplog.at_level(logging.INFO, logger="workflow_retention"):
        result = run_retention(broker_url=None)
    assert result["status"] == "purged" and result["counts"]["runs"] == total
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("metrics not pushed" in e and "127.0.0.1:1" in e for e in errors), errors
    assert not any(PASSWORD in r.getMessage() for r in caplog.records)


def test_the_startup_audit_counts_what_a_purge_would_delete(env: dict[str, str],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    total = seeded(env[config.STORAGE_URL])
    with caplog.at_level(logging.INFO, logger="workflow_retention.celery"):
        fields = startup_audit(broker_url=None)
    assert fields is not None and fields["complete"] and fields["would_delete"] == total
    assert sum(fields["runs_by_status"].values()) == 120
    assert fields["next_run"] and fields["lag_s"] is not None  # from the census: expired runs, no purge yet
    [line] = [r for r in caplog.records if "workflow-retention startup" in r.getMessage()]
    assert line.levelno == logging.INFO and f"would_delete={total}" in line.getMessage()
    assert history(env).last_audit()["expired_runs"] == total  # the metrics' store sizes come from it
    run_retention(broker_url=None)
    assert startup_audit(broker_url=None)["lag_s"] < 60  # the purge just completed


def test_the_startup_audit_stops_at_its_time_bound_with_a_warning(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch, faulty_scheme: None,
        caplog: pytest.LogCaptureFixture) -> None:
    url = env[config.STORAGE_URL]
    total = seeded(url)
    monkeypatch.setenv(config.STORAGE_URL, "faulty+" + url)
    monkeypatch.setenv(config.STARTUP_AUDIT, "1s")
    redis.Redis.from_url(env["TEST_FAULTS_REDIS"]).set(env["TEST_FAULTS_KEY"], '{"delay": 0.4}')
    with caplog.at_level(logging.INFO, logger="workflow_retention.celery"):
        fields = startup_audit(broker_url=None)
    assert fields is not None and not fields["complete"]
    assert fields["audit_s"] < 5
    assert fields.get("would_delete") is None or fields["would_delete"] < total
    [line] = [r for r in caplog.records if "workflow-retention startup" in r.getMessage()]
    assert line.levelno == logging.WARNING and "complete=false" in line.getMessage()


@pytest.mark.parametrize("setting", [(config.STORAGE_URL, f"postgresql://app:{PASSWORD}@127.0.0.1:1/db"),
                                     (config.STORAGE_URL, "oracle://db"), (config.STARTUP_AUDIT, "forever")])
def test_a_startup_audit_that_fails_is_a_warning_without_secrets(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        setting: tuple[str, str]) -> None:
    monkeypatch.setenv(*setting)
    with caplog.at_level(logging.INFO, logger="workflow_retention"):
        assert startup_audit(broker_url=None) is None
    lines = [r for r in caplog.records if "startup audit failed" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert not any(PASSWORD in r.getMessage() for r in caplog.records)


def test_the_startup_audit_can_be_turned_off(env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(config.STARTUP_AUDIT, "0s")
    with caplog.at_level(logging.INFO, logger="workflow_retention"):
        assert startup_audit(broker_url=None) is None
    assert not [r for r in caplog.records if "startup" in r.getMessage()]


# -- real workers ---------------------------------------------------------------------------------------

STARTUP = re.compile(r"(INFO|WARNING)/MainProcess\] workflow-retention startup (.*)")


@pytest.mark.slow
def test_a_worker_logs_the_startup_line_and_its_tasks_record_history(celery_env: CeleryEnv, tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'pyworkflow.db'}"
    total = seed_store(url)
    worker = celery_env.worker(celery_env.env(url, PYWORKFLOW_RETENTION_STARTUP_AUDIT="30s"))
    worker.wait_for(r"\bready\.", timeout=60)
    line = worker.wait_for(r"workflow-retention startup .*", timeout=60).group(0)
    assert f"would_delete={total}" in line and '"completed":' in line and f'store="{url}"' in line, line
    assert "next_run=" in line and "lag_s=" in line
    result = celery_env.client().send_task(TASK_NAME).get(timeout=60)
    assert result["status"] == "purged"
    runs = History.open(celery_env.redis_url, celery_env.lock_key, store=url, source="t").runs()
    assert [(r["operation"], r["source"], r["outcome"]) for r in runs] == [("purge", "celery", "succeeded")]


@pytest.mark.slow
def test_a_worker_whose_store_is_down_starts_and_says_so_in_a_warning(celery_env: CeleryEnv) -> None:
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:1/db"
    worker = celery_env.worker(celery_env.env(url, PYWORKFLOW_RETENTION_STARTUP_AUDIT="30s"))
    worker.wait_for(r"\bready\.", timeout=60)
    worker.wait_for(r"WARNING/MainProcess\] workflow-retention startup audit failed", timeout=60)
    wait_until(lambda: worker.popen is not None and worker.popen.poll() is None, 5, "the worker to keep running")
    assert PASSWORD not in worker.output()


# -- what is pushed, and how ----------------------------------------------------------------------------------


class _Gateway:
    """A stand-in HTTP endpoint that records each request (method, path, headers, body) and answers 200."""

    def __init__(self) -> None:
        import http.server
        import threading

        requests: list[dict[str, Any]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                 "body": body.decode()})
                self.send_response(200)
                self.end_headers()

            do_PUT = do_POST = _record  # http.server's handler names

            def log_message(self, *args: Any) -> None:
                pass

        self.requests = requests
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway() -> Iterator[_Gateway]:
    g = _Gateway()
    yield g
    g.close()


def test_the_task_pushes_everything_with_put_grouped_by_store_with_basic_auth(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch, gateway: _Gateway) -> None:
    import base64

    total = seeded(env[config.STORAGE_URL])
    monkeypatch.setenv(config.PUSHGATEWAY_URL, f"http://ops:{PASSWORD}@{gateway.url}")
    run_retention(broker_url=None)
    [push] = gateway.requests
    assert push["method"] == "PUT"
    prefix, _, label = push["path"].rpartition("/")
    assert prefix == "/metrics/job/workflow-retention/store@base64"
    assert base64.urlsafe_b64decode(label + "=" * (-len(label) % 4)).decode() == env[config.STORAGE_URL]
    assert push["headers"]["Authorization"] == "Basic " + base64.b64encode(f"ops:{PASSWORD}".encode()).decode()
    assert f"workflow_retention_runs_deleted_total{{store=\"{env[config.STORAGE_URL]}\"}} {float(total)}" \
        in push["body"]
    assert "workflow_retention_last_success_timestamp_seconds" in push["body"]


def test_without_its_history_the_task_pushes_its_own_gauges_with_post(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch, gateway: _Gateway,
        caplog: pytest.LogCaptureFixture) -> None:
    expired = seeded(env[config.STORAGE_URL])
    monkeypatch.setenv(config.PUSHGATEWAY_URL, f"http://{gateway.url}")
    monkeypatch.setenv(config.STATE_URL, "redis://127.0.0.1:1/0")  # the history's Redis is down, the lock's is up
    with caplog.at_level(logging.INFO, logger="workflow_retention"), \
            pytest.raises(StorageError, match="cannot read the pins"):
        run_retention(broker_url=None)  # pins and legal holds live there (issue 21): nothing is purged unread
    assert 0 < expired == by_url(env[config.STORAGE_URL]).delete_old_runs(
        datetime.now(UTC) - timedelta(days=30), dry_run=True).runs
    [push] = gateway.requests
    assert push["method"] == "POST"  # the gateway keeps the counters it had
    assert "_total" not in push["body"]
    assert 'workflow_retention_last_run_success{operation="purge",store=' in push["body"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("run history not recorded" in e for e in errors)
    assert any("metrics incomplete" in e for e in errors)


@pytest.mark.slow
def test_a_real_worker_never_shows_the_pushgateway_password(celery_env: CeleryEnv, tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'pyworkflow.db'}"
    seed_store(url)
    env = celery_env.env(url, PYWORKFLOW_RETENTION_STARTUP_AUDIT="30s",
                         PYWORKFLOW_RETENTION_PUSHGATEWAY_URL=f"http://ops:{PASSWORD}@127.0.0.1:1")
    worker = celery_env.worker(env)
    worker.wait_for(r"workflow-retention startup ", timeout=60)
    result = celery_env.client().send_task(TASK_NAME)
    assert result.get(timeout=60)["status"] == "purged"  # a failed push is not a failed task
    worker.wait_for(r"ERROR/.*workflow-retention metrics not pushed", timeout=30)
    assert PASSWORD not in worker.output()
    assert PASSWORD not in str(result.result)


def test_a_corrupt_state_store_never_changes_the_tasks_outcome(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch, gateway: _Gateway,
        caplog: pytest.LogCaptureFixture) -> None:
    total = seeded(env[config.STORAGE_URL])
    monkeypatch.setenv(config.PUSHGATEWAY_URL, f"http://{gateway.url}")
    h = history(env)
    h.client.hset(h.state_key, "last_orphans", "{not json")
    with caplog.at_level(logging.INFO, logger="workflow_retention"):
        result = run_retention(broker_url=None)
    assert result["status"] == "purged" and result["counts"]["runs"] == total
    assert gateway.requests == []
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("metrics not pushed: JSONDecodeError" in e for e in errors), errors
