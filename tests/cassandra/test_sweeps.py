"""The baseline's other sweeps on Cassandra: soft-deleted schedules and aged stream data, in legal CQL."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest

from tests.conformance.checks import snapshot
from tests.harness.cassandra import CassandraHarness
from tests.scenario import CUTOFF, NOW, OLD, add_run
from workflow_retention.backends.cassandra.client import Cql, Statement
from workflow_retention.report import Kind


def _rows(h: CassandraHarness, kind: str) -> set[str]:
    return {i.key for i in h.inventory() if i.kind == kind}


def test_soft_deleted_schedules_go_with_every_index_row(cassandra_harness: CassandraHarness) -> None:
    from pyworkflow.storage.schemas import Schedule, ScheduleSpec

    h, pw = cassandra_harness, cassandra_harness.pyworkflow()
    for sid in ("sched_old", "sched_new", "sched_active"):
        h.run(pw.create_schedule(Schedule(schedule_id=sid, workflow_name="wf", spec=ScheduleSpec(cron="0 3 * * *"),
                                          created_at=OLD, next_run_time=OLD + timedelta(hours=5))))
    with h.frozen(OLD):
        h.run(pw.delete_schedule("sched_old"))
    h.run(pw.delete_schedule("sched_new"))
    assert any("sched_old" in k for k in _rows(h, "due_schedules")), "soft delete keeps the due row"
    before = h.inventory()
    dry = h.retention().delete_old_runs(CUTOFF, dry_run=True)
    assert snapshot(h.inventory()) == snapshot(before)
    report = h.retention().delete_old_runs(CUTOFF)
    gone = set(snapshot(before)) - set(snapshot(h.inventory()))
    indexes = sum(1 for kind, _ in gone if kind in ("due_schedules", "schedules_by_workflow", "schedules_by_status"))
    assert sum(1 for kind, _ in gone if kind == "schedules") == 1 and indexes >= 3
    assert dict(dry.counts) == dict(report.counts) == {Kind.SCHEDULES: 1, Kind.INDEX_ENTRIES: indexes}
    left = [i for i in h.inventory() if "sched_old" in i.key]
    assert left == []
    assert h.run(pw.get_schedule("sched_new")) is not None and h.run(pw.get_schedule("sched_active")) is not None
    assert {s.schedule_id for s in h.run(pw.list_schedules(workflow_name="wf"))} == {"sched_new", "sched_active"}


def test_aged_stream_data_goes(cassandra_harness: CassandraHarness) -> None:
    from cassandra import InvalidRequest

    h, pw = cassandra_harness, cassandra_harness.pyworkflow()
    with pytest.raises(InvalidRequest):  # pyworkflow's publish_signal restricts half a partition key
        h.run(pw.publish_signal("sig_x", "stream_a", "tick", {}, stream_run_id="srun_1"))
    with h.frozen(OLD):
        h.run(pw.create_stream("stream_a", {"purpose": "test"}))
        for step in ("sstep_terminated", "sstep_completed", "sstep_waiting"):
            h.run(pw.register_stream_subscription("stream_a", step, ["tick"], stream_run_id="srun_1"))
        h.run(pw.update_subscription_status("stream_a", "sstep_terminated", "terminated"))
        h.run(pw.update_subscription_status("stream_a", "sstep_completed", "completed"))
        h.run(pw.acknowledge_signal("sig_old", "sstep_completed"))
    h.run(pw.register_stream_subscription("stream_a", "sstep_recent", ["tick"], stream_run_id="srun_1"))
    h.run(pw.update_subscription_status("stream_a", "sstep_recent", "completed"))
    h.run(pw.acknowledge_signal("sig_new", "sstep_recent"))
    for seq, (sid, when) in enumerate((("sig_old", OLD), ("sig_new", NOW))):  # as publish_signal writes them
        h.execute("INSERT INTO {ks}.signals (stream_run_id, sequence, signal_id, stream_id, signal_type, payload, "
                  "published_at, source_run_id, metadata) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                  ("srun_1", seq, sid, "stream_a", "tick", json.dumps({"n": seq}), when, None, "{}"))
    dry = h.retention().delete_old_runs(CUTOFF, dry_run=True)
    report = h.retention().delete_old_runs(CUTOFF)
    expected = {Kind.SIGNALS: 1, Kind.ACKNOWLEDGMENTS: 1, Kind.SUBSCRIPTIONS: 2}
    assert dict(dry.counts) == dict(report.counts) == expected
    assert _rows(h, "signals") == {"stream_a|srun_1|1"}
    assert _rows(h, "signal_acknowledgments") == {"sig_new|sstep_recent"}
    assert _rows(h, "stream_subscriptions") == {"stream_a|sstep_waiting", "stream_a|sstep_recent"}
    assert _rows(h, "streams") == {"stream_a"}
    assert h.retention().delete_old_runs(CUTOFF).counts == {}


def test_a_deleted_schedule_resumed_during_the_purge_keeps_every_row(
        cassandra_harness: CassandraHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyworkflow's resume_schedule revives a soft-deleted schedule: before the commit, it loses nothing."""
    from pyworkflow.primitives.schedule import resume_schedule
    from pyworkflow.storage.schemas import Schedule, ScheduleSpec

    from workflow_retention.backends.cassandra import client as client_module
    from workflow_retention.backends.cassandra.layout import WRITES

    h, pw = cassandra_harness, cassandra_harness.pyworkflow()
    h.run(pw.create_schedule(Schedule(schedule_id="sched_back", workflow_name="wf", spec=ScheduleSpec(cron="0 3 * * *"),
                                      created_at=OLD, next_run_time=OLD + timedelta(hours=5))))
    with h.frozen(OLD):
        h.run(pw.delete_schedule("sched_back"))
    concurrent, batches = client_module.Cql.concurrent, client_module.Cql.unlogged_batches
    resumed: list[Any] = []

    def resume() -> None:  # the engine resumes the schedule as the sweep sends its first write
        if not resumed:
            resumed.append(h.run(resume_schedule("sched_back", storage=pw)))

    def on_concurrent(self: Cql, items: Sequence[Statement]) -> list[Any]:
        if any(name in WRITES for name, _ in items):
            resume()
        return concurrent(self, items)

    def on_batches(self: Cql, groups: Sequence[Sequence[Statement]]) -> None:
        if any(groups):
            resume()
        return batches(self, groups)

    monkeypatch.setattr(client_module.Cql, "concurrent", on_concurrent)
    monkeypatch.setattr(client_module.Cql, "unlogged_batches", on_batches)
    report = h.retention().delete_old_runs(CUTOFF)
    monkeypatch.undo()
    assert resumed and report.counts[Kind.SCHEDULES] == 0
    schedule = h.run(pw.get_schedule("sched_back"))
    assert schedule is not None and schedule.status.value == "active"
    assert {s.schedule_id for s in h.run(pw.list_schedules(workflow_name="wf"))} == {"sched_back"}
    due = [i.key for i in h.inventory() if i.kind == "due_schedules"]
    assert any(k.endswith("|sched_back") for k in due), due


