"""A legal hold placed while a sharded purge runs protects its run in every part of the purge.

A pin is re-read at every batch boundary of a whole-store purge (``rules.pins_watched``). A sharded purge runs
its parts elsewhere (Celery shard tasks, ``purge --shards`` processes) and then a final pass: each of them must
watch the pins too, and a shard stopped by a new pin fails for good at once (the next run's cutoff carries the
pin), instead of being retried against the plan's old pins. A real Redis holds the pins; stores are file stores
(split into shards by run id hash) with a small batch, so a purge has many boundaries.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.services import clear_retention_env, delete_keys
from workflow_retention import config
from workflow_retention.backends import by_url
from workflow_retention.base import BatchInfo, Shard
from workflow_retention.policy import cutoff_text
from workflow_retention.rules import RUN, StateStore
from workflow_retention.seed import generate
from workflow_retention.shards import purge_sharded

NOW = datetime(2026, 6, 1, tzinfo=UTC)
CUTOFF = NOW - timedelta(days=30)


@pytest.fixture()
def lock_key(redis_service: Any) -> Iterator[str]:
    key = f"wr-test-{uuid.uuid4().hex[:10]}:lock"
    yield key
    delete_keys(redis_service.url, key.split(":")[0])


def seeded(path: Path, batch_size: int = 4) -> tuple[str, list[str]]:
    """A file store with 120 runs, and the runs a purge of it deletes, in the order it deletes them."""
    url = f"file://{path}"
    with by_url(url) as backend:
        backend.seed(generate(120, now=NOW, seed=5))
    twin = path.parent / f"{path.name}-twin"
    with by_url(f"file://{twin}") as backend:
        backend.seed(generate(120, now=NOW, seed=5))
        doomed: list[str] = []
        backend.delete_old_runs(CUTOFF, dry_run=True, on_batch=lambda b: doomed.extend(b.run_ids))
    assert len(doomed) > 30, doomed
    return url, doomed


def present(url: str, run_ids: set[str]) -> set[str]:
    with by_url(url) as backend:
        return set(backend._read_runs(run_ids))

def planned(monkeypatch: pytest.MonkeyPatch, url: str, redis_url: str, lock_key: str, plan_id: str) -> tuple[
        list[Shard], Any, Any]:
    """The daily task's settings for ``url`` (batches of 4) and a fan-out state of ``plan_id`` in 2 shards, as the
    task writes it before it dispatches the shards: the plan, the lock's Redis client and the state."""
    from workflow_retention.celery import FanOutState
    from workflow_retention.lock import redis_client

    clear_retention_env(monkeypatch)
    for name, value in {config.RETENTION_DAYS: "30", config.STORAGE_URL: url, config.LOCK_URL: redis_url,
                        config.LOCK_KEY: lock_key, config.BATCH_SIZE: "4"}.items():
        monkeypatch.setenv(name, value)
    with by_url(url) as backend:
        plan = backend.shards(2)
    assert len(plan) == 2
    client = redis_client(redis_url, timedelta(seconds=30))
    state = FanOutState(client, lock_key)
    state.create(plan_id, [s.to_dict() for s in plan], CUTOFF, None)
    return plan, client, state



def test_a_pin_added_while_purge_shards_run_keeps_its_run(tmp_path: Path, redis_service: Any, lock_key: str) -> None:
    url, doomed = seeded(tmp_path / "store")
    held = doomed[-1]
    placed: list[bool] = []

    def place_pin(info: BatchInfo) -> None:
        if not placed:
            placed.append(True)
            state = StateStore.open(redis_service.url, lock_key)
            try:
                state.pin(RUN, [held], "legal hold placed mid-purge")
            finally:
                state.close()

    result = purge_sharded(partial(by_url, url, batch_size=4), CUTOFF, 2, processes=False, on_batch=place_pin,
                           pins=partial(StateStore.open, redis_service.url, lock_key))
    assert held in present(url, {held}), "a run pinned while the sharded purge ran was deleted"
    stopped = [p.stopped for p in result.parts.values() if p.stopped]
    assert stopped and all("pin" in s for s in stopped), result.parts
    assert result.final is None, "the final pass ran with the plan's old pins"
    assert result.report.stopped and "pin" in result.report.stopped


class _Task:
    """The bound Celery task ``run_shard`` is given: no retries used, and a retry is a test failure."""

    class request:
        retries = 0

    def retry(self, exc: BaseException, countdown: float) -> BaseException:
        raise AssertionError(f"a shard stopped by a new pin was retried: {exc}")


