"""Run history in a real Redis: guarded, idempotent transitions, a capped list, cumulative totals."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.services import delete_keys
from workflow_retention.exceptions import LeaseLostError, StorageError
from workflow_retention.history import History, record_run
from workflow_retention.metrics import Observations
from workflow_retention.report import PurgeReport

STORE = "postgresql://app:Hist-pass-7@db:5432/app"


@pytest.fixture
def history(redis_service: Any) -> Iterator[History]:
    base = f"wr-test-{uuid.uuid4().hex[:10]}:lock"
    h = History.open(redis_service.url, base, store=STORE, source="cli", secrets=["Hist-pass-7"])
    yield h
    delete_keys(redis_service.url, base)
    h.close()


def report(runs: int = 5, *, stopped: str | None = None) -> PurgeReport:
    r = PurgeReport(backend="x", dry_run=False, cutoff=datetime.now(UTC) - timedelta(days=30))
    r.merge({"runs": runs, "events": 3 * runs})
    r.held = 1
    r.stopped = stopped
    return r


def test_a_record_goes_from_started_to_finished_with_its_report(history: History) -> None:
    rid = history.start("purge")
    [started] = history.runs()
    assert started["state"] == "started" and started["outcome"] is None
    assert started["store"] == "postgresql://app:***@db:5432/app"
    observations = Observations()
    observations.observe(0.2)
    assert history.finish(rid, "succeeded", report=report(), observations=observations)
    [done] = history.runs()
    assert (done["state"], done["outcome"], done["report"]["runs"], done["report"]["held"]) == \
        ("finished", "succeeded", 5, 1)
    totals = history.totals()
    assert totals["runs_deleted"] == 5 and totals["data_deleted|events"] == 15 and totals["runs_held"] == 1
    assert totals["batch|purge|count"] == 1
    state = history.state()
    assert state["last_success_id"] == rid
    assert state["last_purge"]["outcome"] == "succeeded"
    assert state["clean_at"] == done["started_at"]


def test_a_second_finish_changes_nothing(history: History) -> None:
    rid = history.start("purge")
    assert history.finish(rid, "succeeded", report=report(5))
    fresh = History(history.client, history.base, store=STORE, source="celery")  # another process: no cache
    assert not fresh.finish(rid, "failed", error="late duplicate", report=report(50))
    [record] = history.runs()
    assert record["outcome"] == "succeeded" and record["error"] is None
    assert history.totals()["runs_deleted"] == 5
    assert "failures|purge|failed" not in history.totals()


def test_concurrent_finishes_of_one_record_count_once(history: History) -> None:
    rid = history.start("purge")
    won: list[bool] = []
    barrier = threading.Barrier(8)

    def finish() -> None:
        h = History(history.client, history.base, store=STORE, source="celery")
        barrier.wait()
        won.append(h.finish(rid, "succeeded", report=report(5)))

    threads = [threading.Thread(target=finish) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False] * 7 + [True]
    assert history.totals()["runs_deleted"] == 5


def test_the_history_is_capped_and_drops_old_records_with_their_ids(history: History) -> None:
    small = History(history.client, history.base, store=STORE, source="cli", cap=5)
    ids = [small.start("orphans") for _ in range(8)]
    kept = [r["id"] for r in small.runs()]
    assert kept == ids[::-1][:5]
    assert history.client.hlen(small.records_key) == 5
    assert not small.finish(ids[0], "succeeded")  # trimmed: nothing to finish, nothing counted
    assert small.totals() == {}


def test_an_error_is_recorded_without_secrets(history: History) -> None:
    rid = history.start("purge")
    history.finish(rid, "failed", error=RuntimeError("connect to app:Hist-pass-7@db failed"))
    [record] = history.runs()
    assert record["outcome"] == "failed"
    assert "Hist-pass-7" not in record["error"] and "***" in record["error"]
    assert history.totals()["failures|purge|failed"] == 1
    assert "last_success_at" not in history.state()


def test_record_run_records_failures_and_lost_leases_and_reraises(history: History) -> None:
    def boom(on_batch: Any) -> PurgeReport:
        on_batch(object())
        raise StorageError("the store went away")

    with pytest.raises(StorageError):
        record_run(history, "purge", boom)
    assert record_run(history, "purge", lambda on_batch: report(stopped="lease lost")).stopped
    lost, failed = history.runs()
    assert (lost["outcome"], failed["outcome"]) == ("lease-lost", "failed")
    assert "the store went away" in failed["error"]
    assert history.totals()["failures|purge|lease-lost"] == 1
    assert history.totals()["batch|purge|count"] == 1  # the one boundary before the error


def test_record_run_counts_an_exception_from_on_batch_as_a_lost_lease(history: History) -> None:
    def stopped(on_batch: Any) -> PurgeReport:
        raise LeaseLostError("gone")

    with pytest.raises(LeaseLostError):
        record_run(history, "purge", stopped)
    assert history.runs()[0]["outcome"] == "lease-lost"


def test_a_run_stopped_by_a_new_pin_is_recorded_as_such_not_as_a_lost_lease(history: History) -> None:
    """A legal hold placed during a purge stops it on purpose: ``pin-added`` in the history and the metrics, so that
    an alert on lost leases does not send an operator after the lock."""
    from workflow_retention.exceptions import PinAdded

    def pinned(on_batch: Any) -> PurgeReport:
        raise PinAdded("1 pin(s) added while the purge ran")

    with pytest.raises(PinAdded):
        record_run(history, "purge", pinned)
    stopped = report(stopped="1 pin(s) added while the purge ran")
    stopped.stop_outcome = PinAdded.outcome
    assert record_run(history, "purge", lambda on_batch: stopped).stopped
    assert [r["outcome"] for r in history.runs()] == ["pin-added", "pin-added"]
    assert history.totals()["failures|purge|pin-added"] == 2
    assert "failures|purge|lease-lost" not in history.totals()


def test_a_state_store_that_fails_is_an_error_line_and_the_run_still_returns(
        caplog: pytest.LogCaptureFixture) -> None:
    down = History.open("redis://:Hist-pass-7@127.0.0.1:1/0", "wr-test-down", store=STORE, source="cli",
                        secrets=["Hist-pass-7"])
    with caplog.at_level(logging.ERROR):
        result = record_run(down, "purge", lambda on_batch: report(3))
    assert result.runs == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and all("run history not recorded" in e for e in errors)
    assert not any("Hist-pass-7" in e for e in errors)
