"""A live engine beside the purge, on the real server: a run revived before its commit keeps every row."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.conformance.checks import assert_no_orphans, items_of, run_ids
from tests.harness.base import Item
from tests.harness.cassandra import CassandraHarness
from tests.scenario import CUTOFF, OLD, add_run
from workflow_retention.backends.cassandra import client as client_module

#: Rows pyworkflow's update_run_status rewrites (the record and its listing rows change status).
STATUS_KINDS = ("runs", "runs_by_status", "runs_by_workflow", "runs_by_parent")


def keys_of(items: list[Item], run_id: str) -> dict[tuple[str, str], str]:
    """(kind, key) -> digest of the run's rows, its status index rows left out (a status change moves them)."""
    return {k: d for k, d in items_of(items, {run_id}).items() if k[0] != "runs_by_status"}


def assert_keeps_every_row(before: dict[tuple[str, str], str], after: list[Item], run_id: str) -> None:
    """Every row the run had is still there, unchanged unless a status change rewrote it."""
    now = keys_of(after, run_id)
    lost = sorted(set(before) - set(now))
    assert not lost, f"{run_id} lost {len(lost)} rows: {lost[:8]}"
    changed = sorted(k for k in before if k[0] not in STATUS_KINDS and now[k] != before[k])
    assert not changed, f"{run_id} rows changed: {changed[:8]}"
    statuses = {i.key.split("|")[0] for i in after if i.kind == "runs_by_status" and i.run_id == run_id}
    assert "running" in statuses, f"{run_id} lost its status index row: {statuses}"


def revive_before_commit(h: CassandraHarness, monkeypatch: pytest.MonkeyPatch, victim: str, moment: str) -> list[str]:
    """Make the engine revive ``victim`` (update_run_status RUNNING) while the purge holds it, before its commit.

    ``moment``: ``first_write``, when the purge sends its first write after selecting the batch
    (before anything of the batch is deleted), or ``commit``, just before it sends the delete of the
    victim's record (after it has checked the record).
    """
    from pyworkflow.storage.schemas import RunStatus

    from workflow_retention.backends.cassandra.layout import WRITES

    pw = h.pyworkflow()
    revived: list[str] = []

    def revive() -> None:
        if not revived:
            h.run(pw.update_run_status(victim, RunStatus.RUNNING))  # a real write on the real server
            revived.append(victim)

    concurrent, batches = client_module.Cql.concurrent, client_module.Cql.unlogged_batches

    def on_concurrent(self: Any, items: Any) -> list[Any]:
        if moment == "first_write" and any(name in WRITES for name, _ in items):
            revive()
        return concurrent(self, items)

    def on_batches(self: Any, groups: Any) -> None:
        if moment == "first_write" and any(groups):
            revive()
        if any(name == "delete_run" and params[1] == victim for group in groups for name, params in group):
            revive()
        return batches(self, groups)

    monkeypatch.setattr(client_module.Cql, "concurrent", on_concurrent)
    monkeypatch.setattr(client_module.Cql, "unlogged_batches", on_batches)
    return revived


@pytest.mark.parametrize("moment", ["first_write", "commit"])
def test_a_run_revived_before_its_commit_keeps_every_row(
        cassandra_harness: CassandraHarness, monkeypatch: pytest.MonkeyPatch, moment: str) -> None:
    h, pw = cassandra_harness, cassandra_harness.pyworkflow()
    for n in range(3):
        h.run(add_run(pw, f"run_gone_{n}", "interrupted", OLD))
    h.run(add_run(pw, "run_revived", "interrupted", OLD))
    before = keys_of(h.inventory(), "run_revived")
    revived = revive_before_commit(h, monkeypatch, "run_revived", moment)
    report = h.retention().delete_old_runs(CUTOFF)
    items = h.inventory()
    assert revived == ["run_revived"]
    assert run_ids(items) == {"run_revived"}
    assert_keeps_every_row(before, items, "run_revived")
    assert (report.runs, report.changed) == (3, 1)
    assert any("run_revived" in w for w in report.warnings)
    assert_no_orphans(items)


