"""``status`` on every backend: an audit and a purge of each store, recorded in a real Redis, read back.

``status`` itself never opens the store: it reads the run history and the last audit's snapshot, which
each backend's audit (runs by status, the oldest terminal run, what a purge would delete) and purge fill.
So this is the whole chain per backend: before the purge the lag is the oldest expired run's age past the
cutoff, after it 0; the last success is the purge; a stale one makes the health check fail.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from tests.harness.base import Harness
from tests.scenario import CUTOFF, NOW, OLD, build
from tests.services import delete_keys
from workflow_retention import config, metrics, status
from workflow_retention.history import History, record_run

DAYS = 30


@pytest.fixture
def history(backend: Harness, redis_service: Any) -> Iterator[History]:
    key = f"wr-test-{uuid.uuid4().hex[:10]}"
    hist = History.open(redis_service.url, f"{key}:lock", store=backend.retention().url, source="test")
    yield hist
    hist.close()
    delete_keys(redis_service.url, key)


def _status(hist: History, max_age: timedelta = timedelta(days=2), now: Any = NOW) -> status.Status:
    spec = config.load_schedule({})
    return status.collect(store=hist.store, history=hist, state_store="redis", lease=None,
                          lock_key="k", retention_days=DAYS, max_age=max_age, now=now, spec=spec,
                          schedule=None)


def test_status_follows_an_audit_and_a_purge_of_every_store(backend: Harness, history: History) -> None:
    scenario = backend.run(build(backend, backend.pyworkflow()))
    retention = backend.retention()
    before = _status(history)
    assert before.last_success_at is None and not before.healthy
    audit = retention.audit(older_than=CUTOFF)
    history.record_audit(metrics.audit_snapshot(audit, DAYS))
    behind = _status(history).lag
    assert behind is not None and behind.seconds is not None
    assert behind.seconds >= (CUTOFF - OLD).total_seconds() - 60  # the oldest expired run, 10 days past the cutoff
    report = record_run(history, metrics.PURGE, lambda on_batch: retention.delete_old_runs(CUTOFF, on_batch=on_batch))
    assert report.runs == len(scenario.deleted)
    after = _status(history)
    assert after.healthy and after.last_success_at is not None
    assert after.runs[0]["outcome"] == "succeeded" and after.runs[0]["report"]["runs"] == len(scenario.deleted)
    assert after.lag is not None and after.lag.seconds is not None and after.lag.seconds < 3600
    stale = _status(history, now=NOW + timedelta(days=3))
    assert not stale.healthy
