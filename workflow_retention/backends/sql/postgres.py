"""PostgreSQL: pyworkflow-engine's PostgreSQL store through psycopg 3 (``postgresql://user:pw@host:port/db``).

Live-engine safety: each batch is one READ COMMITTED transaction that locks
the batch's run rows with ``SELECT ... FOR UPDATE`` (in run_id order),
re-reads them and deletes; an engine write to one of those rows waits for
at most one batch, and a write that landed before the lock is seen by the
re-check. A child inserted concurrently needs a key-share lock on its
parent row, so it cannot slip in under a locked parent.

Every connection carries ``statement_timeout``, ``lock_timeout`` and
``idle_in_transaction_session_timeout``, so nothing can hang; deadlocks
(40P01) and serialization failures (40001) are retried with jittered
exponential backoff, anything else is raised.

Step checkpoints are matched by primary-key range when the column's
collation orders by code point (C, POSIX, C.UTF-8, ucs_basic, the builtin
provider); under a linguistic collation a range would be wrong, so an
escaped ``LIKE`` is used instead, which is exact and uses an index only if
one with ``text_pattern_ops`` exists (a warning says so). The keys found are
given to their owners in Python (:func:`~workflow_retention.planning.key_owners`)
and deleted by exact key. ``?schema=NAME`` selects a schema through
``search_path``.

Timestamps psycopg cannot load (``infinity``, ``-infinity``, BC, year 10000
on) load as :class:`Unloadable`: reported as unreadable, never deleted, and
sent back as read, so a keyset cursor can stop on one.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

from sqlalchemy import Boolean, ColumnElement, Engine, Text, bindparam, create_engine, event, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError

from workflow_retention.backends.sql.base import SQLBackend
from workflow_retention.backends.sql.purge import COUNTED_CHILDREN, RUN_CHILDREN, NotOwned
from workflow_retention.backends.sql.schema import Types
from workflow_retention.exceptions import BackendUnavailableError, ConfigurationError
from workflow_retention.report import Kind
from workflow_retention.urls import query_params, server_and_database

log = logging.getLogger("workflow_retention.sql")

QUERY = {"schema", "sslmode", "sslrootcert", "connect_timeout", "application_name"}
RETRY_SQLSTATES = {"40P01", "40001"}
SSLMODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
CODEPOINT_COLLATIONS = {"C", "POSIX", "C.UTF-8", "C.utf8", "C.UTF8", "ucs_basic"}
LATERAL_KEYS = ("SELECT c.step_run_id FROM unnest(CAST(:cp_ids AS text[])) AS r(id), LATERAL "
                "(SELECT step_run_id FROM checkpoints c WHERE c.step_run_id >= r.id || ':' "
                "AND c.step_run_id < r.id || ';') c")
LATERAL_CHECKPOINTS = text(f"step_run_id = ANY(ARRAY({LATERAL_KEYS}))")
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


class PostgresBackend(SQLBackend):
    name = "postgresql"
    capabilities = frozenset({"schedules", "streams", "scheduled_signals"})
    id_chunk = checkpoint_chunk = 10_000  # ids travel as one array parameter
    types = Types(id=Text(), name=Text(), status=Text(), short=Text(), long=Text(), json=JSONB(),
                  ts=TIMESTAMP(timezone=True), flag=Boolean(), long_default="'{0}'", now_default=True,
                  streams_v5=True)

    def __init__(self, *, host: str = "localhost", port: int = 5432, user: str = "pyworkflow",
                 password: str = "", database: str = "pyworkflow", schema: str | None = None,
                 query: dict[str, str] | None = None, url: str | None = None, **options: Any) -> None:
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
        self._sa_url = URL.create("postgresql+psycopg", username=user, password=password or None, host=host,
                                  port=port, database=database, query=query)
        self.schema = schema
        self._codepoint: bool | None = None
        super().__init__(url=url or f"postgresql://{user}@{host}:{port}/{database}", **options)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresBackend:
        parts, database = server_and_database(
            url, "PostgreSQL URL must be postgresql://user:password@host:5432/database[?schema=NAME]")
        params = query_params(parts, QUERY, url)
        schema = params.pop("schema", None)
        return cls(host=parts.hostname, port=parts.port or 5432, user=unquote(parts.username or "pyworkflow"),
                   password=unquote(parts.password or ""), database=unquote(database), schema=schema,
                   query=params, url=url, **options)

    def _create_engine(self) -> Engine:
        ms = {"statement_timeout": self.statement_timeout, "lock_timeout": self.lock_timeout,
              "idle_in_transaction_session_timeout": max(60.0, 2 * self.statement_timeout)}
        # jit=off: JIT compiling costs more than these short, index-driven statements take.
        settings = [f"-c {k}={int(v * 1000)}" for k, v in ms.items()] + ["-c jit=off"]
        if self.schema:
            settings.append(f"-c search_path={self.schema}")
        connect_args: dict[str, Any] = {"options": " ".join(settings)}
        if "connect_timeout" not in self._sa_url.query:
            connect_args["connect_timeout"] = 10
        engine = create_engine(self._sa_url, hide_parameters=True, pool_pre_ping=True,
                               isolation_level="READ COMMITTED", connect_args=connect_args)

        @event.listens_for(engine, "connect")
        def on_connect(dbapi_connection: Any, record: Any) -> None:
            register_unloadable_timestamps(dbapi_connection)

        return engine

    def bulk_insert(self, conn: Connection, table: Any, rows: list[dict[str, Any]]) -> None:
        columns = list(rows[0])
        sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
        with conn.connection.driver_connection.cursor() as cur, cur.copy(sql) as copy:
            for row in rows:
                copy.write_row([json.dumps(v) if isinstance(v, (dict, list)) else v for v in row.values()])

    def read_options(self) -> dict[str, Any]:
        return {"isolation_level": "AUTOCOMMIT"}  # each read is one statement: no BEGIN/COMMIT round trips

    def write_options(self) -> dict[str, Any]:
        return {"isolation_level": "READ COMMITTED"}

    def _cascade(self, conn: Connection, plan: Any, runs: list[Any], dry_run: bool) -> Counter:
        """The whole cascade in one statement (one round trip): data-modifying CTEs, counted.

        The step checkpoints go by key range and come back from the statement; inside the same
        transaction :func:`~workflow_retention.planning.key_owners` must give every one of them
        to a run of the batch, else (a ``:`` id: ``a:b:s`` is the live run ``a:b``'s) the
        statement is undone (:class:`NotOwned`) and the batch redone reading its checkpoints first
        and deleting them by exact key. PostgreSQL checks the parent reference at the end of the
        statement, so runs and their children can go together; the explicit child deletes leave
        the engine's ON DELETE CASCADE nothing to do.
        """
        ids = [r.run_id for r in runs]
        if not ids:
            return Counter()
        among = "run_id IN (SELECT unnest(CAST(:ids AS text[])))"
        parts = [(kind, table, among) for table, kind in RUN_CHILDREN]
        params: dict[str, Any] = {"ids": ids}
        by_range = not dry_run and not self._checkpoints_first and self.has("checkpoints")
        if by_range:
            cp_where, cp_params = self.checkpoint_match(ids)
            params.update(cp_params)
            parts.append((Kind.CHECKPOINTS, "checkpoints", cp_where.text))
        else:
            params["keys"] = self._owned_checkpoints(conn, ids)  # ownership decided in Python first
            if params["keys"]:
                parts.append((Kind.CHECKPOINTS, "checkpoints", "step_run_id IN (SELECT unnest(CAST(:keys AS text[])))"))
        parts.append((Kind.RUNS, "workflow_runs", among))
        if dry_run:
            sql = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t} WHERE {w})" for _, t, w in parts)
        else:
            returning = {"checkpoints": "step_run_id"}
            ctes = ", ".join(f"d{i} AS (DELETE FROM {t} WHERE {w} RETURNING {returning.get(t, '1')})"
                             for i, (_, t, w) in enumerate(parts))
            selects = [f"(SELECT count(*) FROM d{i})" for i in range(len(parts))]
            if by_range:
                selects.append(f"(SELECT array_agg(step_run_id) FROM d{len(parts) - 2})")
            sql = f"WITH {ctes} SELECT " + ", ".join(selects)
        row = conn.execute(text(sql), params).one()
        counts = +Counter({kind: n for (kind, _, _), n in zip(parts, row)})
        if by_range:
            deleted = row[-1] or []
            if len(self._owners_of(conn, deleted, ids)) < len(deleted):
                raise NotOwned(len(deleted))
        if not dry_run:
            self._within_budget(sum(counts.values()))  # over it (its checkpoints): rolled back, in steps
        return counts

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

    def child_rows(self, conn: Connection, run_ids: Any, over: int) -> Any:
        # Four index-only counts per run (about half the server time of a grouped union).
        counts = " + ".join(f"(SELECT count(*) FROM {name} t WHERE t.run_id = r.id)" for name in COUNTED_CHILDREN)
        return conn.execute(text(f"SELECT id, n FROM (SELECT r.id, {counts} AS n FROM unnest(CAST(:ids AS text[])) "
                                 "AS r(id)) w WHERE n > :over"), {"ids": list(run_ids), "over": over}).all()

    def retryable(self, exc: DBAPIError) -> bool:
        return getattr(exc.orig, "sqlstate", None) in RETRY_SQLSTATES

    def server_version(self, conn: Connection) -> str:
        return "PostgreSQL " + conn.exec_driver_sql("SHOW server_version").scalar_one()

    def among(self, column: ColumnElement, values: Any) -> ColumnElement:
        # One array parameter, joined: the planner drives an index scan (or a hash) from the ids.
        # "= ANY(array)" would make it compare every scanned row with every id.
        return column.in_(select(func.unnest(bindparam(None, list(values), type_=ARRAY(Text)))))

    def checkpoint_match(self, run_ids: Any) -> tuple[Any, dict[str, Any]]:
        if not self.checkpoint_ranges():
            return super().checkpoint_match(run_ids)
        # One primary-key range scan per run id, driven from the id array (one statement shape).
        return LATERAL_CHECKPOINTS, {"cp_ids": list(run_ids)}

    def checkpoint_keys(self, run_ids: Any) -> tuple[Any, dict[str, Any]]:
        if not self.checkpoint_ranges():
            return super().checkpoint_keys(run_ids)
        return text(LATERAL_KEYS), {"cp_ids": list(run_ids)}  # one primary-key range scan per id

    def checkpoint_ranges(self) -> bool:
        if self._codepoint is None:
            self._codepoint = self._codepoint_collation()
            if not self._codepoint:
                log.warning("%s: checkpoints.step_run_id has a linguistic collation; step checkpoints are "
                            "matched with LIKE, which scans the table unless an index with text_pattern_ops "
                            "exists: CREATE INDEX ON checkpoints (step_run_id text_pattern_ops)", self.url)
        return self._codepoint

    def _codepoint_collation(self) -> bool:
        with self.engine.connect() as conn:  # its own connection: asked in the middle of a batch
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
        return provider == "b" or (provider == "c" and collate in CODEPOINT_COLLATIONS)

    def table_bytes(self, conn: Connection) -> dict[str, int]:
        rows = conn.exec_driver_sql(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace").all()
        return {name: int(size) for name, size in rows}
