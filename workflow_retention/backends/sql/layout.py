"""The SQL store's layout: pyworkflow-engine 0.4.0's tables as SQLAlchemy Core, one builder for every dialect.

The tables, columns, defaults, keys and index names are those the engine's
``storage/sqlite.py``, ``postgres.py`` and ``mysql.py`` create (PostgreSQL: as
after its migrations v2 and v5, which add ``idx_events_run_id_step_id_type``
and ``idx_subscriptions_stream_run``). ``create_all`` on a fresh database
therefore produces a store the engine reads and writes as its own. Only the
column types differ per dialect; :class:`Types` holds them. Also here: which
tables a purge and a census read, and our own markers table
(docs/backends/sql.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)
from sqlalchemy.types import TypeEngine, UserDefinedType

from workflow_retention.report import Kind

#: Table options pyworkflow uses on MySQL (ignored by the other dialects).
MYSQL_OPTIONS: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4",
                                 "mysql_collate": "utf8mb4_unicode_ci"}

#: The migration versions pyworkflow-engine 0.4.0 records on a fresh store.
SCHEMA_VERSIONS = {
    1: "Baseline: original schema",
    2: "Add step_id column to events table for optimized has_event() queries",
    3: "Restructure signals table: PK (stream_id, stream_run_id, sequence), drop and recreate",
    4: "Drop FK constraints referencing streams table — streams are code-defined",
    5: "Add stream_run_id to stream_subscriptions (+index) and create scheduled_signals table for "
       "time-delayed signal delivery",
    6: "Add parent_run_id + parent_hook_token to stream_subscriptions for hook-based parent workflow resumption",
    7: "Add result column to stream_subscriptions for step output payloads",
}


class IsoText(UserDefinedType):
    """SQLite's ``TIMESTAMP`` columns as pyworkflow uses them: ISO-8601 text, passed through unparsed."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "TIMESTAMP"


@dataclass(frozen=True)
class Types:
    """Column types of one dialect (``json`` is the type of pyworkflow's JSONB columns on PostgreSQL)."""

    id: TypeEngine
    name: TypeEngine
    status: TypeEngine
    short: TypeEngine  # events.type, schedules.timezone
    long: TypeEngine
    json: TypeEngine
    ts: TypeEngine
    flag: TypeEngine  # recover_on_worker_loss
    long_default: str  # how a default on a long text column is written
    now_default: bool  # pyworkflow declares DEFAULT NOW() on some timestamp columns (PostgreSQL)
    streams_v5: bool  # PostgreSQL: stream_subscriptions' v5-v7 columns and scheduled_signals
    loose_pk: bool = False  # SQLite: pyworkflow's single-column primary keys are not declared NOT NULL


def _d(types: Types, value: str) -> Any:
    return text(types.long_default.format(value))


def _pk(t: Types, name: str, type_: TypeEngine, *args: Any) -> Column:
    return Column(name, type_, *args, primary_key=True, nullable=t.loose_pk, autoincrement=False)


def _execution_columns(t: Types) -> list[Column]:
    """The column run that ``workflow_runs`` and ``steps`` share, in pyworkflow's order (new objects per call)."""
    return [
        Column("started_at", t.ts),
        Column("completed_at", t.ts),
        Column("input_args", t.long, nullable=False, server_default=_d(t, "[]")),
        Column("input_kwargs", t.long, nullable=False, server_default=_d(t, "{}")),
        Column("result", t.long),
        Column("error", t.long),
    ]


