"""Seeding: pyworkflow-engine 0.4.0's schema on an empty database, and bulk writes of sample runs.

Rows are written exactly as the engine's ``create_run``, ``record_event``
(sequence from 0), ``create_step`` (``retry_count = attempt - 1``),
``create_hook``, ``save_checkpoint`` and ``set_cancellation_flag`` would
write them, one multi-row INSERT per table per batch.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, select

from workflow_retention.backends.sql.client import Client
from workflow_retention.backends.sql.dialect import Dialect
from workflow_retention.backends.sql.layout import SCHEMA_VERSIONS
from workflow_retention.timeutil import parse_timestamp

if TYPE_CHECKING:
    from workflow_retention.seed import SeedRun

RUN_COLUMNS = ("run_id", "workflow_name", "status", "input_args", "input_kwargs", "result", "error",
               "idempotency_key", "max_duration", "recovery_attempts", "max_recovery_attempts",
               "parent_run_id", "nesting_depth", "continued_from_run_id", "continued_to_run_id")
STEP_COLUMNS = ("step_id", "run_id", "step_name", "status", "input_args", "input_kwargs", "result", "error")


def prepare_seed(client: Client) -> None:
    """pyworkflow-engine 0.4.0's schema on the database (what exists is kept), its migration versions recorded."""
    d = client.dialect
    with client.translated("creating the schema"):
        d.before_create()
        with client.engine.begin() as conn:
            client.metadata.create_all(conn, checkfirst=True)
            versions = client.table("schema_versions")
            if not conn.execute(select(func.count()).select_from(versions)).scalar_one():
                now = d.db_time(datetime.now(UTC))
                conn.execute(insert(versions), [{"version": v, "applied_at": now, "description": desc}
                                                for v, desc in SCHEMA_VERSIONS.items()])


def write_seed(client: Client, runs: list[SeedRun]) -> None:
    """Write ``runs`` in one transaction, one bulk insert per table."""
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in (
        "workflow_runs", "events", "steps", "hooks", "checkpoints", "cancellation_flags")}
    for seed in runs:
        _rows(client.dialect, seed, rows)
    with client.translated("seeding"), client.engine.begin() as conn:
        for name, batch in rows.items():
            if batch:
                client.dialect.bulk_insert(conn, client.table(name), batch)


def _rows(d: Dialect, seed: SeedRun, rows: dict[str, list[dict[str, Any]]]) -> None:
    def ts(value: Any) -> Any:
        return None if value is None else d.db_time(parse_timestamp(value))

    run = seed.run
    rows["workflow_runs"].append({
        **{k: run[k] for k in RUN_COLUMNS},
        **{k: ts(run[k]) for k in ("created_at", "updated_at", "started_at", "completed_at")},
        "metadata": json.dumps(run["context"]),
        "recover_on_worker_loss": bool(run["recover_on_worker_loss"]),
    })
    for sequence, event in enumerate(seed.events):
        rows["events"].append({
            "event_id": event["event_id"], "run_id": event["run_id"], "sequence": sequence,
            "type": event["type"], "timestamp": ts(event["timestamp"]), "data": json.dumps(event["data"]),
            "step_id": (event["data"] or {}).get("step_id"),
        })
    for step in seed.steps:
        rows["steps"].append({
            **{k: step[k] for k in STEP_COLUMNS},
            **{k: ts(step[k]) for k in ("created_at", "started_at", "completed_at")},
            "retry_count": max(step["attempt"] - 1, 0),
        })
    for hook in seed.hooks:
        rows["hooks"].append({
            **{k: hook[k] for k in ("hook_id", "run_id", "token", "status", "payload")},
            **{k: ts(hook[k]) for k in ("created_at", "received_at", "expires_at")},
            "metadata": json.dumps(hook["metadata"]),
        })
    written = ts(run["updated_at"])
    for key, data in seed.checkpoints.items():
        rows["checkpoints"].append({"step_run_id": key, "data": d.json(data), "created_at": written,
                                    "updated_at": written})
    if seed.cancel_flag:
        rows["cancellation_flags"].append({"run_id": seed.run_id, "created_at": written})
