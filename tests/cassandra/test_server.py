"""What the real server accepts: the baseline's discovery is rejected, every statement of ours runs."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.harness.cassandra import CassandraHarness, CassandraServer
from tests.scenario import CUTOFF, NOW, OLD, add_run
from workflow_retention.archive import open_archive
from workflow_retention.backends.cassandra import CassandraBackend
from workflow_retention.backends.cassandra import purge as purge_module
from workflow_retention.backends.cassandra.client import Cql, Statement
from workflow_retention.backends.cassandra.layout import SOURCES, STATEMENTS, TABLES
from workflow_retention.base import BatchInfo
from workflow_retention.exceptions import PurgeStopped
from workflow_retention.seed import generate

pytestmark = pytest.mark.timeout(600)


def test_the_server_rejects_the_baselines_discovery_query(cassandra_harness: CassandraHarness) -> None:
    from cassandra import InvalidRequest

    h = cassandra_harness
    h.run(add_run(h.pyworkflow(), "run_old", "completed", OLD))
    with pytest.raises(InvalidRequest, match="date_bucket must be restricted"):
        h.run(h.pyworkflow().delete_old_runs(CUTOFF))
    with pytest.raises(InvalidRequest, match="date_bucket must be restricted"):
        h.execute("SELECT run_id FROM {ks}.runs_by_status WHERE status = 'completed'")
    assert "run_old" in {i.key for i in h.inventory() if i.kind == "runs"}, "the baseline deleted something"
    # ... and the same server answers our purge.
    assert h.retention().delete_old_runs(CUTOFF).runs == 1


def test_statements_are_legal_cql_as_written() -> None:
    for name, cql in STATEMENTS.items():
        assert "ALLOW FILTERING" not in cql.upper(), name
        assert " IF " not in cql.upper(), f"{name}: a lightweight transaction"
        assert not re.search(r'(?<![\w"])token(?![\w"])(?!\s*\()', cql), f"{name}: bare column token"
        where = cql.partition(" WHERE ")[2]
        assert not cql.startswith(("SELECT", "DELETE")) or "token(" in where or " = ?" in where \
            or " IN ?" in where or name == "release_version", name


def test_the_server_prepares_every_statement(cassandra_harness: CassandraHarness) -> None:
    """Preparing is where Cassandra checks partition-key restrictions and filtering: all must pass."""
    cassandra_harness.pyworkflow()  # the keyspace exists, with pyworkflow's own tables
    backend = cassandra_harness.retention()
    backend.delete_old_runs(CUTOFF)  # a purge creates its marker table
    for name in STATEMENTS:
        backend.cql.prepared(name)


def _raw_extras(server: CassandraServer, ks: str) -> None:
    """What a seed does not hold: a soft-deleted schedule, a dangling index row, streams, orphans."""
    rows = [
        ("schedules (schedule_id, workflow_name, status, updated_at, next_run_time)",
         ("sched_gone", "wf", "deleted", OLD, OLD)),
        ("schedules_by_workflow (workflow_name, schedule_id, status)", ("wf", "sched_gone", "deleted")),
        ("schedules_by_status (status, schedule_id, workflow_name)", ("deleted", "sched_gone", "wf")),
        ("schedules_by_status (status, schedule_id, workflow_name)", ("deleted", "sched_lost", "wf")),
        ("schedules (schedule_id, workflow_name, status, updated_at)", ("sched_back", "wf", "deleted", OLD)),
        ("schedules_by_status (status, schedule_id, workflow_name)", ("deleted", "sched_back", "wf")),
        ("due_schedules (hour_bucket, next_run_time, schedule_id, status)",
         (OLD.strftime("%Y-%m-%d-%H"), OLD, "sched_gone", "active")),
        ("signals (stream_id, stream_run_id, sequence, signal_id, published_at)", ("s", "sr", 0, "sig_old", OLD)),
        ("signal_acknowledgments (signal_id, step_run_id, acknowledged_at)", ("sig_old", "st", OLD)),
        ("stream_subscriptions (stream_id, step_run_id, status, created_at)", ("s", "st", "completed", OLD)),
        ("streams (stream_id, status, created_at)", ("s", "active", OLD)),
    ]
    run = server.session.execute
    for target, values in rows:
        run(f"INSERT INTO {ks}.{target} VALUES ({', '.join(['%s'] * len(values))})", values)
    event_time = _uuid(OLD)
    for table, columns, orphan in ORPHAN_ROWS:
        marks = ", ".join(["%s"] * len(orphan))
        run(f"INSERT INTO {ks}.{table} ({columns}) VALUES ({marks})",
            tuple(event_time if v is _EVENT_TIME else v for v in orphan))


def _uuid(when: datetime) -> Any:
    from cassandra.util import uuid_from_time

    return uuid_from_time(when)


_EVENT_TIME = object()
#: One row naming the run "run_gone" (which has no record) in every table that names runs.
ORPHAN_ROWS = [
    ("events", "run_id, event_time, type", ("run_gone", _EVENT_TIME, "workflow.started")),
    ("steps", "run_id, step_id, status", ("run_gone", "step_gone", "completed")),
    ("hooks", 'run_id, hook_id, "token", status', ("run_gone", "hook_gone", "run_gone:hook_gone", "pending")),
    ("cancellation_flags", "run_id, created_at", ("run_gone", OLD)),
    ("checkpoints", "step_run_id, data", ("run_gone:step_gone", "{}")),
    ("runs_by_idempotency_key", "idempotency_key, run_id", ("key_gone", "run_gone")),
    ("hooks_by_token", '"token", run_id, hook_id', ("run_gone:hook_gone", "run_gone", "hook_gone")),
    ("steps_by_id", "step_id, run_id", ("step_gone", "run_gone")),
    ("hooks_by_id", "hook_id, run_id", ("hook_gone", "run_gone")),
    ("runs_by_status", "status, date_bucket, created_at, run_id, workflow_name",
     ("running", OLD.strftime("%Y-%m-%d"), OLD, "run_gone", "wf")),
    ("runs_by_workflow", "workflow_name, date_bucket, created_at, run_id, status",
     ("wf", OLD.strftime("%Y-%m-%d"), OLD, "run_gone", "running")),
    ("runs_by_parent", "parent_run_id, created_at, run_id, status", ("run_some_parent", OLD, "run_gone", "running")),
]


def _stop_at(index: int) -> Callable[[BatchInfo], None]:
    def on_batch(info: BatchInfo) -> None:
        if info.index >= index:
            raise PurgeStopped("lease lost")
    return on_batch


def _engine_writes_before_the_first_delete(monkeypatch: pytest.MonkeyPatch, server: CassandraServer,
                                           keyspace: str) -> None:
    """Engine writes after the purge checked a record, before its delete: the record is put back.

    The first run the purge deletes, and the schedule ``sched_back``.
    """
    from workflow_retention.backends.cassandra import client as client_module

    original, done = client_module.Cql.unlogged_batches, set()
    writes = {"delete_run": "UPDATE {ks}.workflow_runs SET status = 'running' WHERE run_id = %s",
              "delete_schedule": "UPDATE {ks}.schedules SET status = 'active' WHERE schedule_id = %s"}

    def engine_first(self: Cql, groups: Sequence[Sequence[Statement]]) -> None:
        for name, cql in writes.items():
            keys = [params[1] for group in groups for n, params in group if n == name]
            key = "sched_back" if "sched_back" in keys else (keys[0] if keys and name == "delete_run" else None)
            if key and name not in done:
                server.session.execute(cql.replace("{ks}", keyspace), (key,))
                done.add(name)
        original(self, groups)

    monkeypatch.setattr(client_module.Cql, "unlogged_batches", engine_first)


def test_every_statement_is_executed_by_the_server(cassandra_service: CassandraServer,
                                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """One workload that makes the backend issue every statement it has, on the real server (the last purge
    archives what it deletes, and everything is then restored: the archive's reads and writes)."""
    server = cassandra_service
    keyspace = f"{server.prefix}_coverage"
    backend = CassandraBackend.from_url(server.url(keyspace), batch_size=20)
    pw = server.pyworkflow(keyspace)
    loop = asyncio.new_event_loop()
    try:
        backend.seed(generate(60, now=NOW, seed=3))  # a missing keyspace: our own DDL creates the layout
        loop.run_until_complete(pw.connect())
        loop.run_until_complete(add_run(pw, "run_unique_hook", "completed", OLD, hooks=("hook_only_mine",)))
        _raw_extras(server, keyspace)
        backend.check()
        audit = backend.audit(older_than=CUTOFF)
        orphans = backend.sweep_orphans(grace=timedelta(0))
        _engine_writes_before_the_first_delete(monkeypatch, server, keyspace)
        stopped = backend.delete_old_runs(CUTOFF, on_batch=_stop_at(2))  # leaves its markers
        # finishes them, drops them; past OWN_IDS its checkpoint pass reads the markers (markers_in)
        monkeypatch.setattr(purge_module, "OWN_IDS", 0)
        archive = open_archive(f"file://{tmp_path}")
        report = backend.delete_old_runs(CUTOFF, archive=archive)
        assert orphans.total == len(ORPHAN_ROWS), dict(orphans.counts)
        assert {s.table for s in SOURCES} == {table for table, _, _ in ORPHAN_ROWS}
        assert stopped.stopped and stopped.runs > 0 and stopped.changed == 1
        assert audit.purge is not None and stopped.runs + report.runs == audit.purge.runs - 1
        assert report.counts["schedules"] == 1 and report.counts["signals"] == 1
        back = server.session.execute(f"SELECT status FROM {keyspace}.schedules WHERE schedule_id = 'sched_back'").one()
        assert back is not None and back.status == "active", "a schedule written before its delete was put back"
        restored = backend.restore(archive)
        assert restored.written and not restored.refused, restored.to_dict()
        # the restored runs again, in 2 shards (each scans its token range of checkpoints), then the final
        # pass, which scans the whole table after every commit
        parts = [backend.delete_old_runs(CUTOFF, shard=shard) for shard in backend.shards(2)]
        final = backend.delete_old_runs(CUTOFF)
        assert sum(p.runs for p in parts) + final.runs == len(restored.written) > 0
        executed = set(backend.statements)
        missing = sorted(set(STATEMENTS) - executed)
        assert not missing, f"statements never executed by the server: {missing}"
        assert {f"ddl:{t}" for t in TABLES} | {"ddl:keyspace"} <= executed
    finally:
        backend.close()
        loop.run_until_complete(pw.disconnect())
        loop.close()
        server.session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)
