"""PostgreSQL: pyworkflow-engine's PostgreSQL store through psycopg 3 (``postgresql://user:pw@host:port/db``)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Engine,
    Table,
    Text,
    TextClause,
    bindparam,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError

from workflow_retention import values
from workflow_retention.backends.sql.backend import TRANSACTION_S, SQLBackend, timeout, url_options
from workflow_retention.backends.sql.dialect import MAX_PARALLEL_BATCHES, Dialect
from workflow_retention.backends.sql.layout import Types
from workflow_retention.base import Capability
from workflow_retention.exceptions import BackendUnavailableError, ConfigurationError
from workflow_retention.urls import query_params, redact_url, server_and_database

log = logging.getLogger("workflow_retention.sql")

QUERY = {"schema", "sslmode", "sslrootcert", "connect_timeout", "application_name"}
RETRY_SQLSTATES = {"40P01", "40001"}
SSLMODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
CODEPOINT_COLLATIONS = {"C", "POSIX", "C.UTF-8", "C.utf8", "C.UTF8", "ucs_basic"}
#: Ids travel as one text parameter joined with this control character (never in a safe run id): psycopg
#: dumps a str in C, a list of them element by element in Python (issue 17: 1.6 s of client CPU at N = 100,000).
SEPARATOR = "\x1f"
#: The SQL of the id array bound as ``:{name}``: joined text, or (an id with the separator) a text[] parameter.
JOINED_IDS, ARRAY_IDS = "string_to_array(CAST(:{name} AS text), chr(31))", "CAST(:{name} AS text[])"


def joined(values: Sequence[str]) -> str | None:
    """``values`` as one separated text, or None if that would not split back into exactly them."""
    text_ = SEPARATOR.join(values)
    if not values or text_.count(SEPARATOR) != len(values) - 1 or "" in values or "\x00" in text_:
        return None
    return text_


def ids_param(name: str, values: Sequence[str]) -> tuple[str, Any]:
    """(SQL of a text[] of ``values`` bound as ``:{name}``, the parameter's value)."""
    text_ = joined(values)
    return (JOINED_IDS if text_ is not None else ARRAY_IDS).format(name=name), (
        text_ if text_ is not None else list(values))


def lateral_keys(ids_sql: str) -> str:
    """The step checkpoint keys in the ranges ``[<id>:, <id>;)`` of the ids of ``ids_sql``: one primary-key range
    scan per id."""
    return (f"SELECT c.step_run_id FROM unnest({ids_sql}) AS r(id), LATERAL "
            "(SELECT step_run_id FROM checkpoints c WHERE c.step_run_id >= r.id || ':' "
            "AND c.step_run_id < r.id || ';') c")
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_$]{0,62}$")


class Unloadable(datetime):
    """A timestamptz Python cannot hold (``infinity``, ``-infinity``, BC, year 10000 on).

    Its value is ``datetime.min`` or ``datetime.max``, which
    :func:`~workflow_retention.timeutil.parse_timestamp` refuses (so the record is reported,
    never deleted), and it is sent back to the server as the text it was read as (so a keyset
    cursor that ends on it resumes exactly there).
    """

    raw: bytes = b""


def register_unloadable_timestamps(conn: Any) -> None:
    """Make psycopg load every timestamptz, as :class:`Unloadable` when Python cannot hold it.

    psycopg raises DataError on ``infinity`` and out-of-range values, which would stop a purge
    or audit at the first such record (psycopg's documented remedy: a custom loader and dumper).
    """
    loader, dumper = _timestamp_adapters()
    conn.adapters.register_loader("timestamptz", loader)
    conn.adapters.register_dumper(Unloadable, dumper)


@lru_cache(maxsize=1)
def _timestamp_adapters() -> tuple[type, type]:
    import psycopg
    from psycopg.adapt import Dumper, Loader
    from psycopg.pq import Format

    oid = psycopg.adapters.types["timestamptz"].oid
    fast = psycopg.adapters.get_loader(oid, Format.TEXT)  # psycopg's own (C when psycopg[binary])

    class UnloadableLoader(Loader):
        def __init__(self, oid: int, context: Any = None) -> None:
            super().__init__(oid, context)
            self._load = fast(oid, context).load  # type: ignore[misc]

        def load(self, data: Any) -> datetime:
            try:
                return self._load(data)
            except (psycopg.DataError, ValueError, OverflowError):
                raw = bytes(data)
                edge = datetime.min if raw.startswith(b"-") or raw.endswith(b"BC") else datetime.max
                value = Unloadable(*edge.timetuple()[:6], edge.microsecond, tzinfo=UTC)
                value.raw = raw
                return value

    class UnloadableDumper(Dumper):
        oid = psycopg.adapters.types["timestamptz"].oid

        def dump(self, obj: Unloadable) -> bytes:
            return obj.raw

    return UnloadableLoader, UnloadableDumper


