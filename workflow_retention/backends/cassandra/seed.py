"""Seed runs written as pyworkflow-engine 0.4.0's ``CassandraStorageBackend`` writes them.

Same rows in the same tables (``create_run``, ``record_event``, ``create_step``,
``create_hook``, ``save_checkpoint``, ``set_cancellation_flag``), written
concurrently; each run's events go in one single-partition UNLOGGED batch with
TIMEUUIDs that follow the events' order.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from workflow_retention.seed import SeedRun
from workflow_retention.timeutil import parse_timestamp

from .client import Cql, Statement
from .layout import TABLES, create_table


def _ts(value: object) -> datetime | None:
    return parse_timestamp(value) if value is not None else None


def prepare(cql: Cql) -> None:
    """Create the keyspace (SimpleStrategy, RF = min(3, nodes)) and pyworkflow's tables if missing."""
    if not cql.use_keyspace(quiet=True):
        replicas = max(1, min(3, len(cql.cluster.metadata.all_hosts())))
        cql.ddl("keyspace", f"CREATE KEYSPACE IF NOT EXISTS {cql.settings.keyspace} WITH replication = "
                f"{{'class': 'SimpleStrategy', 'replication_factor': {replicas}}}")
        cql.use_keyspace()
    for table in TABLES:
        cql.ddl(table, create_table(table))
    cql.use_keyspace()


def _run_rows(seed: SeedRun) -> list[Statement]:
    r = seed.run
    created, updated = _ts(r["created_at"]), _ts(r["updated_at"])
    bucket = r["created_at"] and datetime.fromisoformat(r["created_at"]).strftime("%Y-%m-%d")
    rows: list[Statement] = [("insert_run", (
        r["run_id"], r["workflow_name"], r["status"], created, updated, _ts(r.get("started_at")),
        _ts(r.get("completed_at")), r.get("input_args"), r.get("input_kwargs"), r.get("result"), r.get("error"),
        r.get("idempotency_key"), r.get("max_duration"), json.dumps(r.get("context") or {}),
        r.get("recovery_attempts"), r.get("max_recovery_attempts"), r.get("recover_on_worker_loss"),
        r.get("parent_run_id"), r.get("nesting_depth"), r.get("continued_from_run_id"),
        r.get("continued_to_run_id")))]
    if r.get("idempotency_key"):
        rows.append(("insert_idempotency", (r["idempotency_key"], r["run_id"])))
    rows.append(("insert_status_row", (r["status"], bucket, created, r["run_id"], r["workflow_name"])))
    rows.append(("insert_workflow_row", (r["workflow_name"], bucket, created, r["run_id"], r["status"])))
    if r.get("parent_run_id"):
        rows.append(("insert_parent_row", (r["parent_run_id"], created, r["run_id"], r["status"])))
    for s in seed.steps:
        rows.append(("insert_step", (
            s["run_id"], s["step_id"], s["step_name"], s["status"], _ts(s["created_at"]), _ts(s.get("updated_at")),
            _ts(s.get("started_at")), _ts(s.get("completed_at")), s.get("input_args"), s.get("input_kwargs"),
            s.get("result"), s.get("error"), s.get("attempt"), s.get("max_retries"), _ts(s.get("retry_after")),
            s.get("retry_delay"))))
        rows.append(("insert_step_by_id", (s["step_id"], s["run_id"])))
    for h in seed.hooks:
        rows.append(("insert_hook", (
            h["run_id"], h["hook_id"], h["token"], h.get("url"), h["status"], _ts(h["created_at"]),
            _ts(h.get("received_at")), _ts(h.get("expires_at")), h.get("payload"), h.get("name"),
            h.get("payload_schema"), json.dumps(h.get("metadata") or {}))))
        rows.append(("insert_hook_by_id", (h["hook_id"], h["run_id"])))
        rows.append(("insert_hook_by_token", (h["token"], h["run_id"], h["hook_id"])))
    for key, data in seed.checkpoints.items():
        rows.append(("insert_checkpoint", (key, json.dumps(data), updated, updated)))
    if seed.cancel_flag:
        rows.append(("insert_flag", (r["run_id"], updated)))
    return rows


def _event_rows(cql: Cql, seed: SeedRun) -> list[Statement]:
    rows: list[Statement] = []
    for n, event in enumerate(seed.events):
        when = parse_timestamp(event["timestamp"])
        # uuid1 as pyworkflow's record_event makes, dated by the event (+n us keeps equal times in order)
        event_time = cql.driver.util.uuid_from_time((when + timedelta(microseconds=n)).timestamp())
        rows.append(("insert_event", (event["run_id"], event_time, event["event_id"], event["type"], when,
                                      json.dumps(event["data"]))))
    return rows


def write(cql: Cql, runs: list[SeedRun]) -> None:
    cql.concurrent([row for seed in runs for row in _run_rows(seed)])
    cql.unlogged_batches([_event_rows(cql, seed) for seed in runs])
