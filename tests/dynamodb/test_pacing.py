"""Backoff, deadline and the write-rate cap: the arithmetic on a fake clock, the cap on DynamoDB Local."""

from __future__ import annotations

import time

import pytest

from tests.conformance.checks import assert_no_orphans
from tests.harness.dynamodb import DynamoDBHarness
from tests.scenario import CUTOFF, build
from workflow_retention.backends.dynamodb.client import BACKOFF_CAP, Deadline, RateLimiter
from workflow_retention.exceptions import StorageError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_backoff_is_exponential_jittered_capped_and_ends_at_the_deadline() -> None:
    clock = FakeClock()
    deadline = Deadline(60, "BatchWriteItem", clock, clock.sleep)
    with pytest.raises(StorageError, match="still 3 unprocessed writes after retrying for 60s"):
        while True:
            deadline.wait("3 unprocessed writes")
    assert all(0 <= s <= min(BACKOFF_CAP, 0.05 * 2 ** n) for n, s in enumerate(clock.sleeps))
    assert len(set(clock.sleeps)) > 1, "no jitter"
    assert clock.now <= 1000 + 60


def test_rate_limiter_paces_units_after_one_second_of_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(100, clock, clock.sleep)
    for _ in range(30):
        limiter.spend(25)  # 750 units
    assert clock.now - 1000 == pytest.approx(750 / 100 - 1.0)


def test_max_wcu_per_second_caps_a_real_purge(dynamodb_harness: DynamoDBHarness) -> None:
    h = dynamodb_harness
    h.run(build(h, h.pyworkflow()))
    backend = h.retention(max_wcu_per_second=40)
    started = time.monotonic()
    backend.delete_old_runs(CUTOFF)
    elapsed = time.monotonic() - started
    units = backend.table.capacity.items_written
    assert units > 120
    assert elapsed >= (units - 40) / 40 * 0.95, f"{units} write units in {elapsed:.1f}s at a cap of 40/s"
    assert_no_orphans(h.inventory())


def test_writes_are_counted_as_billed_without_asking_the_service_and_reads_report_their_units(
        dynamodb_harness: DynamoDBHarness) -> None:
    """``ReturnConsumedCapacity`` on a write costs DynamoDB Local a third more work per delete (issue 17); the
    purge counts what each write is billed (the pacing's own figure) and asks the service only for read units."""
    from tests.dynamodb.helpers import faulty_backend
    from workflow_retention.backends.dynamodb.client import WRITES

    h = dynamodb_harness
    h.run(build(h, h.pyworkflow()))
    expected = h.retention().delete_old_runs(CUTOFF, dry_run=True)
    backend, client = faulty_backend(h)
    asked: dict[str, set[bool]] = {}

    def recording(op: str):
        def rule(real_fn, n, **params):
            asked.setdefault(op, set()).add("ReturnConsumedCapacity" in params)
            return real_fn(**params)
        return rule

    for op in (*WRITES, "query", "scan", "batch_get_item", "execute_statement"):
        client.rules[op] = recording(op)
    report = backend.delete_old_runs(CUTOFF)
    assert dict(report.counts) == dict(expected.counts) and report.runs > 0
    assert asked.get("batch_write_item") == {False} and asked.get("transact_write_items") == {False}
    assert all(asked[op] == {True} for op in ("scan", "execute_statement") if op in asked)
    capacity = backend.table.capacity
    # every item deleted once, the commits' transactional deletes twice, plus the purge's markers
    assert capacity.items_written >= sum(report.counts.values()) + report.runs
    assert capacity.read_units > 0
    assert_no_orphans(h.inventory())
