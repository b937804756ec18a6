"""SQL shards: ranges of created_at that split any store into disjoint parts covering every run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, select

from tests.conformance.checks import assert_no_orphans, run_ids
from tests.sql.conftest import insert_rows, run_row
from workflow_retention.backends.sql import shards
from workflow_retention.shards import purge_sharded

NOW = datetime.now(UTC).replace(microsecond=0)
CUTOFF = NOW - timedelta(days=30)


def _per_shard(harness: Any, plan: list) -> list[int]:
    backend = harness.retention()
    table = backend.table("workflow_runs")
    with backend.read() as conn:
        return [conn.execute(select(func.count()).select_from(table).where(shards.where(backend.client, s)))
                .scalar_one() for s in plan]


def _spread(harness: Any, n: int) -> set[str]:
    rows = [run_row(harness, f"run_{i:04d}", "completed", NOW - timedelta(days=40 + i % 200)) for i in range(n)]
    insert_rows(harness, "workflow_runs", rows)
    return {r["run_id"] for r in rows}


def test_the_shards_split_the_runs_evenly_in_time_disjoint_and_complete(sql: Any) -> None:
    _spread(sql, 400)
    plan = sql.retention().shards(4)
    assert len(plan) == 4
    counts = _per_shard(sql, plan)
    assert sum(counts) == 400 and min(counts) >= 60, counts


def test_the_shards_are_cut_below_the_cutoff_where_runs_can_expire(sql: Any) -> None:
    """A store of 120 days purged at 30: runs created since the cutoff cannot have expired (created_at is at most
    updated_at), so a plan given the cutoff spreads its shards over the older 90 days (every shard has expired runs
    to delete) and its last shard still holds every newer run."""
    rows = [run_row(sql, f"run_{i:04d}", "completed", NOW - timedelta(days=i % 120), created=NOW - timedelta(
        days=i % 120, hours=1)) for i in range(480)]
    insert_rows(sql, "workflow_runs", rows)
    plan = sql.retention().shards(4, until=CUTOFF)
    counts = _per_shard(sql, plan)
    assert sum(counts) == 480, counts
    with sql.retention() as backend:
        expired = [backend.delete_old_runs(CUTOFF, dry_run=True, shard=s).runs for s in plan]
    assert sum(expired) == sum(1 for i in range(480) if i % 120 > 30), expired
    assert min(expired) >= 60, f"a shard has (almost) nothing to delete: {expired}"


def test_values_the_purge_cannot_read_fall_in_exactly_one_shard(sqlite_harness: Any) -> None:
    """SQLite keeps whatever it is given in a text column: numbers, garbage, offsets other than UTC."""
    _spread(sqlite_harness, 40)
    odd = [run_row(sqlite_harness, "run_garbage", "completed", CUTOFF - timedelta(days=90), created="garbage"),
           run_row(sqlite_harness, "run_offset", "completed", CUTOFF - timedelta(days=90),
                   created=(NOW - timedelta(days=100)).astimezone(timezone(timedelta(hours=5))).isoformat()),
           {**run_row(sqlite_harness, "run_number", "completed", CUTOFF - timedelta(days=90)), "created_at": 5}]
    insert_rows(sqlite_harness, "workflow_runs", odd)
    plan = sqlite_harness.retention().shards(4)
    assert sum(_per_shard(sqlite_harness, plan)) == 43


def test_a_family_across_shards_goes_in_one_sharded_purge(sql: Any) -> None:
    """The parent is in the oldest shard, its child and grandchild in the newest: no parent before a child."""
    kept = _spread(sql, 200)
    rows = [run_row(sql, "run_top", "completed", CUTOFF - timedelta(days=10), created=NOW - timedelta(days=400)),
            run_row(sql, "run_mid", "completed", CUTOFF - timedelta(days=5), created=NOW - timedelta(days=41),
                    parent="run_top"),
            run_row(sql, "run_leaf", "failed", CUTOFF - timedelta(days=1), created=NOW - timedelta(days=40),
                    parent="run_mid"),
            run_row(sql, "run_held", "completed", CUTOFF - timedelta(days=10), created=NOW - timedelta(days=400)),
            run_row(sql, "run_live", "running", CUTOFF - timedelta(days=1), created=NOW - timedelta(days=40),
                    parent="run_held")]
    insert_rows(sql, "workflow_runs", rows)
    result = purge_sharded(sql.retention, CUTOFF, 4, workers=4)
    assert not result.failed, result.failure_text()
    assert len(result.shards) == 4
    assert result.report.runs == len(kept) + 3 and result.report.held == 1
    items = sql.inventory()
    assert run_ids(items) == {"run_held", "run_live"}
    assert_no_orphans(items)
