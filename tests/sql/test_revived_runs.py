"""Issue 14: a run with more rows than one transaction may delete is never left half-deleted and alive.

The engine revives an ``interrupted`` run with ``update_run_status(run_id, RUNNING)``. A heavy
family used to be deleted in several transactions, child rows first and the run records last: a
revival after the first step left a live run without the events, steps and hooks the first step had
deleted. Now the run records go first, in one short transaction that re-checks the runs under lock
and leaves a marker row per run (the commit point: after it the engine can no longer revive the
run); the marked runs' child rows follow in bounded transactions, and a purge stopped in between is
finished by the next purge (or orphan sweep). PostgreSQL, whose cascade cannot be held back without
superuser rights, deletes such a family in one transaction.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from sqlalchemy import text

from tests.conformance.checks import assert_no_orphans, run_ids
from tests.sql.conftest import insert_rows, run_row
from tests.sql.live_writer import CUTOFF, OLD
from workflow_retention.exceptions import PurgeStopped

MARKERS = "workflow_retention_purge_markers"
#: Rows of the heavy run besides its record: events, steps, hooks, its cancellation flag, checkpoints.
ROWS = {"events": 1000, "steps": 100, "hooks": 50, "cancellation_flags": 1, "checkpoints": 60}


def heavy_run(harness: Any, run_id: str = "run_big", status: str = "interrupted") -> None:
    """An expired run holding every kind of child row, :data:`ROWS` of each, as the engine writes them."""
    backend = harness.retention()
    old = backend.db_time(OLD)
    insert_rows(harness, "workflow_runs", [run_row(harness, run_id, status, OLD)])
    insert_rows(harness, "events", [
        {"event_id": f"evt_{run_id}_{n}", "run_id": run_id, "sequence": n, "type": "step.completed",
         "timestamp": old, "data": "{}"} for n in range(ROWS["events"])])
    insert_rows(harness, "steps", [
        {"step_id": f"step_{run_id}_{n}", "run_id": run_id, "step_name": "s", "status": "completed",
         "created_at": old, "input_args": "[]", "input_kwargs": "{}"} for n in range(ROWS["steps"])])
    insert_rows(harness, "hooks", [
        {"run_id": run_id, "hook_id": f"hook_{n}", "token": f"{run_id}:hook_{n}", "created_at": old,
         "status": "pending", "metadata": "{}"} for n in range(ROWS["hooks"])])
    insert_rows(harness, "cancellation_flags", [{"run_id": run_id, "created_at": old}])
    insert_rows(harness, "checkpoints", [
        {"step_run_id": f"{run_id}:step_{n}", "data": backend.dialect.json({"n": n}), "created_at": old,
         "updated_at": old} for n in range(ROWS["checkpoints"])])


def revive(harness: Any, run_id: str = "run_big") -> int:
    """What the engine's recovery does to an interrupted run, on a connection of its own: rows updated."""
    backend = harness.retention()
    with harness.raw().begin() as conn:
        return int(conn.execute(
            text("UPDATE workflow_runs SET status = 'running', updated_at = :t WHERE run_id = :r"),
            {"t": backend.db_time(OLD.replace(year=OLD.year + 1)), "r": run_id}).rowcount)


def rows_of(harness: Any, run_id: str = "run_big") -> Counter:
    return Counter(i.kind for i in harness.inventory() if i.run_id == run_id)


def markers(harness: Any) -> list[str]:
    with harness.raw().connect() as conn:
        if not conn.dialect.has_table(conn, MARKERS):
            return []
        return list(conn.execute(text(f"SELECT run_id FROM {MARKERS}")).scalars())


@pytest.mark.parametrize("moment", [1, 2, 3, 4])
def test_a_run_revived_at_any_boundary_keeps_every_row_or_is_gone_whole(sql: Any, moment: int) -> None:
    """The engine revives the heavy run at the ``moment``-th batch boundary of the purge.

    Before the commit point the re-check sees it changed: it keeps every row. After it, the
    engine's UPDATE matches nothing (the record is gone) and the run goes whole. Never half.
    """
    heavy_run(sql)
    backend = sql.retention(max_rows=200)
    revived: list[int] = []

    def engine_revives_it(info: Any) -> None:
        if info.index == moment:
            revived.append(revive(sql))

    report = backend.delete_old_runs(CUTOFF, on_batch=engine_revives_it)
    left = rows_of(sql)
    if revived == [1]:  # the engine's revival took: the run is live, and whole
        assert left == Counter({"runs": 1, **ROWS}), left
        assert report.changed == 1 and report.runs == 0 and not report.counts
    else:  # the purge had passed its commit point (or finished): nothing of the run is left
        assert not left, left
        assert report.runs == 1 and dict(report.counts) == {"runs": 1, **ROWS}
    assert not markers(sql)
    assert_no_orphans(sql.inventory())


def test_the_revived_run_keeps_every_row_when_revived_right_after_the_first_step(sql: Any) -> None:
    """The case of issue 14: revived once the first transaction of the family committed."""
    heavy_run(sql)
    backend = sql.retention(max_rows=200)
    revived: list[int] = []

    def engine_revives_it(info: Any) -> None:
        if info.index == 2:
            revived.append(revive(sql))

    report = backend.delete_old_runs(CUTOFF, on_batch=engine_revives_it)
    left = rows_of(sql)
    assert left in (Counter(), Counter({"runs": 1, **ROWS})), f"a live run lost rows: {left} (revived {revived})"
    assert bool(left) == (revived == [1])
    assert report.runs + report.changed == 1


