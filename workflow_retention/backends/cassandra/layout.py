"""The layout: pyworkflow-engine 0.4.0's tables, the purge's marker table, and every CQL statement by name.

Pure (no I/O). The backend executes statements only by name from
:data:`STATEMENTS` (or a DDL statement from :data:`TABLES` and
:data:`MARKER_TABLE_CQL`), so this module is the complete list a reviewer, or
the test that proves a real server accepts each of them, has to look at.
Rules every statement follows:

* it restricts the whole partition key (``=`` or ``IN`` on the partition key;
  on a composite partition key ``IN`` only on its last column), or it is a
  paged ``token()`` range scan (``WHERE token(pk) > ?`` bound to the
  partitioner's minimum token and paged by the driver);
* no ``ALLOW FILTERING``;
* the column ``token`` is always written quoted (a reserved word in 2.1);
* a ``TIMESTAMP`` column is read as milliseconds (:func:`ms`), never as a
  datetime: the driver cannot decode one outside Python's datetime range and
  drops the connection when it tries, so one raw value would stop every
  purge. Timestamps are bound back as integers (the driver's native form);
* a delete of the cascade carries ``USING TIMESTAMP`` of the write time it
  read, so it removes the version that was read and counted, and a row
  written again after the read survives;
* no lightweight transaction (``IF ...``): a Paxos ballot's timestamp can
  shadow an engine write still in flight (docs/backends/cassandra.md).
"""

from __future__ import annotations

import re
import uuid
from typing import Any, TypeAlias

from workflow_retention.report import Kind

#: A row as the driver returns it: a named tuple of the selected columns (cassandra-driver is untyped).
Row: TypeAlias = Any

SCHEDULE_STATUSES = ("active", "paused", "deleted")
#: The purge's own table (see :data:`MARKER_TABLE_CQL`); every other table is pyworkflow-engine's.
MARKER_TABLE = "retention_purge_markers"


def ms(column: str) -> str:
    """Select a ``TIMESTAMP`` column as milliseconds since the epoch (a bigint), under its own name."""
    return f"blobAsBigint(timestampAsBlob({column})) AS {column}"


RUN_COLUMNS = (f"run_id, status, {ms('updated_at')}, {ms('created_at')}, parent_run_id, workflow_name, "
               "idempotency_key")


class Source:
    """A table scanned row by row for orphans and the census.

    ``columns`` are selected (their sizes make the bytes estimate), ``key``
    is the full primary key, ``owner`` the column naming the run (None: the
    key is derived, ``<run_id>:<rest>``, as for step checkpoints),
    ``written`` the column whose ``WRITETIME`` dates the row (timestamp
    columns are read as milliseconds, :func:`ms`).
    """

    def __init__(self, table: str, kind: str, columns: str, key: str, owner: str | None, written: str,
                 partition_columns: int = 1) -> None:
        self.table, self.kind, self.owner, self.written = table, kind, owner, written
        self.columns = [c.strip() for c in columns.split(",")]
        self.key = [c.strip() for c in key.split(",")]
        self.partition = ", ".join(self.key[:partition_columns])

    @property
    def scan_name(self) -> str:
        return f"scan_{self.table}"

    @property
    def delete_name(self) -> str:
        return f"orphan_{self.table}"

    def scan_cql(self) -> str:
        stamped = timestamp_columns(self.table)
        columns = ", ".join(ms(c) if c in stamped else c for c in self.columns)
        return (f"SELECT {columns}, WRITETIME({self.written}) AS written FROM {self.table} "
                f"WHERE token({self.partition}) > ?")

    def delete_cql(self) -> str:
        """Deletes the row in the version read (``USING TIMESTAMP`` of ``written``): a row rewritten since
        survives, such as a lookup row another run took over (a lightweight transaction ``IF run_id = ?``
        would shadow that write if it were still in flight)."""
        where = " AND ".join(f"{c} = ?" for c in self.key)
        return f"DELETE FROM {self.table} USING TIMESTAMP ? WHERE {where}"


    def row_size(self, row: Row) -> int:
        """Estimated bytes of a row read by :meth:`scan_cql`: the sizes of its values (text as UTF-8)."""
        total = 0
        for column in self.columns:
            value = getattr(row, column.strip('"'))
            if isinstance(value, str):
                total += len(value.encode())
            elif isinstance(value, bytes):
                total += len(value)
            elif isinstance(value, uuid.UUID):
                total += 16
            elif value is not None:
                total += 8
        return total