def build_metadata(t: Types) -> MetaData:
    md = MetaData()
    now: dict[str, Any] = {"server_default": text("NOW()")} if t.now_default else {}
    runs = Table(
        "workflow_runs", md,
        _pk(t, "run_id", t.id),
        Column("workflow_name", t.name, nullable=False),
        Column("status", t.status, nullable=False),
        Column("created_at", t.ts, nullable=False),
        Column("updated_at", t.ts, nullable=False),
        *_execution_columns(t),
        Column("idempotency_key", t.name),
        Column("max_duration", t.name),
        Column("metadata", t.long, server_default=_d(t, "{}")),
        Column("recovery_attempts", Integer, server_default=text("0")),
        Column("max_recovery_attempts", Integer, server_default=text("3")),
        Column("recover_on_worker_loss", t.flag, server_default=text("1" if isinstance(t.flag, Integer) else "TRUE")),
        Column("parent_run_id", t.id, ForeignKey("workflow_runs.run_id")),
        Column("nesting_depth", Integer, server_default=text("0")),
        Column("continued_from_run_id", t.id),
        Column("continued_to_run_id", t.id),
        **MYSQL_OPTIONS,
    )
    c = runs.c
    Index("idx_runs_status", c.status)
    Index("idx_runs_workflow_name", c.workflow_name)
    Index("idx_runs_created_at", c.created_at.desc())
    Index("idx_runs_created_at_run_id", c.created_at.desc(), c.run_id.desc())
    Index("idx_runs_idempotency_key", c.idempotency_key, unique=True,
          sqlite_where=c.idempotency_key.isnot(None), postgresql_where=c.idempotency_key.isnot(None))
    Index("idx_runs_parent_run_id", c.parent_run_id)

    def run_fk() -> ForeignKey:
        return ForeignKey("workflow_runs.run_id", ondelete="CASCADE")

    events = Table(
        "events", md,
        _pk(t, "event_id", t.id),
        Column("run_id", t.id, run_fk(), nullable=False),
        Column("sequence", Integer, nullable=False),
        Column("type", t.short, nullable=False),
        Column("timestamp", t.ts, nullable=False),
        Column("data", t.long, nullable=False, server_default=_d(t, "{}")),
        Column("step_id", t.id),
        **MYSQL_OPTIONS,
    )
    Index("idx_events_run_id_sequence", events.c.run_id, events.c.sequence)
    Index("idx_events_run_id_type", events.c.run_id, events.c.type)
    Index("idx_events_run_id_step_id_type", events.c.run_id, events.c.step_id, events.c.type)

    steps = Table(
        "steps", md,
        _pk(t, "step_id", t.id),
        Column("run_id", t.id, run_fk(), nullable=False),
        Column("step_name", t.name, nullable=False),
        Column("status", t.status, nullable=False),
        Column("created_at", t.ts, nullable=False),
        *_execution_columns(t),
        Column("retry_count", Integer, server_default=text("0")),
        **MYSQL_OPTIONS,
    )
    Index("idx_steps_run_id", steps.c.run_id)

    hooks = Table(
        "hooks", md,
        Column("run_id", t.id, run_fk(), nullable=False),
        Column("hook_id", t.id, nullable=False),
        Column("token", t.id, nullable=False, unique=True),
        Column("created_at", t.ts, nullable=False),
        Column("received_at", t.ts),
        Column("expires_at", t.ts),
        Column("status", t.status, nullable=False),
        Column("payload", t.long),
        Column("metadata", t.long, server_default=_d(t, "{}")),
        PrimaryKeyConstraint("run_id", "hook_id"),
        **MYSQL_OPTIONS,
    )
    Index("idx_hooks_token", hooks.c.token, unique=True)
    Index("idx_hooks_run_id", hooks.c.run_id)
    Index("idx_hooks_status", hooks.c.status)

    schedules = Table(
        "schedules", md,
        _pk(t, "schedule_id", t.id),
        Column("workflow_name", t.name, nullable=False),
        Column("spec", t.long, nullable=False),
        Column("spec_type", t.status, nullable=False),
        Column("timezone", t.short),
        Column("input_args", t.long, nullable=False, server_default=_d(t, "[]")),
        Column("input_kwargs", t.long, nullable=False, server_default=_d(t, "{}")),
        Column("status", t.status, nullable=False),
        Column("overlap_policy", t.status, nullable=False),
        Column("next_run_time", t.ts),
        Column("last_run_time", t.ts),
        Column("running_run_ids", t.long, server_default=_d(t, "[]")),
        Column("metadata", t.long, server_default=_d(t, "{}")),
        Column("created_at", t.ts, nullable=False),
        Column("updated_at", t.ts, nullable=False),
        Column("paused_at", t.ts),
        Column("deleted_at", t.ts),
        **MYSQL_OPTIONS,
    )
    Index("idx_schedules_status", schedules.c.status)
    Index("idx_schedules_next_run_time", schedules.c.next_run_time)
    Index("idx_schedules_workflow_name", schedules.c.workflow_name)

    Table("cancellation_flags", md,
          _pk(t, "run_id", t.id, run_fk()),
          Column("created_at", t.ts, nullable=False),
          **MYSQL_OPTIONS)
    Table("checkpoints", md,
          _pk(t, "step_run_id", t.id),
          Column("data", t.json, nullable=False),
          Column("created_at", t.ts, nullable=False, **now),
          Column("updated_at", t.ts, nullable=False, **now),
          **MYSQL_OPTIONS)
    Table("streams", md,
          _pk(t, "stream_id", t.id),
          Column("status", t.status, nullable=False, server_default=text("'active'")),
          Column("created_at", t.ts, nullable=False, **now),
          Column("metadata", t.json, server_default=_d(t, "{}")),
          **MYSQL_OPTIONS)
    _stream_tables(md, t, now)
    Table("schema_versions", md,
          _pk(t, "version", Integer()),
          Column("applied_at", t.ts, nullable=False),
          Column("description", Text),
          **MYSQL_OPTIONS)
    return md