def _in_flight_write_after(monkeypatch: pytest.MonkeyPatch, statement: str,
                           write: Callable[[int], object]) -> list[int]:
    """Call ``write(timestamp)`` right after the sweep sends ``statement``, timestamped just before it was sent:
    an engine write already in flight when the delete ran, applied after it."""
    import time

    from workflow_retention.backends.cassandra import client as client_module

    concurrent, batches = client_module.Cql.concurrent, client_module.Cql.unlogged_batches
    done: list[int] = []

    def around(call: Callable[[], object], names: set[str]) -> None:
        if statement in names and not done:
            issued = time.time_ns() // 1000
            call()
            write(issued)
            done.append(issued)
        else:
            call()

    def on_concurrent(self: Cql, items: Sequence[Statement]) -> list[Any]:
        out: list[Any] = []
        around(lambda: out.extend(concurrent(self, items)), {n for n, _ in items})
        return out

    def on_batches(self: Cql, groups: Sequence[Sequence[Statement]]) -> None:
        around(lambda: batches(self, groups), {n for group in groups for n, _ in group})

    monkeypatch.setattr(client_module.Cql, "concurrent", on_concurrent)
    monkeypatch.setattr(client_module.Cql, "unlogged_batches", on_batches)
    return done


def test_the_orphan_sweep_never_removes_a_pointer_another_run_wrote_meanwhile(
        cassandra_harness: CassandraHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hook ids repeat across runs: while the sweep deletes a dead run's ``hooks_by_id`` row, a live run's
    create_hook may be rewriting it. That write must survive, even if it was issued before the delete."""
    h = cassandra_harness
    h.run(add_run(h.pyworkflow(), "run_live", "running", OLD, hooks=("hook_other",)))
    h.execute("INSERT INTO {ks}.hooks_by_id (hook_id, run_id) VALUES ('hook_approval_1', 'run_gone') "
              "USING TIMESTAMP %s", (int(OLD.timestamp() * 1_000_000),))
    done = _in_flight_write_after(monkeypatch, "orphan_hooks_by_id", lambda stamp: h.execute(
        "INSERT INTO {ks}.hooks_by_id (hook_id, run_id) VALUES ('hook_approval_1', 'run_live') USING TIMESTAMP %s",
        (stamp,)))
    report = h.retention().sweep_orphans(grace=timedelta(0))
    monkeypatch.undo()
    assert done and report.counts[Kind.INDEX_ENTRIES] == 1
    row = h.execute("SELECT run_id FROM {ks}.hooks_by_id WHERE hook_id = 'hook_approval_1'").one()
    assert row is not None and row.run_id == "run_live", "the live run's hook pointer was deleted"


def test_a_subscription_the_engine_updates_during_the_purge_is_kept(
        cassandra_harness: CassandraHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    h, pw = cassandra_harness, cassandra_harness.pyworkflow()
    with h.frozen(OLD):
        h.run(pw.create_stream("stream_a", {}))
        h.run(pw.register_stream_subscription("stream_a", "sstep_back", ["tick"], stream_run_id="srun_1"))
        h.run(pw.update_subscription_status("stream_a", "sstep_back", "completed"))
    done = _in_flight_write_after(monkeypatch, "delete_subscription", lambda stamp: h.execute(
        "UPDATE {ks}.stream_subscriptions USING TIMESTAMP %s SET status = 'waiting' "
        "WHERE stream_id = 'stream_a' AND step_run_id = 'sstep_back'", (stamp,)))
    h.retention().delete_old_runs(CUTOFF)
    monkeypatch.undo()
    assert done
    assert _rows(h, "stream_subscriptions") == {"stream_a|sstep_back"}, "an updated subscription was deleted"
