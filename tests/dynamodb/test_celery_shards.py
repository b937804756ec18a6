"""A sharded purge of a DynamoDB table on real Celery workers (prefork), a real Redis broker, lock and state.

``PYWORKFLOW_RETENTION_SHARDS=2``: the daily task dispatches ``chord(group(purge_shard x 2), finish_shards)``.
The pool process running shard 1/2 is SIGKILLed while that shard hangs at its third batch (the test-only
``faulty+<url>`` backend, :mod:`tests.celery.faulty`); its message is delivered again, and the shard resumes
from the cursor it persisted (the Scan's ``LastEvaluatedKey``): no batch finished before the kill is redone,
the merged report equals one purge's of an identical table, and no orphan is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.celery.conftest import CeleryEnv, celery_env, wait_until
from tests.dynamodb.local import REGION
from tests.services import Service
from workflow_retention.backends import by_url
from workflow_retention.celery import TASK_NAME
from workflow_retention.seed import generate

pytestmark = pytest.mark.slow

__all__ = ["celery_env"]  # the fixture, used here
RUNS = 300
TTL = 3
RESULT_TIMEOUT = 240


@pytest.fixture
def tables(dynamodb_service: Service) -> Iterator[list[str]]:
    """Two tables seeded identically (``generate(RUNS, seed=7)``): the one the workers purge, and its twin."""
    urls = [f"dynamodb://wr_test_{uuid.uuid4().hex[:16]}?region={REGION}&endpoint_url={dynamodb_service.url}"
            for _ in range(2)]
    now = datetime.now(UTC)
    try:
        for url in urls:
            with by_url(url) as backend:
                backend.seed(generate(RUNS, now=now, seed=7))
        yield urls
    finally:
        for url in urls:
            with by_url(url) as backend:
                client = backend.table.client
                with contextlib.suppress(client.exceptions.ResourceNotFoundException):  # a table never created
                    client.delete_table(TableName=backend.table_name)


def _expired(url: str) -> int:
    with by_url(url) as backend:
        return backend.delete_old_runs(datetime.now(UTC) - timedelta(days=30), dry_run=True).runs


def _orphans(url: str) -> int:
    with by_url(url) as backend:
        return backend.sweep_orphans(grace=timedelta(0), dry_run=True).total


def test_a_dynamodb_shard_whose_worker_is_sigkilled_resumes_from_its_cursor(
        celery_env: CeleryEnv, tables: list[str]) -> None:
    url, twin = tables
    total = _expired(url)
    with by_url(twin) as backend:
        expected = backend.delete_old_runs(datetime.now(UTC) - timedelta(days=30))
    celery_env.set_faults(hang_at=3, shard=0)
    env = celery_env.env("faulty+" + url, PYWORKFLOW_RETENTION_SHARDS="2", PYWORKFLOW_RETENTION_LOCK_TTL=f"{TTL}s")
    worker = celery_env.worker(env, concurrency=2)
    worker.wait_for(r"\bready\.")
    client = celery_env.client()
    dispatched = client.send_task(TASK_NAME).get(timeout=RESULT_TIMEOUT)
    assert dispatched["status"] == "dispatched" and dispatched["shards"] == 2, dispatched
    hung: Any = wait_until(
        lambda: next((b for b in celery_env.batches() if b["shard"] == 0 and b["index"] == 3), None),
        RESULT_TIMEOUT, "shard 1/2 to reach its third batch")
    celery_env.set_faults()  # the redelivered shard must not hang again
    os.kill(hung["pid"], signal.SIGKILL)
    merged = client.AsyncResult(dispatched["callback"]).get(timeout=RESULT_TIMEOUT)
    assert merged["status"] == "purged", merged
    assert merged["counts"] == dict(expected.counts) and merged["held"] == expected.held
    assert merged["counts"]["runs"] == total > 0
    assert merged["shards"][0]["resumed_after"] is not None, merged["shards"]
    batches = [b for b in celery_env.batches() if b["shard"] == 0]
    finished = {r for b in batches if b["pid"] == hung["pid"] and b["index"] < 3 for r in b["run_ids"]}
    redone = {r for b in batches if b["pid"] != hung["pid"] for r in b["run_ids"]}
    assert finished and not finished & redone, "a batch finished before the kill was purged again"
    assert _expired(url) == 0 and _orphans(url) == 0