def _stream_tables(md: MetaData, t: Types, now: dict[str, Any]) -> None:
    signals = Table(
        "signals", md,
        Column("stream_run_id", t.id, nullable=False),
        Column("sequence", Integer, nullable=False, autoincrement=False),
        Column("signal_id", t.id, nullable=False),
        Column("stream_id", t.id, nullable=False),
        Column("signal_type", t.id, nullable=False),
        Column("payload", t.json, nullable=False, server_default=_d(t, "{}")),
        Column("published_at", t.ts, nullable=False, **now),
        Column("source_run_id", t.id),
        Column("metadata", t.json, server_default=_d(t, "{}")),
        PrimaryKeyConstraint("stream_id", "stream_run_id", "sequence"),
        **MYSQL_OPTIONS,
    )
    Index("idx_signals_signal_id", signals.c.signal_id, unique=True)
    v5 = [Column("stream_run_id", t.id), Column("parent_run_id", t.id), Column("parent_hook_token", t.id),
          Column("result", t.json)] if t.streams_v5 else []
    subs = Table(
        "stream_subscriptions", md,
        Column("stream_id", t.id, nullable=False),
        Column("step_run_id", t.id, nullable=False),
        Column("signal_types", t.json, nullable=False, server_default=_d(t, "[]")),
        Column("status", t.status, nullable=False, server_default=text("'waiting'")),
        *v5,
        Column("created_at", t.ts, nullable=False, **now),
        PrimaryKeyConstraint("stream_id", "step_run_id"),
        **MYSQL_OPTIONS,
    )
    Index("idx_subscriptions_status", subs.c.stream_id, subs.c.status)
    Table("signal_acknowledgments", md,
          Column("signal_id", t.id, nullable=False),
          Column("step_run_id", t.id, nullable=False),
          Column("acknowledged_at", t.ts, nullable=False, **now),
          PrimaryKeyConstraint("signal_id", "step_run_id"),
          **MYSQL_OPTIONS)
    if t.streams_v5:
        Index("idx_subscriptions_stream_run", subs.c.stream_id, subs.c.stream_run_id)
        scheduled = Table(
            "scheduled_signals", md,
            _pk(t, "id", t.id),
            Column("stream_id", t.id, nullable=False),
            Column("signal_type", t.id, nullable=False),
            Column("payload", t.json, nullable=False, server_default=_d(t, "{}")),
            Column("due_at", t.ts, nullable=False),
            Column("stream_run_id", t.id),
            Column("metadata", t.json, server_default=_d(t, "{}")),
            Column("delivered", Boolean, nullable=False, server_default=text("FALSE")),
            Column("created_at", t.ts, nullable=False, **now),
        )
        Index("idx_scheduled_signals_due", scheduled.c.delivered, scheduled.c.due_at)


# -- stores created by older pyworkflow-engine releases ---------------------------------------

#: Tables every pyworkflow-engine release creates (0.1.7 on): without them the store is not one.
REQUIRED_TABLES = ("workflow_runs", "events", "steps", "hooks", "cancellation_flags")
#: Tables that later releases added, with the first release that creates them. A store created by
#: an older release (and still served by it) lacks them: there is nothing of that kind to delete.
OPTIONAL_TABLES = {"checkpoints": "0.2.0", "schedules": "0.1.7", "streams": "0.2.5", "signals": "0.2.5",
                   "stream_subscriptions": "0.2.5", "signal_acknowledgments": "0.2.5",
                   "scheduled_signals": "0.2.7", "schema_versions": "0.1.37"}


