"""The Cassandra cascade on the real server: every index row, shared pointers, races and crashes."""

from __future__ import annotations

from datetime import timedelta, timezone
from typing import Any

import pytest

from tests.conformance.checks import assert_no_orphans, items_of, orphans, run_ids
from tests.harness.cassandra import CassandraHarness
from tests.scenario import CUTOFF, NOW, OLD, add_run
from workflow_retention.backends.cassandra import client as client_module
from workflow_retention.backends.cassandra import purge as purge_module
from workflow_retention.planning import RunRef


def _rows_of(h: CassandraHarness, run_id: str) -> list[Any]:
    return [i for i in h.inventory() if i.run_id == run_id]


async def _run(pw: Any, run_id: str, status: str, created: Any, **fields: Any) -> None:
    from pyworkflow.storage.schemas import RunStatus, WorkflowRun

    await pw.create_run(WorkflowRun(run_id=run_id, workflow_name="cascade", status=RunStatus(status),
                                    created_at=created, updated_at=created, **fields))


def test_index_rows_under_every_status_and_offset_bucket_go(cassandra_harness: CassandraHarness) -> None:
    """pyworkflow files index rows by the date in the caller's offset and leaves stale status rows."""
    from cassandra import InvalidRequest
    from pyworkflow.storage.schemas import RunStatus

    h, pw = cassandra_harness, cassandra_harness.pyworkflow()
    # 23:30 UTC seen from +14:00 is the next day: the run is bucketed under tomorrow's date.
    created = OLD.replace(hour=23, minute=30).astimezone(timezone(timedelta(hours=14)))
    h.run(_run(pw, "run_moved", "pending", created))
    with h.frozen(OLD + timedelta(days=1)):
        h.run(pw.update_run_status("run_moved", RunStatus.RUNNING))  # re-read: now bucketed in UTC
        h.run(pw.update_run_status("run_moved", RunStatus.SUSPENDED))
    # try_claim_run(SUSPENDED -> RUNNING) leaves the 'suspended' row behind. pyworkflow's own is
    # rejected by a real server (SERIAL as commit consistency), so its effect is written directly.
    with pytest.raises(InvalidRequest, match="SERIAL is not supported"):
        h.run(pw.try_claim_run("run_moved", RunStatus.SUSPENDED, RunStatus.RUNNING))
    h.execute("UPDATE {ks}.workflow_runs SET status = 'running' WHERE run_id = 'run_moved'")
    with h.frozen(OLD + timedelta(days=1, hours=1)):
        h.run(pw.update_run_status("run_moved", RunStatus.COMPLETED))
    index = [i for i in _rows_of(h, "run_moved") if i.kind in ("runs_by_status", "runs_by_workflow")]
    assert {i.key.split("|")[0] for i in index if i.kind == "runs_by_status"} >= {"pending", "suspended", "completed"}
    assert len({i.key.split("|")[1] for i in index}) == 2, "expected rows under two date buckets"
    dry = h.retention().delete_old_runs(CUTOFF, dry_run=True)
    report = h.retention().delete_old_runs(CUTOFF)
    assert report.runs == dry.runs == 1
    assert _rows_of(h, "run_moved") == []


def test_shared_ids_still_pointing_elsewhere_are_kept(cassandra_harness: CassandraHarness) -> None:
    from pyworkflow.storage.schemas import StepExecution, StepStatus

    h, pw = cassandra_harness, cassandra_harness.pyworkflow()
    for run_id, updated in (("run_old", OLD), ("run_new", NOW - timedelta(days=1))):
        h.run(_run(pw, run_id, "completed", updated, idempotency_key="key_shared"))
        h.run(add_run(pw, f"{run_id}_x", "completed", updated, hooks=("hook_shared",)))
        h.run(pw.create_step(StepExecution(step_id="step_shared", run_id=run_id, step_name="s",
                                           status=StepStatus.COMPLETED, created_at=updated)))
    kept = {"run_new", "run_new_x"}
    before = items_of(h.inventory(), kept)
    report = h.retention().delete_old_runs(CUTOFF)
    items = h.inventory()
    assert run_ids(items) == kept and report.runs == 2
    assert items_of(items, kept) == before
    pointers = {(i.kind, i.key): i.run_id for i in items}
    assert pointers[("hooks_by_id", "hook_shared")] == "run_new_x"
    assert pointers[("steps_by_id", "step_shared")] == "run_new"
    assert pointers[("runs_by_idempotency_key", "key_shared")] == "run_new"
    assert_no_orphans(items)