def _sources() -> list[Source]:
    return [
        Source("events", Kind.EVENTS, "run_id, event_time, event_id, type, timestamp, data",
               "run_id, event_time", "run_id", "type"),
        Source("steps", Kind.STEPS, "run_id, step_id, step_name, status, created_at, updated_at, input_args, "
               "input_kwargs, result, error", "run_id, step_id", "run_id", "status"),
        Source("hooks", Kind.HOOKS, 'run_id, hook_id, "token", url, status, created_at, payload, name, metadata',
               "run_id, hook_id", "run_id", "status"),
        Source("cancellation_flags", Kind.CANCELLATION_FLAGS, "run_id, created_at", "run_id", "run_id",
               "created_at"),
        Source("checkpoints", Kind.CHECKPOINTS, "step_run_id, data, updated_at", "step_run_id", None, "data"),
        Source("runs_by_idempotency_key", Kind.IDEMPOTENCY_KEYS, "idempotency_key, run_id", "idempotency_key",
               "run_id", "run_id"),
        Source("hooks_by_token", Kind.HOOK_TOKENS, '"token", run_id, hook_id', '"token"', "run_id", "run_id"),
        Source("steps_by_id", Kind.INDEX_ENTRIES, "step_id, run_id", "step_id", "run_id", "run_id"),
        Source("hooks_by_id", Kind.INDEX_ENTRIES, "hook_id, run_id", "hook_id", "run_id", "run_id"),
        Source("runs_by_status", Kind.INDEX_ENTRIES, "status, date_bucket, created_at, run_id, workflow_name",
               "status, date_bucket, created_at, run_id", "run_id", "workflow_name", partition_columns=2),
        Source("runs_by_workflow", Kind.INDEX_ENTRIES, "workflow_name, date_bucket, created_at, run_id, status",
               "workflow_name, date_bucket, created_at, run_id", "run_id", "status", partition_columns=2),
        Source("runs_by_parent", Kind.INDEX_ENTRIES, "parent_run_id, created_at, run_id, status",
               "parent_run_id, created_at, run_id", "run_id", "status"),
    ]


SOURCES: list[Source] = _sources()

#: Tables counted by the census that name no run: (table, partition key columns, kind).
OTHER_TABLES = [("schedules", "schedule_id", "schedules"), ("streams", "stream_id", "streams"),
                ("signals", "stream_id, stream_run_id", "signals"),
                ("stream_subscriptions", "stream_id", "subscriptions"),
                ("signal_acknowledgments", "signal_id", "acknowledgments")]