@dataclass(frozen=True)
class IndexNeed:
    """An index the purge relies on: one on ``table`` whose leading columns are ``columns``."""

    table: str
    columns: tuple[str, ...]
    create: str  # the statement that adds it, as pyworkflow-engine 0.4.0 names it
    without: str  # what the purge does when it is missing
    refuse: bool  # True: the purge refuses (it would be quadratic); False: it stays linear another way


INDEX_NEEDS = (
    IndexNeed("workflow_runs", ("created_at", "run_id"),
              "CREATE INDEX idx_runs_created_at_run_id ON workflow_runs (created_at DESC, run_id DESC)",
              "candidates are found by one scan of the whole table in run_id order instead "
              "(stores created before pyworkflow-engine 0.3.4; on MySQL the engine never adds it)", False),
    IndexNeed("workflow_runs", ("parent_run_id",),
              "CREATE INDEX idx_runs_parent_run_id ON workflow_runs (parent_run_id)",
              "every batch would scan the whole table for child runs", True),
    IndexNeed("events", ("run_id",), "CREATE INDEX idx_events_run_id_sequence ON events (run_id, sequence)",
              "every batch would scan the whole table for its events", True),
    IndexNeed("steps", ("run_id",), "CREATE INDEX idx_steps_run_id ON steps (run_id)",
              "every batch would scan the whole table for its steps", True),
    IndexNeed("hooks", ("run_id",), "CREATE INDEX idx_hooks_run_id ON hooks (run_id)",
              "every batch would scan the whole table for its hooks", True),
    IndexNeed("cancellation_flags", ("run_id",), "CREATE UNIQUE INDEX idx_cancellation_flags_run_id ON "
              "cancellation_flags (run_id)", "every batch would scan the whole table for its flags", True),
)


@dataclass(frozen=True)
class Layout:
    """What a store actually has, next to pyworkflow-engine 0.4.0's schema."""

    tables: frozenset[str]
    missing_tables: tuple[str, ...]  # of OPTIONAL_TABLES (in this dialect's schema), not in the store
    missing_indexes: tuple[IndexNeed, ...]

    def table_note(self, name: str) -> str:
        return (f"table {name} does not exist (stores created by pyworkflow-engine before "
                f"{OPTIONAL_TABLES.get(name, '0.4.0')} lack it): nothing of it to delete")

    def index_note(self, need: IndexNeed) -> str:
        columns = ", ".join(need.columns)
        return f"no index on {need.table} ({columns}): {need.without}; add it with: {need.create}"


#: Our own table: the runs whose records a purge deleted before their child rows (docs/backends/sql.md).
MARKERS = "workflow_retention_purge_markers"

#: Tables a purge deletes from besides the runs' own (a missing one is reported).
PURGED_TABLES = ("checkpoints", "schedules", "signals", "stream_subscriptions", "signal_acknowledgments",
                 "scheduled_signals")

#: Child tables whose rows per run are counted before a batch is cut (a run has at most one flag).
COUNTED_CHILDREN = ("events", "steps", "hooks")

#: Child tables of a run, keyed by ``run_id``, in deletion order, with their report kind.
RUN_CHILDREN = (("events", Kind.EVENTS), ("steps", Kind.STEPS), ("hooks", Kind.HOOKS),
                ("cancellation_flags", Kind.CANCELLATION_FLAGS))

#: Report kind of each table the census counts (never :data:`MARKERS`: it is not pyworkflow data).
CENSUS_TABLES = (
    (Kind.RUNS, "workflow_runs"), (Kind.EVENTS, "events"), (Kind.STEPS, "steps"),
    (Kind.CHECKPOINTS, "checkpoints"), (Kind.HOOKS, "hooks"), (Kind.CANCELLATION_FLAGS, "cancellation_flags"),
    (Kind.SCHEDULES, "schedules"), (Kind.STREAMS, "streams"), (Kind.SIGNALS, "signals"),
    (Kind.SUBSCRIPTIONS, "stream_subscriptions"), (Kind.ACKNOWLEDGMENTS, "signal_acknowledgments"),
    (Kind.SCHEDULED_SIGNALS, "scheduled_signals"),
)


def build_markers(types: Types) -> Table:
    """:data:`MARKERS` in a dialect's types (not in :func:`build_metadata`: ``seed`` never creates it)."""
    return Table(MARKERS, MetaData(), Column("run_id", types.id, primary_key=True, autoincrement=False),
                 Column("purge_id", types.name, nullable=False), Column("created_at", types.ts, nullable=False),
                 **MYSQL_OPTIONS)