class PostgresDialect(Dialect):
    """PostgreSQL: typed timestamps, row locks, the cascade in one statement; checkpoint ranges need a
    code-point collation."""

    name = "postgres"
    types = Types(id=Text(), name=Text(), status=Text(), short=Text(), long=Text(), json=JSONB(),
                  ts=TIMESTAMP(timezone=True), flag=Boolean(), long_default="'{0}'", now_default=True,
                  streams_v5=True)
    id_chunk = checkpoint_chunk = 10_000  # ids travel as one array parameter
    one_statement_cascade = True
    #: One batch at a time unless asked: on the loaded test machine two at once made each transaction slower,
    #: so the time bound cut batches smaller (docs/backends/sql.md, "Parallel batches").
    default_parallel_batches = 1

    def __init__(self, sa_url: URL, schema: str | None, statement_timeout: float, lock_timeout: float,
                 url: str, parallel_batches: int = default_parallel_batches) -> None:
        super().__init__()
        self.parallel_batches = parallel_batches
        self.sa_url = sa_url
        self.schema = schema
        self.statement_timeout = statement_timeout
        self.lock_timeout = lock_timeout
        self.url = url  # redacted, for the collation warning
        self._engine: Engine | None = None
        self._codepoint: bool | None = None

    def create_engine(self) -> Engine:
        ms = {"statement_timeout": self.statement_timeout, "lock_timeout": self.lock_timeout,
              "idle_in_transaction_session_timeout": max(60.0, 2 * self.statement_timeout)}
        # jit=off: JIT compiling costs more than these short, index-driven statements take.
        settings = [f"-c {k}={int(v * 1000)}" for k, v in ms.items()] + ["-c jit=off"]
        if self.schema:
            settings.append(f"-c search_path={self.schema}")
        connect_args: dict[str, Any] = {"options": " ".join(settings)}
        if "connect_timeout" not in self.sa_url.query:
            connect_args["connect_timeout"] = 10
        engine = create_engine(self.sa_url, hide_parameters=True, pool_pre_ping=True,
                               isolation_level="READ COMMITTED", connect_args=connect_args)

        @event.listens_for(engine, "connect")
        def on_connect(dbapi_connection: Any, record: Any) -> None:
            register_unloadable_timestamps(dbapi_connection)

        self._engine = engine
        return engine

    def read_options(self) -> dict[str, Any]:
        return {"isolation_level": "AUTOCOMMIT"}  # each read is one statement: no BEGIN/COMMIT round trips

    def write_options(self) -> dict[str, Any]:
        return {"isolation_level": "READ COMMITTED"}

    def retryable(self, exc: DBAPIError) -> bool:
        return getattr(exc.orig, "sqlstate", None) in RETRY_SQLSTATES

    def pin_plans(self, conn: Connection) -> None:
        # Near 5,000 ids per batch the planner turned the child deletes into sequential scans of whole
        # tables (issue 17); a batch's cost must follow its rows, not the store's size.
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")

    def server_version(self, conn: Connection) -> str:
        return "PostgreSQL " + str(conn.exec_driver_sql("SHOW server_version").scalar_one())

    def catalog(self, conn: Connection) -> tuple[frozenset[str], dict[str, list[tuple[str, ...]]]]:
        # Two catalog queries (SQLAlchemy's inspector sends a dozen heavier ones, ~0.25 s cold).
        tables = frozenset(conn.exec_driver_sql(
            "SELECT c.relname FROM pg_class c WHERE c.relkind IN ('r', 'p') "
            "AND c.relnamespace = current_schema()::regnamespace").scalars())
        indexes: dict[str, list[tuple[str, ...]]] = {}
        for table, columns in conn.exec_driver_sql(
                "SELECT t.relname, array_agg(a.attname ORDER BY k.n) FROM pg_index i "
                "JOIN pg_class t ON t.oid = i.indrelid "
                "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n) "
                "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum "
                "WHERE t.relnamespace = current_schema()::regnamespace GROUP BY t.relname, i.indexrelid"):
            indexes.setdefault(table, []).append(tuple(columns))
        return tables, indexes

    def table_bytes(self, conn: Connection) -> dict[str, int]:
        rows = conn.exec_driver_sql(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace").all()
        return {name: int(size) for name, size in rows}

    def among(self, column: ColumnElement, values: Sequence[str]) -> ColumnElement:
        # One parameter, joined: the planner drives an index scan (or a hash) from the ids.
        # "= ANY(array)" would make it compare every scanned row with every id.
        text_ = joined(values)
        ids = (func.string_to_array(bindparam(None, text_, type_=Text), func.chr(31)) if text_ is not None
               else bindparam(None, list(values), type_=ARRAY(Text)))
        return column.in_(select(func.unnest(ids)))

    def id_array(self, name: str, values: Sequence[str]) -> tuple[str, Any]:
        ids_sql, value = ids_param(name, values)
        return f"(SELECT unnest({ids_sql}))", value

    def child_rows(self, conn: Connection, tables: Sequence[Table], run_ids: Sequence[str],
                   over: int) -> Iterable[tuple[str, int]]:
        # Four index-only counts per run (about half the server time of a grouped union).
        counts = " + ".join(f"(SELECT count(*) FROM {t.name} t WHERE t.run_id = r.id)" for t in tables)
        ids_sql, ids = ids_param("ids", run_ids)
        rows = conn.execute(text(f"SELECT id, n FROM (SELECT r.id, {counts} AS n FROM unnest({ids_sql}) "
                                 "AS r(id)) w WHERE n > :over"), {"ids": ids, "over": over})
        return [(row[0], int(row[1])) for row in rows]

    def checkpoint_match(self, run_ids: Sequence[str]) -> tuple[TextClause, dict[str, Any]]:
        if not self.checkpoint_ranges():
            return super().checkpoint_match(run_ids)
        # One primary-key range scan per run id, driven from the id array (one statement shape).
        ids_sql, ids = ids_param("cp_ids", run_ids)
        return text(f"step_run_id = ANY(ARRAY({lateral_keys(ids_sql)}))"), {"cp_ids": ids}

    def checkpoint_delete(self, run_ids: Sequence[str]) -> tuple[str, dict[str, Any]]:
        if not self.checkpoint_ranges():
            return super().checkpoint_delete(run_ids)
        # Joined to the ids, one primary-key range scan each deletes the rows it finds (half the time of
        # collecting the keys first and deleting them by key: issue 17). A key in two ranges goes once.
        ids_sql, ids = ids_param("cp_ids", run_ids)
        return (f"DELETE FROM checkpoints c USING unnest({ids_sql}) AS r(id) WHERE c.step_run_id >= r.id || ':' "
                "AND c.step_run_id < r.id || ';' RETURNING c.step_run_id"), {"cp_ids": ids}

    def checkpoint_keys(self, checkpoints: Table, run_ids: Sequence[str]) -> tuple[Any, dict[str, Any]]:
        if not self.checkpoint_ranges():
            return super().checkpoint_keys(checkpoints, run_ids)
        ids_sql, ids = ids_param("cp_ids", run_ids)
        return text(lateral_keys(ids_sql)), {"cp_ids": ids}  # one primary-key range scan per id

    def checkpoint_ranges(self) -> bool:
        if self._codepoint is None:
            self._codepoint = self.codepoint_collation()
            if not self._codepoint:
                log.warning("%s: checkpoints.step_run_id has a linguistic collation; step checkpoints are "
                            "matched with LIKE, which scans the table unless an index with text_pattern_ops "
                            "exists: CREATE INDEX ON checkpoints (step_run_id text_pattern_ops)", self.url)
        return self._codepoint

    def codepoint_collation(self) -> bool:
        """True when ``checkpoints.step_run_id`` sorts by code point (asked on a connection of its own)."""
        engine = self._engine if self._engine is not None else self.create_engine()
        with engine.connect() as conn:  # its own connection: asked in the middle of a batch
            row = conn.exec_driver_sql(
                "SELECT co.collname, co.collprovider, co.collcollate FROM pg_attribute a "
                "JOIN pg_collation co ON co.oid = a.attcollation "
                "WHERE a.attrelid = to_regclass('checkpoints') AND a.attname = 'step_run_id'").first()
            if row is None or row.collname == "default":
                db = conn.exec_driver_sql("SELECT * FROM pg_database WHERE datname = current_database()")
                info = db.mappings().one()
                provider, collate = info.get("datlocprovider", "c"), info["datcollate"]
            else:
                provider, collate = row.collprovider, row.collcollate
        return bool(provider == "b" or (provider == "c" and collate in CODEPOINT_COLLATIONS))

    def bulk_insert(self, conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
        columns = list(rows[0])
        sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
        driver: Any = conn.connection.driver_connection
        with driver.cursor() as cur, cur.copy(sql) as copy:
            for row in rows:
                copy.write_row([json.dumps(v) if isinstance(v, (dict, list)) else v for v in row.values()])


class PostgresBackend(SQLBackend):
    """pyworkflow-engine's PostgreSQL store: ``postgresql://user:password@host:5432/database``.

    URL query options: ``schema`` (a lower-case identifier, through ``search_path``), ``sslmode``
    (disable, allow, prefer, require, verify-ca, verify-full), ``sslrootcert``, ``connect_timeout``
    (whole seconds, default 10), ``application_name``, and ``transaction_s`` (below).

    Options (keyword arguments of the constructor, ``from_url`` or ``by_url``):

    * ``batch_size`` (default 500): runs per batch (larger batches were slower here at 100,000 runs:
      docs/benchmarks.md);
    * ``max_rows`` (default 40000): rows one write transaction deletes at most, whatever the runs hold
      (a single run over it is deleted in one transaction: docs/backends/sql.md); within it the budget
      follows time (``transaction_s``);
    * ``transaction_s`` (seconds, default 0.5; also ``?transaction_s=`` in the URL): how long a write
      transaction should take; the row budget follows it (longer: fewer commits, a faster purge, and the
      engine's writers of the same rows waiting that long);
    * ``statement_timeout`` (seconds, default 30) and ``lock_timeout`` (seconds, default 10): the server
      settings of every connection (``idle_in_transaction_session_timeout`` follows);
    * ``parallel_batches`` (default 1): write batches a purge runs at once, each on its own connection
      (1 to 16; 1 is one batch at a time): docs/backends/sql.md, "Parallel batches".

    Errors: :class:`~workflow_retention.exceptions.BackendUnavailableError` without psycopg (the
    ``postgres`` extra); :class:`~workflow_retention.exceptions.ConfigurationError` for a bad URL or
    option; :class:`~workflow_retention.exceptions.StorageError` (chained to the driver's) when the
    server cannot be reached, the schema is not a PyWorkflow store, or a statement fails; deadlocks and
    serialization failures are retried.
    """

    name = "postgresql"
    capabilities = SQLBackend.capabilities | {Capability.SCHEDULED_SIGNALS}

    def __init__(self, *, host: str = "localhost", port: int = 5432, user: str = "pyworkflow",
                 password: str = "", database: str = "pyworkflow", schema: str | None = None,
                 query: dict[str, str] | None = None, url: str | None = None, statement_timeout: object = 30.0,
                 lock_timeout: object = 10.0, batch_size: int | None = None, max_rows: int | None = None,
                 transaction_s: object = None,
                 parallel_batches: object = PostgresDialect.default_parallel_batches) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailableError("PostgreSQL", "postgres", exc) from exc
        query = dict(query or {})
        if query.get("sslmode", "prefer") not in SSLMODES:
            raise ConfigurationError(f"sslmode in the PostgreSQL URL must be one of {', '.join(sorted(SSLMODES))}; "
                                     f"got {query['sslmode']!r}")
        if not query.get("connect_timeout", "10").isdigit():
            raise ConfigurationError(f"connect_timeout in the PostgreSQL URL must be whole seconds; "
                                     f"got {query['connect_timeout']!r}")
        if schema is not None and not _SCHEMA.match(schema):
            raise ConfigurationError(f"PostgreSQL schema must be a lower-case identifier such as "
                                     f"pyworkflow; got {schema!r}")
        sa_url = URL.create("postgresql+psycopg", username=user, password=password or None, host=host,
                            port=port, database=database, query=query)
        self.schema = schema
        self.statement_timeout = timeout(statement_timeout, "statement_timeout")
        self.lock_timeout = timeout(lock_timeout, "lock_timeout")
        url = url or f"postgresql://{user}@{host}:{port}/{database}"
        parallel = values.integer(parallel_batches, "parallel_batches", maximum=MAX_PARALLEL_BATCHES, example=2)
        dialect = PostgresDialect(sa_url, schema, self.statement_timeout, self.lock_timeout, redact_url(url), parallel)
        super().__init__(url=url, dialect=dialect, batch_size=batch_size, max_rows=max_rows,
                         transaction_s=transaction_s)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresBackend:
        parts, database = server_and_database(
            url, "PostgreSQL URL must be postgresql://user:password@host:5432/database[?schema=NAME]")
        params = query_params(parts, QUERY | {TRANSACTION_S}, url)
        options = url_options(params, options)
        schema = params.pop("schema", None)
        return cls(host=parts.hostname or "localhost", port=parts.port or 5432,
                   user=unquote(parts.username or "pyworkflow"), password=unquote(parts.password or ""),
                   database=unquote(database), schema=schema, query=params, url=url, **options)
