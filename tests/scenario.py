"""The standard conformance scenario, written through pyworkflow-engine's own storage API.

Every case the contract names has a run here: each terminal status expired,
live runs that are old, recent runs, a run updated exactly at the cutoff,
timestamps written with non-UTC offsets (chosen so that comparing them as
strings would give the wrong answer), parent/child chains, shared hook ids,
soft-deleted schedules and aged stream data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from tests.harness.base import Harness
from workflow_retention.report import Kind

NOW = datetime.now(UTC).replace(microsecond=0)
CUTOFF = NOW - timedelta(days=30)
OLD = NOW - timedelta(days=40)
PLUS5 = timezone(timedelta(hours=5))
MINUS7 = timezone(timedelta(hours=-7))


@dataclass
class Scenario:
    cutoff: datetime = CUTOFF
    deleted: set[str] = field(default_factory=set)
    kept: set[str] = field(default_factory=set)
    held: set[str] = field(default_factory=set)
    aux_deleted: dict[str, int] = field(default_factory=dict)
    parents: dict[str, str] = field(default_factory=dict)

    @property
    def all_runs(self) -> set[str]:
        return self.deleted | self.kept | self.held

    def ancestors(self, run_id: str) -> set[str]:
        """Every run above ``run_id`` through its parent links."""
        found, node = set(), run_id
        while node in self.parents:
            node = self.parents[node]
            found.add(node)
        return found


async def add_run(pw: Any, run_id: str, status: str, updated_at: datetime, *, parent: str | None = None,
                  depth: int = 0, hooks: tuple[str, ...] = ("hook_approval_1",), extras: bool = True,
                  workflow: str = "conformance", created: datetime | None = None) -> None:
    """Create a run with events, a step, step checkpoints, hooks, a flag and an idempotency key."""
    from pyworkflow.engine.events import Event, EventType
    from pyworkflow.storage.schemas import Hook, RunStatus, StepExecution, StepStatus, WorkflowRun

    created = created or updated_at - timedelta(minutes=5)
    await pw.create_run(WorkflowRun(
        run_id=run_id, workflow_name=workflow, status=RunStatus(status), created_at=created,
        updated_at=updated_at, idempotency_key=f"idem-{run_id}" if extras else None,
        parent_run_id=parent, nesting_depth=depth, input_args='["x"]', context={"k": 1}))
    if not extras:
        return
    step_id = f"step_charge_{run_id.removeprefix('run_')}"
    for kind in (EventType.WORKFLOW_STARTED, EventType.STEP_STARTED, EventType.STEP_COMPLETED):
        await pw.record_event(Event(run_id=run_id, type=kind, timestamp=created,
                                    data={"step_id": step_id, "run": run_id}))
    await pw.create_step(StepExecution(step_id=step_id, run_id=run_id, step_name="charge",
                                       status=StepStatus.COMPLETED, created_at=created, updated_at=created))
    await pw.save_checkpoint(f"{run_id}:{step_id}", {"cursor": 7})
    await pw.save_checkpoint(f"{run_id}:{step_id}_b", {"cursor": 8})
    for hook_id in hooks:
        await pw.create_hook(Hook(hook_id=hook_id, run_id=run_id, token=f"{run_id}:{hook_id}",
                                  created_at=created, name="approval"))
    await pw.set_cancellation_flag(run_id)


async def build(h: Harness, pw: Any, *, aux: bool = True) -> Scenario:
    """The scenario's runs, and (``aux``) its schedules and stream data."""
    sc = Scenario()
    for status in ("completed", "failed", "cancelled", "continued_as_new", "interrupted"):
        await add_run(pw, f"run_exp_{status}", status, OLD)
        sc.deleted.add(f"run_exp_{status}")
    for status in ("pending", "running", "suspended"):
        await add_run(pw, f"run_live_{status}", status, OLD - timedelta(days=30))
        sc.kept.add(f"run_live_{status}")
    await add_run(pw, "run_recent", "completed", NOW - timedelta(days=1))
    await add_run(pw, "run_at_cutoff", "completed", CUTOFF)
    sc.kept |= {"run_recent", "run_at_cutoff"}
    # Offsets: as strings these compare the wrong way round.
    await add_run(pw, "run_offset_expired", "completed", (CUTOFF - timedelta(hours=1)).astimezone(PLUS5))
    await add_run(pw, "run_offset_kept", "failed", (CUTOFF + timedelta(hours=1)).astimezone(MINUS7))
    sc.deleted.add("run_offset_expired")
    sc.kept.add("run_offset_kept")
    # Parent, child and grandchild all expired: all go, deepest first.
    sc.parents.update({"run_tree_child": "run_tree_parent", "run_tree_grandchild": "run_tree_child",
                       "run_live_child": "run_held_by_live", "run_recent_child": "run_held_by_recent",
                       "run_expired_sibling": "run_held_by_live"})
    await add_run(pw, "run_tree_parent", "completed", OLD)
    await add_run(pw, "run_tree_child", "completed", OLD, parent="run_tree_parent", depth=1)
    await add_run(pw, "run_tree_grandchild", "failed", OLD, parent="run_tree_child", depth=2)
    sc.deleted |= {"run_tree_parent", "run_tree_child", "run_tree_grandchild"}
    # Expired parents held by a live child and by a recent child.
    await add_run(pw, "run_held_by_live", "completed", OLD)
    await add_run(pw, "run_live_child", "running", OLD, parent="run_held_by_live", depth=1)
    await add_run(pw, "run_held_by_recent", "completed", OLD)
    await add_run(pw, "run_recent_child", "completed", NOW - timedelta(days=2), parent="run_held_by_recent", depth=1)
    sc.held |= {"run_held_by_live", "run_held_by_recent"}
    sc.kept |= {"run_live_child", "run_recent_child"}
    # An expired child of a held parent still goes.
    await add_run(pw, "run_expired_sibling", "completed", OLD, parent="run_held_by_live", depth=1)
    sc.deleted.add("run_expired_sibling")
    if aux:
        await _aux(h, pw, sc)
    return sc


