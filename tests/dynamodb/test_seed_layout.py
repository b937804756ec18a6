"""The project's seeder writes items exactly as pyworkflow-engine 0.4.0's DynamoDBStorageBackend does."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.harness.dynamodb import DynamoDBHarness
from tests.scenario import NOW
from workflow_retention.seed import SeedRun, generate


async def write_with_pyworkflow(h: DynamoDBHarness, seed: SeedRun) -> None:
    """The same run through the engine's API, its clock frozen at the times the seeder uses."""
    from pyworkflow.engine.events import Event, EventType
    from pyworkflow.storage.schemas import Hook, StepExecution, WorkflowRun

    pw, run = h.pyworkflow(), WorkflowRun.from_dict(seed.run)
    await pw.create_run(run)
    with h.frozen(run.updated_at):  # the last status write
        await pw.update_run_status(run.run_id, run.status)
    for event in seed.events:
        await pw.record_event(Event(event_id=event["event_id"], run_id=event["run_id"], type=EventType(event["type"]),
                                    timestamp=datetime.fromisoformat(event["timestamp"]), data=event["data"]))
    for step in seed.steps:
        await pw.create_step(StepExecution.from_dict(step))
    for hook in seed.hooks:
        await pw.create_hook(Hook.from_dict(hook))
    with h.frozen(run.created_at):
        for step_run_id, data in seed.checkpoints.items():
            await pw.save_checkpoint(step_run_id, data)
    if seed.cancel_flag:
        with h.frozen(run.updated_at):
            await pw.set_cancellation_flag(run.run_id)


def items(h: DynamoDBHarness) -> dict[tuple[str, str], dict[str, Any]]:
    return {(item["PK"]["S"], item["SK"]["S"]): item for item in h.scan()}


def test_seeded_items_match_what_pyworkflow_writes(dynamodb_harness: DynamoDBHarness) -> None:
    h = dynamodb_harness
    seeds = list(generate(60, now=NOW, seed=11))
    seed = next(s for s in seeds if s.steps and s.hooks and s.cancel_flag and s.run["idempotency_key"])
    child = next(s for s in seeds if s.run["parent_run_id"])
    h.retention().seed([seed, child])
    ours = items(h)
    for item in h.scan():
        h.client.delete_item(TableName=h.table, Key={"PK": item["PK"], "SK": item["SK"]})
    for s in (seed, child):
        h.run(write_with_pyworkflow(h, s))
    theirs = items(h)
    assert sorted(ours) == sorted(theirs)
    for key, item in theirs.items():
        assert ours[key] == item, key