@pytest.mark.parametrize("moment", ["first_write", "commit"])
def test_the_parent_of_a_run_revived_during_a_purge_stays_held_by_the_next_purge(
        cassandra_harness: CassandraHarness, monkeypatch: pytest.MonkeyPatch, moment: str) -> None:
    """Holds come from runs_by_parent: the child's row there must outlive any purge that did not commit it."""
    h, pw = cassandra_harness, cassandra_harness.pyworkflow()
    h.run(add_run(pw, "run_parent", "completed", OLD))
    h.run(add_run(pw, "run_child", "interrupted", OLD, parent="run_parent", depth=1))
    start = h.inventory()
    parent_before, child_before = items_of(start, {"run_parent"}), keys_of(start, "run_child")
    revive_before_commit(h, monkeypatch, "run_child", moment)
    first = h.retention().delete_old_runs(CUTOFF)
    monkeypatch.undo()
    second = h.retention().delete_old_runs(CUTOFF)
    items = h.inventory()
    assert run_ids(items) == {"run_parent", "run_child"}
    assert (first.changed, first.held, first.runs) == (1, 1, 0)
    assert (second.changed, second.held, second.runs) == (0, 1, 0)
    assert items_of(items, {"run_parent"}) == parent_before, "the held parent must not be touched"
    assert_keeps_every_row(child_before, items, "run_child")
    assert_no_orphans(items)


class Crash(Exception):
    pass


#: Where a purge dies: (Cql method, which call of it, what that call carries).
CRASH_POINTS = {
    "after_markers": ("unlogged_batches", 1,
                      lambda args: any(n == "delete_run" for group in args[0] for n, _ in group)),
    "after_child_commit": ("reads", 1, lambda args: any(name == "events_in" for name, _ in args[0])),
    "between_cascade_rounds": ("unlogged_batches", 1,
                               lambda args: any(n == "delete_events" for group in args[0] for n, _ in group)),
    "after_parent_commit": ("reads", 2, lambda args: any(name == "events_in" for name, _ in args[0])),
    "in_checkpoint_pass": ("unlogged_batches", 1,
                           lambda args: any(n == "delete_checkpoint" for group in args[0] for n, _ in group)),
}


def crash_at(monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    method, nth, matches = CRASH_POINTS[point]
    original = getattr(client_module.Cql, method)
    calls = []

    def dies(self: Any, *args: Any) -> Any:
        if matches(args):
            calls.append(args)
            if len(calls) == nth:
                raise Crash(point)
        return original(self, *args)

    monkeypatch.setattr(client_module.Cql, method, dies)


@pytest.mark.parametrize("point", sorted(CRASH_POINTS))
def test_a_purge_that_dies_anywhere_is_finished_by_the_next_and_holds_stay_exact(
        cassandra_harness: CassandraHarness, monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    """Every crash-resume state: the next purge finishes what was committed and nothing else.

    A child whose commit had not happened when the purge died is revived by the engine before the
    rerun: it keeps every row and its parent stays (held), whatever the crash left.
    """
    from pyworkflow.storage.schemas import RunStatus

    h, pw = cassandra_harness, cassandra_harness.pyworkflow()
    h.run(add_run(pw, "run_parent", "completed", OLD))
    h.run(add_run(pw, "run_child", "interrupted", OLD, parent="run_parent", depth=1))
    h.run(add_run(pw, "run_other", "failed", OLD))
    h.run(add_run(pw, "run_live", "running", OLD))
    start = h.inventory()
    crash_at(monkeypatch, point)
    with pytest.raises(Crash):
        h.retention().delete_old_runs(CUTOFF)
    monkeypatch.undo()
    child_alive = "run_child" in run_ids(h.inventory())
    if child_alive:  # not committed yet: the engine recovers it before the next purge
        h.run(pw.update_run_status("run_child", RunStatus.RUNNING))
    rerun = h.retention().delete_old_runs(CUTOFF)
    items = h.inventory()
    assert_no_orphans(items)
    assert items_of(items, {"run_live"}) == items_of(start, {"run_live"})
    if child_alive:
        assert run_ids(items) == {"run_parent", "run_child", "run_live"}
        assert rerun.held == 1
        assert items_of(items, {"run_parent"}) == items_of(start, {"run_parent"})
        assert_keeps_every_row(keys_of(start, "run_child"), items, "run_child")
    else:
        assert run_ids(items) == {"run_live"}
    again = h.retention().delete_old_runs(CUTOFF)
    assert sum(again.counts.values()) == 0 and again.changed == 0
    assert h.retention().sweep_orphans(grace=timedelta(0)).total == 0