STATEMENTS: dict[str, str] = {
    # -- the purge: discovery and planning ------------------------------------------------
    "scan_runs": f"SELECT {RUN_COLUMNS} FROM workflow_runs WHERE token(run_id) > ?",
    # one token range (a shard, or the whole ring), in token order; the token is the shard's cursor
    "scan_runs_range": f"SELECT {RUN_COLUMNS}, token(run_id) AS run_token FROM workflow_runs "
                       "WHERE token(run_id) > ? AND token(run_id) <= ?",
    "runs_in": f"SELECT {RUN_COLUMNS} FROM workflow_runs WHERE run_id IN ?",
    "children_in": "SELECT parent_run_id, run_id FROM runs_by_parent WHERE parent_run_id IN ?",
    # -- the purge: the commit (children first), after the run's marker is written: the record is
    # re-read whole with its write times, deleted USING TIMESTAMP of the newest one, and re-read;
    # a record written again in between is put back as it was read, beneath the newer write
    # ("records_in", "delete_run", "restore_run": built from the table below, see VERSIONED)
    # -- the cascade of a committed run: read (with write times) and count ---------------------
    "events_in": "SELECT run_id, WRITETIME(type) AS written FROM events WHERE run_id IN ?",
    "steps_in": "SELECT run_id, step_id, WRITETIME(status) AS written FROM steps WHERE run_id IN ?",
    "hooks_in": 'SELECT run_id, hook_id, "token", WRITETIME(status) AS written FROM hooks WHERE run_id IN ?',
    "flags_in": "SELECT run_id, WRITETIME(created_at) AS written FROM cancellation_flags WHERE run_id IN ?",
    "idempotency_in": "SELECT idempotency_key, run_id, WRITETIME(run_id) AS written FROM runs_by_idempotency_key "
                      "WHERE idempotency_key IN ?",
    "steps_by_id_in": "SELECT step_id, run_id, WRITETIME(run_id) AS written FROM steps_by_id WHERE step_id IN ?",
    "hooks_by_id_in": "SELECT hook_id, run_id, WRITETIME(run_id) AS written FROM hooks_by_id WHERE hook_id IN ?",
    "tokens_in": 'SELECT "token", run_id, WRITETIME(run_id) AS written FROM hooks_by_token WHERE "token" IN ?',
    "status_rows_in": f"SELECT status, date_bucket, {ms('created_at')}, run_id, WRITETIME(workflow_name) AS written "
                      "FROM runs_by_status WHERE status = ? AND date_bucket IN ? AND (created_at, run_id) IN ?",
    "workflow_rows_in": f"SELECT workflow_name, date_bucket, {ms('created_at')}, run_id, WRITETIME(status) AS written "
                        "FROM runs_by_workflow WHERE workflow_name = ? AND date_bucket IN ? "
                        "AND (created_at, run_id) IN ?",
    "parent_rows_in": f"SELECT parent_run_id, {ms('created_at')}, run_id, WRITETIME(status) AS written "
                      "FROM runs_by_parent WHERE parent_run_id IN ? AND (created_at, run_id) IN ?",
    # -- the cascade: lookup and listing rows first, then the run's partitions ---------------
    "delete_idempotency": "DELETE FROM runs_by_idempotency_key USING TIMESTAMP ? WHERE idempotency_key = ?",
    "delete_step_by_id": "DELETE FROM steps_by_id USING TIMESTAMP ? WHERE step_id = ?",
    "delete_hook_by_id": "DELETE FROM hooks_by_id USING TIMESTAMP ? WHERE hook_id = ?",
    "delete_token": 'DELETE FROM hooks_by_token USING TIMESTAMP ? WHERE "token" = ?',
    "delete_status_row": "DELETE FROM runs_by_status USING TIMESTAMP ? WHERE status = ? AND date_bucket = ? "
                         "AND created_at = ? AND run_id = ?",
    "delete_workflow_row": "DELETE FROM runs_by_workflow USING TIMESTAMP ? WHERE workflow_name = ? "
                           "AND date_bucket = ? AND created_at = ? AND run_id = ?",
    "delete_parent_row": "DELETE FROM runs_by_parent USING TIMESTAMP ? WHERE parent_run_id = ? AND created_at = ? "
                         "AND run_id = ?",
    "delete_events": "DELETE FROM events USING TIMESTAMP ? WHERE run_id = ?",
    "delete_steps": "DELETE FROM steps USING TIMESTAMP ? WHERE run_id = ?",
    "delete_hooks": "DELETE FROM hooks USING TIMESTAMP ? WHERE run_id = ?",
    "delete_flag": "DELETE FROM cancellation_flags USING TIMESTAMP ? WHERE run_id = ?",
    # -- the purge: step checkpoints (keyed <run_id>:<step_id>, found by a scan) ---------------
    "scan_checkpoint_keys": "SELECT step_run_id, WRITETIME(data) AS written FROM checkpoints "
                            "WHERE token(step_run_id) > ?",
    "delete_checkpoint": "DELETE FROM checkpoints USING TIMESTAMP ? WHERE step_run_id = ?",
    # a shard's part of the checkpoints table (its token range)
    "scan_checkpoint_range": "SELECT step_run_id, WRITETIME(data) AS written FROM checkpoints "
                             "WHERE token(step_run_id) > ? AND token(step_run_id) <= ?",
    # -- the purge markers (the purge's own table, MARKER_TABLE) -------------------------------
    "write_marker": f"INSERT INTO {MARKER_TABLE} (purge_id, shard, run_id, status, updated_at, created_at, "
                    "parent_run_id, workflow_name, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "scan_markers": f"SELECT purge_id, shard, run_id, status, updated_at, created_at, parent_run_id, "
                    f"workflow_name, idempotency_key FROM {MARKER_TABLE} WHERE token(purge_id, shard) > ?",
    "markers_in": f"SELECT run_id FROM {MARKER_TABLE} WHERE purge_id = ? AND shard = ? AND run_id IN ?",
    "drop_markers": f"DELETE FROM {MARKER_TABLE} WHERE purge_id = ? AND shard = ?",
    # a shard's segment records (a reserved partition, markers.py)
    "marker_partitions": f"SELECT DISTINCT purge_id, shard FROM {MARKER_TABLE} WHERE token(purge_id, shard) > ?",
    "marker_rows": f"SELECT run_id, status, workflow_name FROM {MARKER_TABLE} WHERE purge_id = ? AND shard = ?",
    "drop_marker_row": f"DELETE FROM {MARKER_TABLE} WHERE purge_id = ? AND shard = ? AND run_id = ?",
    # -- the purge: soft-deleted schedules (committed like runs: "schedule_records_in", "delete_schedule",
    # "restore_schedule"), then their listing rows, read with their write times -----------------------
    "schedules_by_status": "SELECT schedule_id, workflow_name FROM schedules_by_status WHERE status = ?",
    "due_rows_in": f"SELECT hour_bucket, {ms('next_run_time')}, schedule_id, WRITETIME(status) AS written "
                   "FROM due_schedules WHERE hour_bucket IN ? AND next_run_time = ? AND schedule_id = ?",
    "schedule_by_workflow_in": "SELECT workflow_name, schedule_id, WRITETIME(status) AS written "
                               "FROM schedules_by_workflow WHERE workflow_name = ? AND schedule_id = ?",
    "schedule_status_rows_in": "SELECT status, schedule_id, WRITETIME(workflow_name) AS written "
                               "FROM schedules_by_status WHERE status IN ? AND schedule_id = ?",
    "delete_due_row": "DELETE FROM due_schedules USING TIMESTAMP ? WHERE hour_bucket = ? AND next_run_time = ? "
                      "AND schedule_id = ?",
    "delete_schedule_by_workflow": "DELETE FROM schedules_by_workflow USING TIMESTAMP ? WHERE workflow_name = ? "
                                   "AND schedule_id = ?",
    "delete_schedule_status_row": "DELETE FROM schedules_by_status USING TIMESTAMP ? WHERE status = ? "
                                  "AND schedule_id = ?",
    # -- the purge: aged stream data ----------------------------------------------------------
    "scan_signals": f"SELECT stream_id, stream_run_id, sequence, signal_id, {ms('published_at')} FROM signals "
                    "WHERE token(stream_id, stream_run_id) > ?",
    "acks_in": "SELECT signal_id FROM signal_acknowledgments WHERE signal_id IN ?",
    "delete_acks_in": "DELETE FROM signal_acknowledgments WHERE signal_id IN ?",
    "delete_signal": "DELETE FROM signals WHERE stream_id = ? AND stream_run_id = ? AND sequence = ?",
    "scan_subscriptions": f"SELECT stream_id, step_run_id, status, {ms('created_at')}, WRITETIME(status) AS written "
                          "FROM stream_subscriptions WHERE token(stream_id) > ?",
    "delete_subscription": "DELETE FROM stream_subscriptions USING TIMESTAMP ? WHERE stream_id = ? AND step_run_id = ?",
    # -- seeding (pyworkflow-engine 0.4.0's writes) ------------------------------------------------
    "insert_run": "INSERT INTO workflow_runs (run_id, workflow_name, status, created_at, updated_at, started_at, "
                  "completed_at, input_args, input_kwargs, result, error, idempotency_key, max_duration, context, "
                  "recovery_attempts, max_recovery_attempts, recover_on_worker_loss, parent_run_id, nesting_depth, "
                  "continued_from_run_id, continued_to_run_id) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "insert_idempotency": "INSERT INTO runs_by_idempotency_key (idempotency_key, run_id) VALUES (?, ?)",
    "insert_status_row": "INSERT INTO runs_by_status (status, date_bucket, created_at, run_id, workflow_name) "
                         "VALUES (?, ?, ?, ?, ?)",
    "insert_workflow_row": "INSERT INTO runs_by_workflow (workflow_name, date_bucket, created_at, run_id, status) "
                           "VALUES (?, ?, ?, ?, ?)",
    "insert_parent_row": "INSERT INTO runs_by_parent (parent_run_id, created_at, run_id, status) "
                         "VALUES (?, ?, ?, ?)",
    "insert_event": "INSERT INTO events (run_id, event_time, event_id, type, timestamp, data) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
    "insert_step": "INSERT INTO steps (run_id, step_id, step_name, status, created_at, updated_at, started_at, "
                   "completed_at, input_args, input_kwargs, result, error, attempt, max_retries, retry_after, "
                   "retry_delay) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "insert_step_by_id": "INSERT INTO steps_by_id (step_id, run_id) VALUES (?, ?)",
    "insert_hook": 'INSERT INTO hooks (run_id, hook_id, "token", url, status, created_at, received_at, expires_at, '
                   "payload, name, payload_schema, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "insert_hook_by_id": "INSERT INTO hooks_by_id (hook_id, run_id) VALUES (?, ?)",
    "insert_hook_by_token": 'INSERT INTO hooks_by_token ("token", run_id, hook_id) VALUES (?, ?, ?)',
    "insert_checkpoint": "INSERT INTO checkpoints (step_run_id, data, created_at, updated_at) VALUES (?, ?, ?, ?)",
    "insert_flag": "INSERT INTO cancellation_flags (run_id, created_at) VALUES (?, ?)",
    # -- check ---------------------------------------------------------------------------------
    "release_version": "SELECT release_version FROM system.local",
}

