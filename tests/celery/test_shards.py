"""The sharded purge on real Celery workers (prefork), a real Redis broker, lock and state, a real file store.

``PYWORKFLOW_RETENTION_SHARDS=2``: the daily task plans two shards under the singleton lease and dispatches
``chord(group(purge_shard x 2), finish_shards)``. Faults come from the test-only ``faulty+<url>`` backend
(:mod:`tests.celery.faulty`), aimed at one shard.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.celery.conftest import NOW, CeleryEnv, expired_runs, wait_until
from tests.services import clear_retention_env, delete_keys
from workflow_retention.backends import by_url
from workflow_retention.celery import TASK_NAME
from workflow_retention.exceptions import StorageError
from workflow_retention.seed import generate

pytestmark = pytest.mark.slow

RUNS = 400
TTL = 3
RESULT_TIMEOUT = 120


def file_store(path: Path) -> tuple[str, int]:
    url = f"file://{path}"
    backend = by_url(url)
    with backend:
        backend.seed(generate(RUNS, now=NOW, seed=7))
        return url, expired_runs(backend)


def left(url: str) -> int:
    backend = by_url(url)
    with backend:
        return expired_runs(backend)


def orphans(url: str) -> int:
    backend = by_url(url)
    with backend:
        return backend.sweep_orphans(grace=timedelta(0), dry_run=True).total


def one_purge_counts(path: Path) -> dict[str, Any]:
    """What one whole-store purge of the same data reports (a second store seeded identically)."""
    url, _ = file_store(path)
    report = by_url(url).delete_old_runs(datetime.now(UTC) - timedelta(days=30))
    return {"counts": dict(report.counts), "held": report.held}


def fanout_env(celery_env: CeleryEnv, url: str, **extra: str) -> dict[str, str]:
    return celery_env.env("faulty+" + url, PYWORKFLOW_RETENTION_SHARDS="2", PYWORKFLOW_RETENTION_LOCK_TTL=f"{TTL}s",
                          **extra)


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch, redis_service: Any, tmp_path: Path) -> Iterator[dict[str, str]]:
    """This process's environment for a task run in-process: a seeded file store, the test Redis, own keys."""
    import uuid

    clear_retention_env(monkeypatch)
    uid = uuid.uuid4().hex[:10]
    url, _ = file_store(tmp_path / "store")
    values = {"PYWORKFLOW_DATA_RETENTION_DAYS": "30", "PYWORKFLOW_RETENTION_STORAGE_URL": url,
              "PYWORKFLOW_RETENTION_LOCK_URL": redis_service.url,
              "PYWORKFLOW_RETENTION_LOCK_KEY": f"wr-test-{uid}:lock"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    yield values
    delete_keys(redis_service.url, f"wr-test-{uid}")


def celery_redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


def test_a_fan_out_without_a_result_backend_is_refused_naming_the_setting(
        in_process: dict[str, str], redis_service: Any) -> None:
    from celery import Celery

    from workflow_retention.celery import run_retention
    from workflow_retention.exceptions import ConfigurationError

    app = Celery("wr_no_results", broker=redis_service.url, set_as_current=False)
    url = in_process["PYWORKFLOW_RETENTION_STORAGE_URL"]
    before = left(url)
    with pytest.raises(ConfigurationError, match="PYWORKFLOW_RETENTION_SHARDS=2 fans the purge out as a Celery "
                                                 "chord, which needs a result backend"):
        run_retention(broker_url=redis_service.url, app=app, shards=2)
    assert left(url) == before > 0
    assert not celery_redis(redis_service.url).exists(in_process["PYWORKFLOW_RETENTION_LOCK_KEY"])


def test_a_store_that_cannot_be_split_is_purged_in_the_task_as_before(
        in_process: dict[str, str], redis_service: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from celery import Celery

    from workflow_retention.backends.memory import get_store
    from workflow_retention.celery import run_retention

    monkeypatch.setenv("PYWORKFLOW_RETENTION_STORAGE_URL", "memory://celery-shards-one")
    store = by_url("memory://celery-shards-one")
    store.seed(generate(100, now=NOW, seed=3))
    app = Celery("wr_one_shard", broker=redis_service.url, backend=redis_service.url, set_as_current=False)
    result = run_retention(broker_url=redis_service.url, app=app, shards=4)
    assert result["status"] == "purged" and result["counts"]["runs"] > 0
    assert get_store("celery-shards-one") is store.store


def test_a_shard_whose_worker_process_is_sigkilled_resumes_from_its_cursor(
        celery_env: CeleryEnv, tmp_path: Path) -> None:
    url, total = file_store(tmp_path / "store")
    expected = one_purge_counts(tmp_path / "twin")
    celery_env.set_faults(hang_at=3, shard=0)
    worker = celery_env.worker(fanout_env(celery_env, url), concurrency=2)
    worker.wait_for(r"\bready\.")
    client = celery_env.client()
    dispatched = client.send_task(TASK_NAME).get(timeout=RESULT_TIMEOUT)
    assert dispatched["status"] == "dispatched" and dispatched["shards"] == 2, dispatched
    hung = wait_until(lambda: next((b for b in celery_env.batches() if b["shard"] == 0 and b["index"] == 3), None),
                      RESULT_TIMEOUT, "shard 1/2 to reach its third batch")
    celery_env.set_faults()  # the redelivered shard must not hang again
    os.kill(hung["pid"], signal.SIGKILL)  # the prefork process running the shard: no cleanup, no release
    merged = client.AsyncResult(dispatched["callback"]).get(timeout=RESULT_TIMEOUT)
    assert merged["status"] == "purged", merged
    assert merged["counts"] == expected["counts"] and merged["held"] == expected["held"]
    assert merged["counts"]["runs"] == total > 0
    resumed = merged["shards"][0]["resumed_after"]
    assert resumed is not None, merged["shards"]
    batches = [b for b in celery_env.batches() if b["shard"] == 0]
    finished = {r for b in batches if b["pid"] == hung["pid"] and b["index"] < 3 for r in b["run_ids"]}
    redone = {r for b in batches if b["pid"] != hung["pid"] for r in b["run_ids"]}
    assert finished and not finished & redone, "a batch finished before the kill was purged again"
    assert max(finished) <= resumed < min(redone | {"\uffff"})
    assert left(url) == 0 and orphans(url) == 0
    lock = celery_env.redis()
    assert not lock.exists(celery_env.lock_key) and not lock.exists(f"{celery_env.lock_key}:fanout")
    assert "workflow-retention summary" in worker.output() and " shards=2 " in worker.output()


def test_a_shard_that_fails_for_good_fails_the_purge_and_the_next_run_resumes(
        celery_env: CeleryEnv, tmp_path: Path) -> None:
    url, total = file_store(tmp_path / "store")
    celery_env.set_faults(fail_at=2, shard=1, fail_kind="config")
    worker = celery_env.worker(fanout_env(celery_env, url), concurrency=2)
    worker.wait_for(r"\bready\.")
    client = celery_env.client()
    dispatched = client.send_task(TASK_NAME).get(timeout=RESULT_TIMEOUT)
    with pytest.raises(StorageError, match=r"1 of 2 shards failed for good.*shard 2/2: ConfigurationError"):
        client.AsyncResult(dispatched["callback"]).get(timeout=RESULT_TIMEOUT)
    worker.wait_for(r"ERROR.*workflow-retention summary status=\"failed\"")
    assert 0 < left(url) < total
    state = {k.decode(): v.decode() for k, v in celery_env.redis().hgetall(f"{celery_env.lock_key}:fanout").items()}
    assert state["plan"] == dispatched["plan"] and "done:0" in state and "done:1" not in state
    celery_env.set_faults()
    again = client.send_task(TASK_NAME).get(timeout=RESULT_TIMEOUT)
    assert again["resumed"] and again["plan"] == dispatched["plan"]
    merged = client.AsyncResult(again["callback"]).get(timeout=RESULT_TIMEOUT)
    assert merged["status"] == "purged"
    assert left(url) == 0 and orphans(url) == 0
    history = [json.loads(v) for v in celery_env.redis().hvals(f"{celery_env.lock_key}:history:records")]
    assert sorted(r["outcome"] for r in history if r["operation"] == "purge") == ["failed", "succeeded"]