@pytest.mark.parametrize("backend_name", ["sqlite", "mysql"])
def test_the_commit_transaction_deletes_the_records_and_the_cascade_does_not_fire(
        request: pytest.FixtureRequest, backend_name: str) -> None:
    """Stopped right after the commit point: the run record is gone, its child rows are all still there
    (the engine's ON DELETE CASCADE did not fire), a marker names it; a rerun leaves a clean store."""
    h = request.getfixturevalue(f"{backend_name}_harness")
    heavy_run(h)
    backend = h.retention(max_rows=200)

    def stop_after_the_commit(info: Any) -> None:
        if info.index == 2:
            raise PurgeStopped("lease lost")

    first = backend.delete_old_runs(CUTOFF, on_batch=stop_after_the_commit)
    assert first.stopped and first.runs == 1
    left = rows_of(h)
    assert left == Counter(ROWS), left
    assert markers(h) == ["run_big"]
    assert revive(h) == 0, "the engine could still revive a run past its commit point"
    second = backend.delete_old_runs(CUTOFF)
    assert not rows_of(h) and not markers(h)
    assert second.runs == 0
    assert first.counts + second.counts == Counter({"runs": 1, **ROWS})
    assert any("interrupted purge" in w for w in second.warnings), second.warnings
    assert_no_orphans(h.inventory())
    # The purge connection enforces foreign keys again: the cascade toggle did not leak.
    with backend.session(), backend.read() as conn:
        if backend_name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
        else:
            assert conn.exec_driver_sql("SELECT @@SESSION.foreign_key_checks").scalar_one() == 1


def test_an_interrupted_purge_and_a_rerun_leave_a_clean_store(sql: Any) -> None:
    """Killed (any exception) inside the loop after the commit transaction, then run again."""
    heavy_run(sql)
    heavy_run(sql, "run_other", status="completed")
    backend = sql.retention(max_rows=200)
    steps = {"n": 0}
    original = backend.client.timed_write

    def crash_after_two_transactions(body: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(body, *args, **kwargs)
        steps["n"] += 1
        if steps["n"] == 2:
            raise RuntimeError("killed")
        return result

    backend.client.timed_write = crash_after_two_transactions  # type: ignore[method-assign]
    with pytest.raises(Exception, match="killed"):
        backend.delete_old_runs(CUTOFF)
    rerun = sql.retention(max_rows=200)
    report = rerun.delete_old_runs(CUTOFF)
    assert not run_ids(sql.inventory()) and not markers(sql)
    assert_no_orphans(sql.inventory())
    if sql.name != "postgres":  # PostgreSQL deleted each family in one transaction: nothing was left
        assert report.counts["events"] > 0  # what was left of the first run, and the second run


def test_the_orphan_sweep_finishes_an_interrupted_purge_first(sql: Any) -> None:
    heavy_run(sql)
    backend = sql.retention(max_rows=200)

    def stop(info: Any) -> None:
        if info.index == 3:
            raise PurgeStopped("lease lost")

    stopped = backend.delete_old_runs(CUTOFF, on_batch=stop).stopped
    report = sql.retention(max_rows=200).sweep_orphans()
    assert not rows_of(sql) and not markers(sql)
    assert_no_orphans(sql.inventory())
    if sql.name != "postgres":  # PostgreSQL: the family went in one transaction, nothing to finish
        assert stopped and any("interrupted purge" in w for w in report.warnings), report.warnings


@pytest.mark.parametrize("backend_name", ["sqlite", "mysql"])
def test_a_marked_run_whose_record_exists_again_is_never_deleted(request: pytest.FixtureRequest,
                                                                   backend_name: str) -> None:
    """A marker left behind by a stopped purge whose run id names a run again (recreated): the marker is
    dropped and reported, the run and every row it holds are kept."""
    h = request.getfixturevalue(f"{backend_name}_harness")
    heavy_run(h)
    backend = h.retention(max_rows=200)

    def stop(info: Any) -> None:
        if info.index == 2:
            raise PurgeStopped("lease lost")

    backend.delete_old_runs(CUTOFF, on_batch=stop)
    insert_rows(h, "workflow_runs", [run_row(h, "run_big", "running", OLD.replace(year=OLD.year + 1))])
    report = h.retention(max_rows=200).delete_old_runs(CUTOFF)
    assert rows_of(h) == Counter({"runs": 1, **ROWS})
    assert not markers(h)
    assert any("run_big" in w and "exists again" in w for w in report.warnings), report.warnings


def test_a_dry_run_counts_a_heavy_run_the_same_and_creates_nothing(sql: Any) -> None:
    heavy_run(sql)
    backend = sql.retention(max_rows=200)
    dry = backend.delete_old_runs(CUTOFF, dry_run=True)
    with sql.raw().connect() as conn:
        assert not conn.dialect.has_table(conn, MARKERS)
    report = backend.delete_old_runs(CUTOFF)
    assert dict(dry.counts) == dict(report.counts) == {"runs": 1, **ROWS}


def test_the_audit_does_not_count_markers_and_says_when_some_are_pending(sql: Any) -> None:
    heavy_run(sql)
    backend = sql.retention(max_rows=200)

    def stop(info: Any) -> None:
        if info.index == 2:
            raise PurgeStopped("lease lost")

    backend.delete_old_runs(CUTOFF, on_batch=stop)
    census = sql.retention().audit().census
    assert census.kinds["runs"].count == 0 and MARKERS not in str(census.kinds)
    if sql.name != "postgres":  # PostgreSQL deletes a heavy family in one transaction: no marker
        assert any("interrupted purge" in w for w in census.warnings), census.warnings
