"""Real Celery worker and beat processes, a real Redis lock, real SQLite and PostgreSQL stores.

Slow or failing purges come from the test-only ``faulty+<url>`` backend
(:mod:`tests.celery.faulty`), which wraps the real store and injects delays or
errors at batch boundaries, before the task's own lease check.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.celery.conftest import CeleryEnv, expired_runs, seed_store, wait_until
from workflow_retention.backends import by_url
from workflow_retention.celery import TASK_NAME
from workflow_retention.exceptions import ConfigurationError, StorageError

pytestmark = pytest.mark.slow

TTL = 3  # seconds: the shortest lease the settings allow, so expiry tests stay fast
RESULT_TIMEOUT = 60


@pytest.fixture
def sqlite_store(tmp_path: Path) -> tuple[str, int]:
    """A SQLite store shared by this test and its workers: (url, runs a 30-day purge deletes)."""
    url = f"sqlite://{tmp_path / 'pyworkflow.db'}"
    return url, seed_store(url)


@pytest.fixture
def postgres_store(postgres_service: Any) -> Iterator[tuple[str, int]]:
    """A schema of its own in the test PostgreSQL database."""
    import psycopg

    schema = f"wr_celery_{uuid.uuid4().hex[:10]}"
    base = postgres_service.url.split("?", 1)[0]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        url = f"{base}?schema={schema}"
        yield url, seed_store(url)
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def left(url: str) -> int:
    backend = by_url(url)
    with backend:
        return expired_runs(backend)


def ready(*workers: Any) -> None:
    for worker in workers:
        worker.wait_for(r"\bready\.")


def test_two_concurrent_invocations_exactly_one_purges(celery_env: CeleryEnv, sqlite_store: tuple[str, int]) -> None:
    url, total = sqlite_store
    celery_env.set_faults(delay=0.3)  # a purge of several batches takes seconds
    worker = celery_env.worker(celery_env.env("faulty+" + url), concurrency=2)
    ready(worker)
    client = celery_env.client()
    outcomes = [r.get(timeout=RESULT_TIMEOUT) for r in [client.send_task(TASK_NAME) for _ in range(2)]]
    purged = [o for o in outcomes if o.get("status") == "purged"]
    locked = [o for o in outcomes if o.get("skipped") == "locked"]
    assert len(purged) == 1 and len(locked) == 1, outcomes
    assert purged[0]["counts"]["runs"] == total > 0
    assert locked[0]["lock_key"] == celery_env.lock_key and locked[0]["holder"]
    assert len({b["pid"] for b in celery_env.batches()}) == 1  # one process ever reached a batch
    assert left(url) == 0
    assert celery_env.redis().get(celery_env.lock_key) is None


def test_a_backend_failure_releases_the_lock_within_a_second_and_the_next_run_purges(
        celery_env: CeleryEnv, sqlite_store: tuple[str, int]) -> None:
    url, total = sqlite_store
    celery_env.set_faults(fail_at=3)
    worker = celery_env.worker(celery_env.env("faulty+" + url, PYWORKFLOW_RETENTION_LOCK_TTL="60s"))
    ready(worker)
    client, lock = celery_env.client(), celery_env.redis()
    released: list[float] = []

    def watch() -> None:  # the time the lock goes away, seen from outside
        wait_until(lambda: lock.exists(celery_env.lock_key), RESULT_TIMEOUT, "the lock to be taken", 0.005)
        wait_until(lambda: not lock.exists(celery_env.lock_key), RESULT_TIMEOUT, "the lock to go", 0.005)
        released.append(time.time())

    watcher = threading.Thread(target=watch)
    watcher.start()
    with pytest.raises(StorageError, match="injected failure at batch 3"):
        client.send_task(TASK_NAME).get(timeout=RESULT_TIMEOUT)
    watcher.join()
    failed_at = next(b["t"] for b in celery_env.batches() if b["index"] == 3)
    assert released[0] - failed_at < 1.0  # released in finally, not after the 60 s TTL
    remaining = left(url)
    assert 0 < remaining < total  # two batches were deleted before the failure
    celery_env.set_faults()
    result = client.send_task(TASK_NAME).get(timeout=RESULT_TIMEOUT)
    assert result["status"] == "purged" and result["counts"]["runs"] == remaining
    assert left(url) == 0


def test_a_purge_outliving_the_ttl_keeps_its_lease_and_no_second_purge_starts(
        celery_env: CeleryEnv, sqlite_store: tuple[str, int]) -> None:
    url, total = sqlite_store
    hang = 2.5 * TTL  # one batch boundary longer than two TTLs: only the renewal thread keeps the lease
    celery_env.set_faults(hang_at=2, hang_s=hang)
    worker = celery_env.worker(celery_env.env("faulty+" + url, PYWORKFLOW_RETENTION_LOCK_TTL=f"{TTL}s"),
                               concurrency=2)
    ready(worker)
    client = celery_env.client()
    first = client.send_task(TASK_NAME)
    wait_until(lambda: any(b["index"] == 2 for b in celery_env.batches()), RESULT_TIMEOUT, "batch 2")
    hung_at = next(b["t"] for b in celery_env.batches() if b["index"] == 2)
    wait_until(lambda: time.time() > hung_at + TTL + 0.5, 2 * TTL, "the initial TTL to pass")
    second = client.send_task(TASK_NAME).get(timeout=RESULT_TIMEOUT)
    assert second["skipped"] == "locked"
    result = first.get(timeout=RESULT_TIMEOUT)
    assert result["status"] == "purged" and result["counts"]["runs"] == total
    assert result["lock"]["lost"] is None
    assert result["lock"]["renewals"] >= int(hang // (TTL / 3)) - 1
    assert len({b["pid"] for b in celery_env.batches()}) == 1
    assert left(url) == 0


def test_a_worker_sigkilled_mid_purge_blocks_the_next_run_for_at_most_one_ttl(
        celery_env: CeleryEnv, sqlite_store: tuple[str, int]) -> None:
    url, total = sqlite_store
    celery_env.set_faults(hang_at=2)
    env = celery_env.env("faulty+" + url, PYWORKFLOW_RETENTION_LOCK_TTL=f"{TTL}s")
    doomed = celery_env.worker(env, queue=celery_env.queue + "-doomed")
    survivor = celery_env.worker(env, queue=celery_env.queue + "-survivor")
    ready(doomed, survivor)
    client, lock = celery_env.client(), celery_env.redis()
    client.send_task(TASK_NAME, queue=celery_env.queue + "-doomed")
    wait_until(lambda: any(b["index"] == 2 for b in celery_env.batches()), RESULT_TIMEOUT, "batch 2")
    doomed.kill()
    killed = time.monotonic()
    assert lock.exists(celery_env.lock_key)
    blocked = client.send_task(TASK_NAME, queue=celery_env.queue + "-survivor").get(timeout=RESULT_TIMEOUT)
    assert blocked["skipped"] == "locked"
    wait_until(lambda: not lock.exists(celery_env.lock_key), TTL + 2, "the dead worker's lock to expire")
    assert time.monotonic() - killed <= TTL + 0.5
    celery_env.set_faults()
    result = client.send_task(TASK_NAME, queue=celery_env.queue + "-survivor").get(timeout=RESULT_TIMEOUT)
    assert result["status"] == "purged" and 0 < result["counts"]["runs"] < total  # batch 1 was already gone
    assert left(url) == 0


def test_duplicate_beat_messages_purge_once(celery_env: CeleryEnv, sqlite_store: tuple[str, int]) -> None:
    """Two beat processes send the same slot's message; the second is skipped after the first completes."""
    url, total = sqlite_store
    worker = celery_env.worker(celery_env.env(url))
    ready(worker)
    client = celery_env.client()
    as_beat = {"kwargs": {"beat_expires_s": 300}, "expires": 300}
    first, duplicate = (client.send_task(TASK_NAME, **as_beat) for _ in range(2))
    assert first.get(timeout=RESULT_TIMEOUT)["counts"]["runs"] == total
    assert duplicate.get(timeout=RESULT_TIMEOUT)["skipped"] == "already-done"
    later = client.send_task(TASK_NAME, **as_beat).get(timeout=RESULT_TIMEOUT)
    assert later["status"] == "purged" and later["counts"].get("runs", 0) == 0  # the next slot runs again