async def _aux(h: Harness, pw: Any, sc: Scenario) -> None:
    """Soft-deleted schedules and stream data, old and recent."""
    from pyworkflow.storage.schemas import Schedule, ScheduleSpec

    if "schedules" in h.capabilities:
        for sid in ("sched_deleted_old", "sched_deleted_new", "sched_active"):
            await pw.create_schedule(Schedule(schedule_id=sid, workflow_name="conformance",
                                              spec=ScheduleSpec(cron="0 3 * * *"), created_at=OLD,
                                              updated_at=OLD))  # PostgreSQL/MySQL: NOT NULL, no default
        with h.frozen(OLD):
            await pw.delete_schedule("sched_deleted_old")
        await pw.delete_schedule("sched_deleted_new")
        sc.aux_deleted[Kind.SCHEDULES] = 1
    if "streams" in h.capabilities:
        with h.frozen(OLD):
            await pw.create_stream("stream_a", {"purpose": "conformance"})
            await pw.publish_signal("sig_old", "stream_a", "tick", {"n": 1}, stream_run_id="srun_1")
            for step in ("sstep_terminated", "sstep_completed", "sstep_waiting"):
                await pw.register_stream_subscription("stream_a", step, ["tick"], stream_run_id="srun_1")
            await pw.update_subscription_status("stream_a", "sstep_terminated", "terminated")
            await pw.update_subscription_status("stream_a", "sstep_completed", "completed")
            await pw.acknowledge_signal("sig_old", "sstep_completed")
        await pw.publish_signal("sig_new", "stream_a", "tick", {"n": 2}, stream_run_id="srun_1")
        await pw.register_stream_subscription("stream_a", "sstep_recent", ["tick"], stream_run_id="srun_1")
        await pw.update_subscription_status("stream_a", "sstep_recent", "completed")
        await pw.acknowledge_signal("sig_new", "sstep_recent")
        sc.aux_deleted.update({Kind.SIGNALS: 1, Kind.SUBSCRIPTIONS: 2, Kind.ACKNOWLEDGMENTS: 1})
    if "scheduled_signals" in h.capabilities:
        with h.frozen(OLD):
            old_done = await pw.schedule_signal(stream_id="stream_a", signal_type="wake", payload={},
                                                due_at=OLD, stream_run_id="srun_1")
            await pw.schedule_signal(stream_id="stream_a", signal_type="wake", payload={}, due_at=OLD,
                                     stream_run_id="srun_1")
            await pw.mark_scheduled_signal_delivered(old_done)
        new_done = await pw.schedule_signal(stream_id="stream_a", signal_type="wake", payload={},
                                            due_at=NOW, stream_run_id="srun_1")
        await pw.mark_scheduled_signal_delivered(new_done)
        sc.aux_deleted[Kind.SCHEDULED_SIGNALS] = 1


async def newest_written_at_an_offset(pw: Any, older: int, t0: datetime) -> None:
    """``run_newest`` of workflow ``w``, created at ``t0`` but written at UTC-10 (its text sorts below runs
    created hours before it in UTC), and ``older`` runs ``run_older_<i>`` created ``i`` hours before it; all
    completed at ``t0`` (the keep_last cases of issue 21's review)."""
    await add_run(pw, "run_newest", "completed", t0, workflow="w", extras=False,
                  created=t0.astimezone(timezone(timedelta(hours=-10))))
    for i in range(1, older + 1):
        await add_run(pw, f"run_older_{i}", "completed", t0, workflow="w", extras=False,
                      created=t0 - timedelta(hours=i))