def test_a_run_changed_before_its_record_goes_keeps_it_and_its_parent(
        cassandra_harness: CassandraHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The version-checked delete of the record is the commit point (a race the plan's reads cannot see)."""
    from pyworkflow.storage.schemas import RunStatus

    h, pw = cassandra_harness, cassandra_harness.pyworkflow()
    h.run(add_run(pw, "run_parent", "completed", OLD))
    h.run(add_run(pw, "run_child", "completed", OLD, parent="run_parent", depth=1))
    parent_before = items_of(h.inventory(), {"run_parent"})
    original = purge_module.Purge._delete_records

    def engine_writes_first(self: purge_module.Purge, runs: list[RunRef]
                            ) -> tuple[list[RunRef], set[str], dict[str, tuple[Any, int]]]:
        if any(r.run_id == "run_child" for r in runs):
            h.run(pw.update_run_status("run_child", RunStatus.FAILED))  # a real write on the real server
        return original(self, runs)

    monkeypatch.setattr(purge_module.Purge, "_delete_records", engine_writes_first)
    report = h.retention().delete_old_runs(CUTOFF)
    items = h.inventory()
    assert run_ids(items) == {"run_parent", "run_child"}
    assert report.changed == 1 and report.runs == 0
    assert any("run_child" in w for w in report.warnings)
    assert items_of(items, {"run_parent"}) == parent_before, "the parent must not be touched"


def test_a_purge_that_dies_mid_cascade_is_finished_by_the_next(
        cassandra_harness: CassandraHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Committed runs' markers let the next purge find what their cascade left."""
    h, pw = cassandra_harness, cassandra_harness.pyworkflow()
    for n in range(3):
        h.run(add_run(pw, f"run_gone_{n}", "completed", OLD))
    h.run(add_run(pw, "run_kept", "running", OLD))
    original = client_module.Cql.unlogged_batches

    def crash(self: Any, batches: Any) -> None:
        if any(name == "delete_events" for members in batches for name, _ in members):
            raise RuntimeError("process killed after the lookup and listing rows were deleted")
        original(self, batches)

    monkeypatch.setattr(client_module.Cql, "unlogged_batches", crash)
    with pytest.raises(RuntimeError):
        h.retention().delete_old_runs(CUTOFF)
    half = h.inventory()
    assert run_ids(half) == {"run_kept"}, "the records go first: they are the commit"
    left = orphans(half)
    assert {i.kind for i in left} == {"events", "steps", "hooks", "cancellation_flags", "checkpoints"}
    monkeypatch.setattr(client_module.Cql, "unlogged_batches", original)
    report = h.retention().delete_old_runs(CUTOFF)
    items = h.inventory()
    assert report.runs == 0 and sum(report.counts.values()) == len(left)
    assert run_ids(items) == {"run_kept"}
    assert_no_orphans(items)


def test_pyworkflows_own_cascade_leaves_orphans_that_the_sweep_repairs(cassandra_harness: CassandraHarness) -> None:
    """If the baseline's discovery were legal, its per-run deletes would leave eight tables' rows behind."""
    from cassandra import InvalidRequest

    h, pw = cassandra_harness, cassandra_harness.pyworkflow()
    h.run(add_run(pw, "run_recent", "completed", NOW - timedelta(days=1)))
    for n in range(3):  # created last: the shared hook id now points to run_exp_2
        h.run(add_run(pw, f"run_exp_{n}", "completed", OLD))
    buckets = ", ".join(f"'{(OLD - timedelta(days=d)).strftime('%Y-%m-%d')}'" for d in range(-1, 2))
    session = pw._session

    class LegalDiscovery:
        def execute(self, query: Any, parameters: Any = None, *args: Any, **kwargs: Any) -> Any:
            text = getattr(query, "_query_string", None)
            if text and text.strip() == "SELECT run_id FROM runs_by_status WHERE status = %s":
                query._query_string = f"{text} AND date_bucket IN ({buckets})"
            return session.execute(query, parameters, *args, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(session, name)

    pw._session = LegalDiscovery()
    try:
        with pytest.raises(InvalidRequest):  # its stream clean-up needs filtering the server refuses
            h.run(pw.delete_old_runs(CUTOFF.replace(tzinfo=None)))  # naive: it compares with naive values
    finally:
        pw._session = session
    left = orphans(h.inventory())
    assert {i.run_id for i in left} == {f"run_exp_{n}" for n in range(3)}
    assert {i.kind for i in left} >= {"runs_by_status", "runs_by_workflow", "runs_by_idempotency_key",
                                      "hooks_by_id", "hooks_by_token", "checkpoints"}
    report = h.retention().sweep_orphans(grace=timedelta(0))
    assert report.total == len(left) and report.bytes > 0
    assert_no_orphans(h.inventory())
    assert run_ids(h.inventory()) == {"run_recent"}


def test_runs_created_years_apart_lose_every_listing_row_in_reads_of_bounded_fan_out(
        cassandra_harness: CassandraHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing reads name at most MAX_BUCKETS day buckets and IN_CHUNK runs (and parents), however sparse the
    runs of a workflow are; every status, workflow and parent row of the purged runs still goes."""
    from workflow_retention.backends.cassandra.cascade import MAX_BUCKETS

    h, pw = cassandra_harness, cassandra_harness.pyworkflow()
    parents = [f"run_parent_{p}" for p in "abc"]
    spread = [f"run_spread_{i:02d}" for i in range(70)]

    async def build() -> None:
        for parent in parents:
            await add_run(pw, parent, "completed", OLD, extras=False)
        for i, run_id in enumerate(spread):  # one run every 20 days, over almost four years
            await add_run(pw, run_id, "completed", OLD - timedelta(days=20 * i), extras=False,
                          parent=parents[i % 3] if i % 2 else None, depth=i % 2)

    h.run(build())
    listing_reads: list[tuple[str, Any]] = []
    reads = client_module.Cql.reads

    def recorded(self: Any, items: Any) -> Any:
        listing_reads.extend(item for item in items if item[0].endswith("_rows_in"))
        return reads(self, items)

    monkeypatch.setattr(client_module.Cql, "reads", recorded)
    dry = h.retention().delete_old_runs(CUTOFF, dry_run=True)
    report = h.retention().delete_old_runs(CUTOFF)
    assert report.runs == dry.runs == len(parents) + len(spread)
    assert report.counts == dry.counts
    items = h.inventory()
    assert not [i for i in items if i.run_id in set(parents) | set(spread)]
    assert_no_orphans(items)
    for name, params in listing_reads:
        pairs = params[-1]
        assert len(pairs) <= client_module.IN_CHUNK, name
        if name == "parent_rows_in":
            assert len(params[0]) <= client_module.IN_CHUNK
        else:
            assert len(params[1]) <= MAX_BUCKETS, (name, len(params[1]))
    assert {name for name, _ in listing_reads} == {"status_rows_in", "workflow_rows_in", "parent_rows_in"}