def test_a_shard_task_stopped_by_a_new_pin_fails_for_good_without_deleting_the_run(
        tmp_path: Path, redis_service: Any, lock_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from workflow_retention import celery as task_module
    from workflow_retention.celery import run_shard

    url, doomed = seeded(tmp_path / "store")
    plan, client, _ = planned(monkeypatch, url, redis_service.url, lock_key, "plan-1")
    held = doomed[-1]
    calls = [0]
    real = task_module.Lease.check

    def check(self: Any, info: object = None) -> None:
        calls[0] += 1
        if calls[0] == 3:  # a few batches in: the legal hold arrives
            state = StateStore(client, lock_key)
            state.pin(RUN, [held], "legal hold placed mid-purge")
        real(self, info)

    monkeypatch.setattr(task_module.Lease, "check", check)
    outcomes = [run_shard(_Task(), "plan-1", s.index, s.to_dict(), cutoff_text(CUTOFF), broker_url=None)
                for s in plan]
    assert held in present(url, {held}), "a run pinned while its shard task ran was deleted"
    failed = [o for o in outcomes if "failed" in o]
    assert failed and all("pin" in o["failed"] for o in failed), outcomes
    client.close()


def test_a_pin_placed_after_the_shards_keeps_its_run_from_the_final_pass(
        tmp_path: Path, redis_service: Any, lock_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The final pass's cutoff carries the plan's pins; a pin placed since (here, between the shards and the
    callback) stops it before its batch: a failed callback, the run kept, the plan left for the next run."""
    from workflow_retention.celery import finish_shards, run_shard
    from workflow_retention.exceptions import RetentionError

    url, doomed = seeded(tmp_path / "store")
    plan, client, state = planned(monkeypatch, url, redis_service.url, lock_key, "plan-2")
    outcomes = [run_shard(_Task(), "plan-2", s.index, s.to_dict(), cutoff_text(CUTOFF), broker_url=None)
                for s in plan]
    assert all("report" in o for o in outcomes), outcomes
    left = present(url, set(doomed))
    assert left, "no run was left to the final pass (the file store leaves it every parent)"
    held = sorted(left)[0]
    StateStore(client, lock_key).pin(RUN, [held], "legal hold placed before the final pass")
    with pytest.raises(RetentionError, match="pin"):
        finish_shards(_Task(), outcomes, "plan-2", cutoff_text(CUTOFF), broker_url=None)
    assert held in present(url, {held}), "the final pass deleted a run pinned after the plan was made"
    assert state.meta().get("plan") == "plan-2", "the unfinished plan was dropped"
    client.close()


def test_a_fan_out_stopped_by_a_new_pin_in_a_shard_is_recorded_as_pin_added(
        tmp_path: Path, redis_service: Any, lock_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of 8f07076: a shard task stopped by a new pin fails for good, and the chord's callback recorded the
    whole purge as ``failed`` (history, failures_total): a legal hold honoured looked like a broken purge, where the
    whole-store task and ``purge --shards`` record ``pin-added``. The callback now records ``pin-added`` and fails
    with PinAdded when every shard that failed was stopped by a pin."""
    from workflow_retention import celery as task_module
    from workflow_retention import metrics
    from workflow_retention.celery import finish_shards, run_shard
    from workflow_retention.exceptions import PinAdded
    from workflow_retention.history import History

    url, doomed = seeded(tmp_path / "store")
    plan, client, state = planned(monkeypatch, url, redis_service.url, lock_key, "plan-3")
    history = History.open(redis_service.url, lock_key, store=url, source="t")
    record = history.start(metrics.PURGE)
    client.hset(f"{lock_key}:fanout", "record", record)
    assert state.meta().get("record") == record, state.meta()
    held = doomed[-1]
    calls = [0]
    real = task_module.Lease.check

    def check(self: Any, info: object = None) -> None:
        calls[0] += 1
        if calls[0] == 3:
            StateStore(client, lock_key).pin(RUN, [held], "legal hold placed mid-purge")
        real(self, info)

    monkeypatch.setattr(task_module.Lease, "check", check)
    outcomes = [run_shard(_Task(), "plan-3", s.index, s.to_dict(), cutoff_text(CUTOFF), broker_url=None)
                for s in plan]
    assert any("failed" in o for o in outcomes), outcomes
    monkeypatch.setattr(task_module.Lease, "check", real)
    with pytest.raises(PinAdded, match="pin"):
        finish_shards(_Task(), outcomes, "plan-3", cutoff_text(CUTOFF), broker_url=None)
    [run] = [r for r in history.runs() if r["id"] == record]
    assert run["outcome"] == "pin-added", run
    assert held in present(url, {held})
    history.close()
    client.close()


def test_a_pin_stop_keeps_its_type_when_its_text_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of 8f07076: the task's error is scrubbed of secrets, keeping the type of a LeaseLostError but turning
    any other error into a StorageError: a PinAdded whose text held a secret failed the task as a StorageError."""
    from workflow_retention.celery import _scrubbed
    from workflow_retention.exceptions import PinAdded

    clear_retention_env(monkeypatch)
    monkeypatch.setenv(config.LOCK_URL, "redis://:hunter2-pw@127.0.0.1:6379/0")
    with pytest.raises(PinAdded) as raised:
        _scrubbed(PinAdded("1 pin(s) added while the purge ran ('run-hunter2-pw')"), None)
    assert "hunter2-pw" not in str(raised.value)
