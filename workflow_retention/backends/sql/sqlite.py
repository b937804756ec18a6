"""SQLite: pyworkflow-engine's SQLite store (``sqlite:///abs/path.db``)."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from sqlalchemy import ColumnElement, Engine, Integer, Select, Table, Text, create_engine, event, func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import QueuePool

from workflow_retention.backends.sql.backend import TRANSACTION_S, SQLBackend, timeout, url_options
from workflow_retention.backends.sql.dialect import Dialect
from workflow_retention.backends.sql.layout import IsoText, Types
from workflow_retention.backends.sql.space import sqlite_vacuum
from workflow_retention.base import Capability
from workflow_retention.exceptions import ConfigurationError
from workflow_retention.report import SpaceReport
from workflow_retention.urls import query_params, redact_url, split_url

#: Largest UTC offset in use (+14:00) plus margin: the SQL pre-filter's widening.
OFFSET_MARGIN = timedelta(hours=15)


log = logging.getLogger("workflow_retention.sql")
#: pyworkflow-engine's SQLite busy timeout (its writers give up after waiting this long for the lock).
ENGINE_BUSY_TIMEOUT_S = 5.0


class SQLiteDialect(Dialect):
    """SQLite: ISO-8601 text timestamps, one writer (``BEGIN IMMEDIATE``), yields between write transactions."""

    name = "sqlite"
    types = Types(id=Text(), name=Text(), status=Text(), short=Text(), long=Text(), json=Text(), ts=IsoText(),
                  flag=Integer(), long_default="'{0}'", now_default=False, streams_v5=False,
                  loose_pk=True)
    exact_time = False
    #: Ids per statement: one JSON parameter whatever their number (see :meth:`among`).
    id_chunk = 10_000
    # Every commit journals and fsyncs the pages it touched (the engine's random event_id index among
    # them): fewer, larger transactions, bounded by time (Client.transaction_target), not by a small cap.
    default_max_rows = 200_000
    checkpoint_chunk = 10_000  # ids per checkpoint-key statement (one JSON parameter, see checkpoint_keys)
    can_defer_cascade = True
    batches_without_cascade = True
    #: SQLite has one writer and no queue: a writer waiting on its busy timeout retries about every
    #: 100 ms (SQLite's default busy handler) and misses the milliseconds between two of our write
    #: transactions. So after holding the write lock for ``hold_s`` in all, a purge or sweep leaves
    #: the database alone for ``yield_s``, longer than that retry interval.
    hold_s: float = 1.5
    yield_s: float = 0.12

    def __init__(self, path: Path, lock_timeout: float) -> None:
        super().__init__()
        self.path = path
        self.lock_timeout = lock_timeout
        self._held = 0.0  # seconds the write lock was held since the purge last yielded it
        self._keys_sql = text("WITH r(id) AS (SELECT value FROM json_each(:ids)) SELECT c.step_run_id FROM r "
                              "JOIN checkpoints c ON c.step_run_id >= r.id || ':' AND c.step_run_id < r.id || ';'")

    def create_engine(self) -> Engine:
        uri = f"file:{quote(self.path.as_posix())}?mode=rw"

        def connect() -> sqlite3.Connection:
            # A small statement cache: every IN-list length is its own SQL text, and the default 128
            # prepared statements of up to 1,000 parameters each cost ~20 MB of RSS for no reuse.
            return sqlite3.connect(uri, uri=True, timeout=self.lock_timeout, check_same_thread=False,
                                   cached_statements=16)

        engine = create_engine("sqlite+pysqlite://", creator=connect, poolclass=QueuePool, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def on_connect(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
            dbapi_connection.execute("PRAGMA foreign_keys = ON")

        @event.listens_for(engine, "begin")
        def on_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get("sqlite_immediate")
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    def read_options(self) -> dict[str, Any]:
        return {"sqlite_immediate": False}

    def write_options(self) -> dict[str, Any]:
        return {"sqlite_immediate": True}

    def after_write(self, seconds: float) -> None:
        self._held += seconds
        if self._held >= self.hold_s:
            time.sleep(self.yield_s)
            self._held = 0.0

    @contextmanager
    def without_cascade(self, conn: Connection) -> Iterator[None]:
        # Per connection, and a no-op inside a transaction: set on the DBAPI connection (autocommit)
        # before BEGIN IMMEDIATE, and back on after the commit or rollback.
        driver = conn.connection.driver_connection
        assert driver is not None
        driver.execute("PRAGMA foreign_keys = OFF")
        try:
            yield
        finally:
            try:
                driver.execute("PRAGMA foreign_keys = ON")
            except sqlite3.Error:
                conn.invalidate()  # never hand a connection without foreign keys back to the pool
                raise

    def before_create(self) -> None:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            sqlite3.connect(self.path).close()

    def server_version(self, conn: Connection) -> str:
        return f"SQLite {sqlite3.sqlite_version}"

    def table_bytes(self, conn: Connection) -> dict[str, int]:
        try:
            rows = conn.exec_driver_sql("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").all()
        except SQLAlchemyError:  # dbstat is an optional compile-time feature
            return {}
        return {name: int(size or 0) for name, size in rows}

    def db_time(self, when: datetime) -> Any:
        return when.isoformat()

    def instant(self, column: ColumnElement) -> ColumnElement:
        # julianday() reads the ISO text with its offset (to the millisecond); NULL when it cannot, sorted last
        return func.julianday(column)

    def before(self, column: ColumnElement, when: datetime) -> ColumnElement:
        return column < (when + OFFSET_MARGIN).isoformat()

    def not_before(self, column: ColumnElement, when: datetime) -> ColumnElement:
        # Past any offset-carrying text of an instant before ``when``; all non-ISO text sorts here too.
        return column >= (when + OFFSET_MARGIN).isoformat()

    def lock(self, stmt: Select) -> Select:
        return stmt  # BEGIN IMMEDIATE already holds the database's write lock

    def among(self, column: ColumnElement, values: Sequence[Any]) -> ColumnElement:
        # ``column IN (SELECT value FROM json_each(?))``: one parameter and one statement text for any
        # number of ids, so SQLite prepares it once (an IN list of n parameters is a new text, parsed
        # and planned again, for every n). Only for text values, which JSON carries unchanged.
        if not values or not all(isinstance(v, str) for v in values):
            return super().among(column, values)
        ids = func.json_each(json.dumps(list(values))).table_valued("value")
        return column.in_(select(ids.c.value))

    def checkpoint_keys(self, checkpoints: Table, run_ids: Sequence[str]) -> tuple[Any, dict[str, Any]]:
        # One primary-key range per id, joined from the ids' JSON array: planned once whatever the number
        # of ids (an OR of hundreds of ranges costs SQLite's planner more than the scans themselves).
        return self._keys_sql, {"ids": json.dumps(list(run_ids))}


class SQLiteBackend(SQLBackend):
    """pyworkflow-engine's SQLite store: ``sqlite:///absolute/path/to/pyworkflow.db``.

    The database file must exist (``seed`` creates it); the URL takes no query string.

    Options (keyword arguments of the constructor, ``from_url`` or ``by_url``):

    * ``batch_size`` (default 10000): runs per batch; one writer at a time, so fewer, larger batches
      (each is cut into write transactions by ``max_rows`` and by time);
    * ``max_rows`` (default 200000): rows one write transaction deletes at most, whatever the runs hold;
      within it the budget follows time: a purge starts at 40,000 rows per transaction and moves so that
      each takes about 0.5 s (docs/backends/sql.md, "Bounded transactions");
    * ``transaction_s`` (seconds, default 0.5; also ``?transaction_s=`` in the URL): how long a write
      transaction should take; the row budget follows it. Longer means fewer commits and a faster purge,
      and the engine's writers waiting that long: keep it well under pyworkflow's 5 s busy timeout unless
      no engine writes during the purge (a maintenance window);
    * ``lock_timeout`` (seconds, default 10): SQLite's busy timeout, how long a statement waits for the
      database lock;
    * ``statement_timeout`` (seconds, default 30): accepted for symmetry with the servers (SQLite has none).

    Errors: :class:`~workflow_retention.exceptions.ConfigurationError` for a bad URL or option (a relative
    path, a query string); :class:`~workflow_retention.exceptions.StorageError` (chained to the driver's)
    when the file is missing or not a PyWorkflow store, or a statement fails.
    """

    name = "sqlite"
    capabilities = SQLBackend.capabilities | {Capability.CORRUPTIBLE_TIMESTAMPS}
    #: ``vacuum()`` (``purge --vacuum``) gives SQLite's free pages back to the file system.
    can_vacuum = True
    # One writer at a time: each transaction commits (journal + fsync), so fewer, larger ones are much
    # cheaper; the time bound (0.5 s per transaction, then a pause: Dialect.after_write) keeps the write
    # lock well under the engine's 5 s busy timeout whatever the batch holds.
    default_batch_size = 10_000

    def __init__(self, path: str | Path, *, url: str | None = None, statement_timeout: object = 30.0,
                 lock_timeout: object = 10.0, batch_size: int | None = None, max_rows: int | None = None,
                 transaction_s: object = None) -> None:
        self.path = Path(path)
        if not self.path.is_absolute():
            raise ConfigurationError(f"the SQLite database path must be absolute; got {str(path)!r}")
        self.statement_timeout = timeout(statement_timeout, "statement_timeout")
        self.lock_timeout = timeout(lock_timeout, "lock_timeout")
        super().__init__(url=url or f"sqlite://{self.path}", dialect=SQLiteDialect(self.path, self.lock_timeout),
                         batch_size=batch_size, max_rows=max_rows, transaction_s=transaction_s)
        if self.client.transaction_target >= ENGINE_BUSY_TIMEOUT_S:
            log.warning("%s: transaction_s=%g: a write transaction may hold SQLite's write lock as long as "
                        "pyworkflow's %g s busy timeout, so the engine's own writes may fail meanwhile; use it "
                        "only while no engine writes to this store", self.url, self.client.transaction_target,
                        ENGINE_BUSY_TIMEOUT_S)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SQLiteBackend:
        parts = split_url(url)
        path = unquote(parts.path)
        if parts.scheme.lower() not in ("sqlite", "sqlite+pysqlite") or parts.netloc \
                or not path.startswith("/") or path.endswith("/"):
            raise ConfigurationError(
                f"SQLite URL must be sqlite:///absolute/path/to/pyworkflow.db[?transaction_s=SECONDS]; "
                f"got {redact_url(url)!r}")
        if path.startswith("//"):  # SQLAlchemy's spelling sqlite:////abs/path
            path = path[1:]
        options = url_options(query_params(parts, {TRANSACTION_S}, url), options)
        return cls(path, url=url, **options)

    def _vacuum(self) -> SpaceReport:
        """``PRAGMA incremental_vacuum`` (``auto_vacuum=INCREMENTAL``) or a full ``VACUUM``; then :meth:`space`."""
        with self.client.translated("vacuum"):
            what = sqlite_vacuum(self.client)
        report = self._space()
        report.vacuum = what
        return report