#: pyworkflow-engine 0.4.0's tables (storage/cassandra.py), "token" quoted; created by ``seed`` if missing.
TABLES: dict[str, str] = {
    "workflow_runs": "run_id TEXT PRIMARY KEY, workflow_name TEXT, status TEXT, created_at TIMESTAMP, "
                     "updated_at TIMESTAMP, started_at TIMESTAMP, completed_at TIMESTAMP, input_args TEXT, "
                     "input_kwargs TEXT, result TEXT, error TEXT, idempotency_key TEXT, max_duration TEXT, "
                     "context TEXT, recovery_attempts INT, max_recovery_attempts INT, recover_on_worker_loss BOOLEAN, "
                     "parent_run_id TEXT, nesting_depth INT, continued_from_run_id TEXT, continued_to_run_id TEXT",
    "runs_by_idempotency_key": "idempotency_key TEXT PRIMARY KEY, run_id TEXT",
    "events": "run_id TEXT, event_time TIMEUUID, event_id TEXT, type TEXT, timestamp TIMESTAMP, data TEXT, "
              "PRIMARY KEY (run_id, event_time)) WITH CLUSTERING ORDER BY (event_time ASC",
    "steps": "run_id TEXT, step_id TEXT, step_name TEXT, status TEXT, created_at TIMESTAMP, updated_at TIMESTAMP, "
             "started_at TIMESTAMP, completed_at TIMESTAMP, input_args TEXT, input_kwargs TEXT, result TEXT, "
             "error TEXT, attempt INT, max_retries INT, retry_after TIMESTAMP, retry_delay TEXT, "
             "PRIMARY KEY (run_id, step_id)",
    "steps_by_id": "step_id TEXT PRIMARY KEY, run_id TEXT",
    "hooks": 'run_id TEXT, hook_id TEXT, "token" TEXT, url TEXT, status TEXT, created_at TIMESTAMP, '
             "received_at TIMESTAMP, expires_at TIMESTAMP, payload TEXT, name TEXT, payload_schema TEXT, "
             "metadata TEXT, PRIMARY KEY (run_id, hook_id)",
    "hooks_by_id": "hook_id TEXT PRIMARY KEY, run_id TEXT",
    "hooks_by_token": '"token" TEXT PRIMARY KEY, run_id TEXT, hook_id TEXT',
    "cancellation_flags": "run_id TEXT PRIMARY KEY, created_at TIMESTAMP",
    "checkpoints": "step_run_id TEXT PRIMARY KEY, data TEXT, created_at TIMESTAMP, updated_at TIMESTAMP",
    "streams": "stream_id TEXT PRIMARY KEY, status TEXT, created_at TIMESTAMP, metadata TEXT",
    "signals": "stream_run_id TEXT, sequence INT, signal_id TEXT, stream_id TEXT, signal_type TEXT, payload TEXT, "
               "published_at TIMESTAMP, source_run_id TEXT, metadata TEXT, "
               "PRIMARY KEY ((stream_id, stream_run_id), sequence)) WITH CLUSTERING ORDER BY (sequence ASC",
    "stream_subscriptions": "stream_id TEXT, step_run_id TEXT, signal_types TEXT, status TEXT, "
                            "created_at TIMESTAMP, PRIMARY KEY (stream_id, step_run_id)",
    "signal_acknowledgments": "signal_id TEXT, step_run_id TEXT, acknowledged_at TIMESTAMP, "
                              "PRIMARY KEY (signal_id, step_run_id)",
    "schedules": "schedule_id TEXT PRIMARY KEY, workflow_name TEXT, spec TEXT, spec_type TEXT, timezone TEXT, "
                 "args TEXT, kwargs TEXT, status TEXT, overlap_policy TEXT, created_at TIMESTAMP, "
                 "updated_at TIMESTAMP, last_run_at TIMESTAMP, next_run_time TIMESTAMP, last_run_id TEXT, "
                 "running_run_ids TEXT, buffered_count INT",
    "schedules_by_workflow": "workflow_name TEXT, schedule_id TEXT, status TEXT, "
                             "PRIMARY KEY (workflow_name, schedule_id)",
    "schedules_by_status": "status TEXT, schedule_id TEXT, workflow_name TEXT, PRIMARY KEY (status, schedule_id)",
    "due_schedules": "hour_bucket TEXT, next_run_time TIMESTAMP, schedule_id TEXT, status TEXT, "
                     "PRIMARY KEY (hour_bucket, next_run_time, schedule_id)) "
                     "WITH CLUSTERING ORDER BY (next_run_time ASC, schedule_id ASC",
    "runs_by_status": "status TEXT, date_bucket TEXT, created_at TIMESTAMP, run_id TEXT, workflow_name TEXT, "
                      "PRIMARY KEY ((status, date_bucket), created_at, run_id)) "
                      "WITH CLUSTERING ORDER BY (created_at DESC, run_id DESC",
    "runs_by_workflow": "workflow_name TEXT, date_bucket TEXT, created_at TIMESTAMP, run_id TEXT, status TEXT, "
                        "PRIMARY KEY ((workflow_name, date_bucket), created_at, run_id)) "
                        "WITH CLUSTERING ORDER BY (created_at DESC, run_id DESC",
    "runs_by_parent": "parent_run_id TEXT, created_at TIMESTAMP, run_id TEXT, status TEXT, "
                      "PRIMARY KEY (parent_run_id, created_at, run_id)",
}


