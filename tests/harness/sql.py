"""What the SQLite, PostgreSQL and MySQL harnesses share: raw inventory, orphans, backend bookkeeping.

Each SQL harness provides ``raw_engine()``, a plain SQLAlchemy engine on its
isolated store that enforces no foreign keys (SQLite's default; PostgreSQL
``session_replication_role = replica``; MySQL ``FOREIGN_KEY_CHECKS = 0``),
used to read every row and to write what the engine never would (orphans,
a corrupt timestamp).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import Engine, insert, inspect, text

from tests.harness.base import Harness, Item, derived, digest
from workflow_retention.backends.sql.backend import SQLBackend
from workflow_retention.report import Kind

#: table -> (inventory kind, key columns, column naming the run)
TABLES: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "workflow_runs": ("runs", ("run_id",), "run_id"),
    "events": ("events", ("event_id",), "run_id"),
    "steps": ("steps", ("step_id",), "run_id"),
    "hooks": ("hooks", ("run_id", "hook_id"), "run_id"),
    "cancellation_flags": ("cancellation_flags", ("run_id",), "run_id"),
    "checkpoints": ("checkpoints", ("step_run_id",), None),
    "schedules": ("schedules", ("schedule_id",), None),
    "streams": ("streams", ("stream_id",), None),
    "signals": ("signals", ("signal_id",), None),
    "stream_subscriptions": ("subscriptions", ("stream_id", "step_run_id"), None),
    "signal_acknowledgments": ("acknowledgments", ("signal_id", "step_run_id"), None),
    "scheduled_signals": ("scheduled_signals", ("id",), None),
}

SQL_ORPHAN_KINDS = frozenset({Kind.EVENTS, Kind.STEPS, Kind.HOOKS, Kind.CANCELLATION_FLAGS, Kind.CHECKPOINTS})


class SQLHarness(Harness):
    # Events, steps, hooks and flags are orphaned only where their run reference was not enforced
    # (SQLite without the pragma, restores with checks off); checkpoints have no reference at all.
    orphan_kinds: ClassVar[frozenset[str]] = SQL_ORPHAN_KINDS
    timestamped_orphan_kinds: ClassVar[frozenset[str]] = SQL_ORPHAN_KINDS

    def __init__(self) -> None:
        super().__init__()
        self._backends: list[SQLBackend] = []
        self._raw: Engine | None = None

    # -- what each SQL harness provides ---------------------------------------------

    def url(self) -> str:
        raise NotImplementedError

    def make_raw_engine(self) -> Engine:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------

    def retention(self, **options: Any) -> SQLBackend:
        from workflow_retention.backends import by_url

        backend = by_url(self.url(), **options)
        self._backends.append(backend)  # type: ignore[arg-type]
        return backend  # type: ignore[return-value]

    def raw(self) -> Engine:
        if self._raw is None:
            self._raw = self.make_raw_engine()
        return self._raw

    def close(self) -> None:
        super().close()
        for backend in self._backends:
            backend.close()
        if self._raw is not None:
            self._raw.dispose()

    def _raw_inventory(self) -> list[Item]:
        items: list[Item] = []
        with self.raw().connect() as conn:
            present = set(inspect(conn).get_table_names())
            for table, (kind, keys, owner) in TABLES.items():
                if table not in present:
                    continue
                for row in conn.execute(text(f"SELECT * FROM {table}")).mappings():
                    key = ":".join(str(row[k]) for k in keys)
                    run_id = row[owner] if owner else (derived(row["step_run_id"])
                                                       if table == "checkpoints" else None)
                    items.append(Item(kind, key, run_id, digest(dict(row))))
        return items

    async def synthesize_orphan(self, kind: str, run_id: str, written_at: datetime) -> None:
        backend = self.retention()
        ts = backend.db_time(written_at)
        rows = {
            Kind.EVENTS: ("events", {"event_id": f"evt_{run_id}", "run_id": run_id, "sequence": 0,
                                     "type": "workflow.started", "timestamp": ts, "data": "{}"}),
            Kind.STEPS: ("steps", {"step_id": f"step_{run_id}", "run_id": run_id, "step_name": "x",
                                   "status": "completed", "created_at": ts, "input_args": "[]",
                                   "input_kwargs": "{}"}),
            Kind.HOOKS: ("hooks", {"run_id": run_id, "hook_id": "hook_x_1", "token": f"{run_id}:hook_x_1",
                                   "created_at": ts, "status": "pending", "metadata": "{}"}),
            Kind.CANCELLATION_FLAGS: ("cancellation_flags", {"run_id": run_id, "created_at": ts}),
            Kind.CHECKPOINTS: ("checkpoints", {"step_run_id": f"{run_id}:step_x",
                                               "data": backend.dialect.json({"c": 1}),
                                               "created_at": ts, "updated_at": ts}),
        }
        if kind not in rows:
            raise NotImplementedError(kind)
        table, row = rows[kind]
        with self.raw().begin() as conn:
            conn.execute(insert(backend.table(table)), row)

    def corrupt_updated_at(self, run_id: str) -> None:
        with self.raw().begin() as conn:
            conn.execute(text("UPDATE workflow_runs SET updated_at = 'not-a-timestamp' WHERE run_id = :r"),
                         {"r": run_id})

    def set_status(self, run_id: str, status: str) -> None:
        with self.raw().begin() as conn:
            conn.execute(text("UPDATE workflow_runs SET status = :s WHERE run_id = :r"), {"s": status, "r": run_id})