def test_invalid_settings_fail_the_task_with_the_variable_named(
        celery_env: CeleryEnv, sqlite_store: tuple[str, int]) -> None:
    url, total = sqlite_store
    worker = celery_env.worker(celery_env.env(url, PYWORKFLOW_DATA_RETENTION_DAYS="thirty"))
    ready(worker)  # a bad purge setting does not stop the worker from starting
    with pytest.raises(ConfigurationError, match="PYWORKFLOW_DATA_RETENTION_DAYS must be a positive integer"):
        celery_env.client().send_task(TASK_NAME).get(timeout=RESULT_TIMEOUT)
    assert left(url) == total


FIRST_TASK = re.compile(r"Task (\S+)\[[0-9a-f-]+\] received")
SUCCEEDED = re.compile(r"Task workflow_retention\.run_retention\[[0-9a-f-]+\] succeeded in [\d.]+s: (.*)")


def assert_first_task_purged(worker: Any, total: int) -> None:
    """The worker's first task was the retention task, and it purged the whole expired set."""
    first = worker.wait_for(FIRST_TASK.pattern)
    assert first.group(1) == TASK_NAME
    done = worker.wait_for(SUCCEEDED.pattern)
    assert "'status': 'purged'" in done.group(1) and f"'runs': {total}" in done.group(1), done.group(1)


@pytest.mark.parametrize("store", ["sqlite_store", "postgres_store"])
def test_beat_triggers_the_task_as_the_first_task_of_a_fresh_worker(
        celery_env: CeleryEnv, store: str, request: pytest.FixtureRequest) -> None:
    url, total = request.getfixturevalue(store)
    env = celery_env.env(url, PYWORKFLOW_RETENTION_SCHEDULE="2s")
    worker = celery_env.worker(env)
    beat = celery_env.beat(env)
    beat.wait_for(r"Sending due task workflow-retention \(workflow_retention\.run_retention\)")
    assert_first_task_purged(worker, total)
    assert left(url) == 0


def test_the_ready_made_worker_app_runs_with_embedded_beat(
        celery_env: CeleryEnv, sqlite_store: tuple[str, int]) -> None:
    url, total = sqlite_store
    env = celery_env.env(url, PYWORKFLOW_CELERY_BROKER=celery_env.redis_url,
                         PYWORKFLOW_RETENTION_QUEUE=celery_env.queue, PYWORKFLOW_RETENTION_SCHEDULE="2s")
    worker = celery_env.worker(env, app="workflow_retention.worker", queue="", beat=True)
    assert_first_task_purged(worker, total)
    assert left(url) == 0
