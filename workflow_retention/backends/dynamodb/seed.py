"""Seed runs (``workflow-retention seed``), written as pyworkflow-engine 0.4.0's ``DynamoDBStorageBackend``
writes them."""

from __future__ import annotations

import json
from collections.abc import Iterable

from workflow_retention.seed import SeedRun

from .client import Table
from .layout import COUNTER_SK, RUN_SK, TABLE_SCHEMA, Item, to_item


def prepare_table(table: Table) -> None:
    """Create pyworkflow's table unless it exists, and wait until it does."""
    table.create(TABLE_SCHEMA)


def write_runs(table: Table, runs: Iterable[SeedRun]) -> None:
    """Write every item of ``runs`` (BatchWriteItem, retried as every write)."""
    table.put_many([item for run in runs for item in run_items(run)])


_RUN_FIELDS = ("run_id", "workflow_name", "status", "created_at", "updated_at", "started_at", "completed_at",
               "input_args", "input_kwargs", "result", "error", "idempotency_key", "max_duration")
_RUN_TAIL = ("recovery_attempts", "max_recovery_attempts", "recover_on_worker_loss", "parent_run_id",
             "nesting_depth", "continued_from_run_id", "continued_to_run_id")
_STEP_FIELDS = ("step_id", "run_id", "step_name", "status", "created_at", "started_at", "completed_at",
                "input_args", "input_kwargs", "result", "error")
_HOOK_FIELDS = ("hook_id", "run_id", "token", "created_at", "received_at", "expires_at", "status", "payload")


def run_items(seed: SeedRun) -> Iterable[Item]:
    """Every item pyworkflow-engine writes for ``seed``."""
    run = seed.run
    run_id = run["run_id"]
    item = {"PK": f"RUN#{run_id}", "SK": RUN_SK, "entity_type": "run", **{f: run.get(f) for f in _RUN_FIELDS},
            "context": json.dumps(run.get("context") or {}), **{f: run.get(f) for f in _RUN_TAIL},
            "GSI1PK": "RUNS", "GSI1SK": f"{run['status']}#{run['updated_at']}",
            "GSI2PK": f"WORKFLOW#{run['workflow_name']}", "GSI2SK": run["created_at"]}
    if run.get("idempotency_key"):
        item["GSI3PK"] = f"IDEMPOTENCY#{run['idempotency_key']}"
    if run.get("parent_run_id"):
        item.update(GSI4PK=f"PARENT#{run['parent_run_id']}", GSI4SK=f"CHILD#{run_id}")
    yield to_item(item)
    if seed.events:
        yield to_item({"PK": f"RUN#{run_id}", "SK": COUNTER_SK, "seq": len(seed.events)})
    for seq, event in enumerate(seed.events):
        yield to_item({"PK": f"RUN#{run_id}", "SK": f"EVENT#{seq:05d}", "entity_type": "event",
                       "event_id": event["event_id"], "run_id": run_id, "sequence": seq, "type": event["type"],
                       "timestamp": event["timestamp"], "data": json.dumps(event["data"])})
    for step in seed.steps:
        attempt = step.get("attempt", 1)
        yield to_item({"PK": f"RUN#{run_id}", "SK": f"STEP#{step['step_id']}", "entity_type": "step",
                       **{f: step.get(f) for f in _STEP_FIELDS}, "retry_count": attempt - 1 if attempt > 0 else 0})
    for hook in seed.hooks:
        hook_pk = f"HOOK#{run_id}#{hook['hook_id']}"
        yield to_item({"PK": hook_pk, "SK": RUN_SK, "entity_type": "hook", **{f: hook.get(f) for f in _HOOK_FIELDS},
                       "metadata": json.dumps(hook.get("metadata") or {}), "GSI1PK": f"RUN_HOOKS#{run_id}",
                       "GSI1SK": f"{hook['status']}#{hook['created_at']}"})
        yield to_item({"PK": f"TOKEN#{hook['token']}", "SK": hook_pk, "entity_type": "hook_token",
                       "hook_id": hook["hook_id"], "run_id": run_id})
    for step_run_id, data in seed.checkpoints.items():
        yield to_item({"PK": f"CHECKPOINT#{step_run_id}", "SK": "#DATA", "entity_type": "checkpoint",
                       "step_run_id": step_run_id, "data": json.dumps(data), "created_at": run["created_at"],
                       "updated_at": run["created_at"]})
    if seed.cancel_flag:
        yield to_item({"PK": f"CANCEL#{run_id}", "SK": "#FLAG", "entity_type": "cancellation", "run_id": run_id,
                       "created_at": run["updated_at"]})