#: The purge markers: one row per run a purge is about to commit, written before its commit and read by the
#: next purge (docs/backends/cassandra.md, "Purge markers"). Timestamps are kept as milliseconds.
MARKER_TABLE_CQL = (f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (purge_id TEXT, shard INT, run_id TEXT, status TEXT, "
                    "updated_at BIGINT, created_at BIGINT, parent_run_id TEXT, workflow_name TEXT, "
                    "idempotency_key TEXT, PRIMARY KEY ((purge_id, shard), run_id))")
#: Statements on the marker table: they can be prepared only once a purge has created it.
MARKER_STATEMENTS = frozenset(n for n, q in STATEMENTS.items() if MARKER_TABLE in q)

_TIMESTAMP = re.compile(r'("?\w+"?) TIMESTAMP')


def timestamp_columns(table: str) -> set[str]:
    """The ``TIMESTAMP`` columns of one of pyworkflow's tables."""
    return set(_TIMESTAMP.findall(TABLES[table]))


def create_table(name: str) -> str:
    return f"CREATE TABLE IF NOT EXISTS {name} ({TABLES[name]})"


def columns_of(table: str) -> list[str]:
    """A table's columns in declaration order (the partition key first for the tables below)."""
    return [c.split()[0] for c in TABLES[table].split(", ") if not c.startswith("PRIMARY KEY")]


#: Tables whose records the purge deletes version-checked (:mod:`.versioned`): read, delete, restore.
VERSIONED = {"workflow_runs": ("records_in", "delete_run", "restore_run"),
             "schedules": ("schedule_records_in", "delete_schedule", "restore_schedule")}
for _table, (_read, _delete, _restore) in VERSIONED.items():
    _columns, _stamped = columns_of(_table), timestamp_columns(_table)
    _selected = [ms(c) if c in _stamped else c for c in _columns] + [f"WRITETIME({c}) AS w_{c}" for c in _columns[1:]]
    STATEMENTS[_read] = f"SELECT {', '.join(_selected)} FROM {_table} WHERE {_columns[0]} IN ?"
    STATEMENTS[_delete] = f"DELETE FROM {_table} USING TIMESTAMP ? WHERE {_columns[0]} = ?"
    STATEMENTS[_restore] = (f"INSERT INTO {_table} ({', '.join(_columns)}) VALUES ({', '.join('?' * len(_columns))}) "
                            "USING TIMESTAMP ?")
#: workflow_runs' columns, run_id first.
RECORD_COLUMNS = columns_of("workflow_runs")
SCHEDULE_COLUMNS = columns_of("schedules")

for _source in SOURCES:
    STATEMENTS[_source.scan_name] = _source.scan_cql()
    STATEMENTS[_source.delete_name] = _source.delete_cql()
for _table, _pk, _kind in OTHER_TABLES:
    STATEMENTS[f"count_{_table}"] = f"SELECT {_pk} FROM {_table} WHERE token({_pk}) > ?"

#: Statements that write (executed at the write consistency; the others at the read consistency).
WRITES = frozenset(n for n, q in STATEMENTS.items() if q.startswith(("INSERT", "DELETE", "UPDATE")))

