"""MySQL and MariaDB: pyworkflow-engine's MySQL store through PyMySQL (``mysql://user:pw@host:port/db``)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from sqlalchemy import Boolean, ColumnElement, Engine, String, Table, create_engine, delete, event
from sqlalchemy.dialects.mysql import DATETIME, LONGTEXT
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError

from workflow_retention import values
from workflow_retention.backends.sql.backend import TRANSACTION_S, SQLBackend, timeout, url_options
from workflow_retention.backends.sql.dialect import MAX_PARALLEL_BATCHES, Dialect, expanded_after
from workflow_retention.backends.sql.layout import Types
from workflow_retention.exceptions import BackendUnavailableError, ConfigurationError
from workflow_retention.urls import query_params, redact_url, server_and_database

QUERY = {"charset", "connect_timeout"}
RETRY_ERRORS = {1213}  # ER_LOCK_DEADLOCK (SQLSTATE 40001)


class MySQLDialect(Dialect):
    """MySQL/MariaDB: naive UTC ``DATETIME(6)``, a case-insensitive id collation, InnoDB row locks."""

    name = "mysql"
    types = Types(id=String(255), name=String(255), status=String(50), short=String(100), long=LONGTEXT(),
                  json=LONGTEXT(), ts=DATETIME(fsp=6), flag=Boolean(), long_default="('{0}')", now_default=False,
                  streams_v5=False)
    # InnoDB deletes row by row through every index (and checks foreign keys): about a quarter of
    # SQLite's or PostgreSQL's rate here, so the first transaction gets a quarter of their rows; the time
    # bound grows the budget from there (10,000 runs: 19-20 transactions instead of 35, 1.8-2.3x the
    # floor instead of 2.6-2.9x; docs/benchmarks.md, "fourth session").
    default_max_rows = 40_000
    initial_rows = 5_000
    can_defer_cascade = True
    #: One batch at a time unless asked (docs/backends/sql.md, "Parallel batches": no gain measured here).
    default_parallel_batches = 1

    def __init__(self, sa_url: URL, connect_timeout: int, statement_timeout: float, lock_timeout: float,
                 parallel_batches: int = default_parallel_batches) -> None:
        super().__init__()
        self.parallel_batches = parallel_batches
        self.sa_url = sa_url
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.lock_timeout = lock_timeout

    def create_engine(self) -> Engine:
        socket_timeout = int(self.statement_timeout + self.lock_timeout + 30)
        engine = create_engine(self.sa_url, hide_parameters=True, pool_pre_ping=True, pool_recycle=3600,
                               isolation_level="READ COMMITTED",
                               connect_args={"connect_timeout": self.connect_timeout,
                                             "read_timeout": socket_timeout, "write_timeout": socket_timeout})

        @event.listens_for(engine, "connect")
        def on_connect(dbapi_connection: Any, record: Any) -> None:
            mariadb = "mariadb" in dbapi_connection.get_server_info().lower()
            limit = (f"max_statement_time = {self.statement_timeout:.3f}" if mariadb
                     else f"max_execution_time = {int(self.statement_timeout * 1000)}")
            with dbapi_connection.cursor() as cur:
                cur.execute(f"SET SESSION innodb_lock_wait_timeout = {max(1, math.ceil(self.lock_timeout))}, "
                            f"SESSION {limit}")

        return engine

    def retryable(self, exc: DBAPIError) -> bool:
        args: tuple[Any, ...] = getattr(exc.orig, "args", ())
        return bool(args) and args[0] in RETRY_ERRORS

    @contextmanager
    def without_cascade(self, conn: Connection) -> Iterator[None]:
        # A session variable (no privilege needed); InnoDB then neither checks nor cascades.
        driver: Any = conn.connection.driver_connection
        with driver.cursor() as cur:
            cur.execute("SET SESSION foreign_key_checks = 0")
        try:
            yield
        finally:
            try:
                with driver.cursor() as cur:
                    cur.execute("SET SESSION foreign_key_checks = 1")
            except Exception:
                conn.invalidate()  # never hand a connection without foreign keys back to the pool
                raise

    def server_version(self, conn: Connection) -> str:
        return str(conn.exec_driver_sql("SELECT VERSION()").scalar_one())

    def catalog(self, conn: Connection) -> tuple[frozenset[str], dict[str, list[tuple[str, ...]]]]:
        tables = frozenset(conn.exec_driver_sql(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()").scalars())
        columns: dict[tuple[str, str], list[str]] = {}
        for table, index, column in conn.exec_driver_sql(
                "SELECT table_name, index_name, column_name FROM information_schema.statistics "
                "WHERE table_schema = DATABASE() ORDER BY table_name, index_name, seq_in_index"):
            columns.setdefault((table, index), []).append(column)
        indexes: dict[str, list[tuple[str, ...]]] = {}
        for (table, _), cols in columns.items():
            indexes.setdefault(table, []).append(tuple(cols))
        return tables, indexes

    def table_bytes(self, conn: Connection) -> dict[str, int]:
        rows = conn.exec_driver_sql(
            "SELECT table_name, data_length + index_length FROM information_schema.tables "
            "WHERE table_schema = DATABASE()").all()
        return {name: int(size or 0) for name, size in rows}

    def db_time(self, when: datetime) -> Any:
        return when.astimezone(UTC).replace(tzinfo=None)

    def after(self, columns: Any, values: Any) -> ColumnElement:
        return expanded_after(columns, values)  # range access on the composite index

    def delete_some(self, table: Table, where: ColumnElement, limit: int) -> Any:
        return delete(table).where(where).with_dialect_options(mysql_limit=limit)  # no LIMIT in IN subqueries

    def checkpoint_ranges(self) -> bool:
        return False  # a case-insensitive collation: LIKE matches as every engine lookup does

    def exact(self, column: ColumnElement) -> ColumnElement:
        return column.collate("utf8mb4_bin")  # statuses: 'RUNNING' is not 'running'

    def id_fold(self, run_id: str) -> str:
        return run_id.lower()  # utf8mb4_unicode_ci: safe ids are ASCII, whose letters compare without case


class MySQLBackend(SQLBackend):
    """pyworkflow-engine's MySQL/MariaDB store: ``mysql://user:password@host:3306/database``.

    URL query options: ``charset`` (default ``utf8mb4``; one PyMySQL knows), ``connect_timeout``
    (whole seconds, default 10) and ``transaction_s`` (below).

    Options (keyword arguments of the constructor, ``from_url`` or ``by_url``):

    * ``batch_size`` (default 2000): runs per batch;
    * ``max_rows`` (default 40000): rows one write transaction deletes at most, whatever the runs hold
      (the first transaction of a purge deletes at most 5,000; the budget then follows ``transaction_s``);
    * ``transaction_s`` (seconds, default 0.5; also ``?transaction_s=`` in the URL): how long a write
      transaction should take; the row budget follows it (longer: fewer commits, a faster purge, and the
      engine's writers of the same rows waiting that long);
    * ``lock_timeout`` (seconds, default 10): ``innodb_lock_wait_timeout`` (rounded up to whole seconds);
    * ``statement_timeout`` (seconds, default 30): ``max_execution_time`` (MySQL, SELECTs) or
      ``max_statement_time`` (MariaDB, every statement);
    * ``parallel_batches`` (default 1): write batches a purge runs at once, each on its own connection
      (1 to 16; 1 is one batch at a time): docs/backends/sql.md, "Parallel batches".

    Errors: :class:`~workflow_retention.exceptions.BackendUnavailableError` without PyMySQL (the ``mysql``
    extra); :class:`~workflow_retention.exceptions.ConfigurationError` for a bad URL or option;
    :class:`~workflow_retention.exceptions.StorageError` (chained to the driver's) when the server cannot
    be reached, the database is not a PyWorkflow store, or a statement fails; deadlocks are retried.
    """

    name = "mysql"
    capabilities = SQLBackend.capabilities
    #: Larger than PostgreSQL's 500: a transaction holds at most one batch, and InnoDB's commits (a redo
    #: log flush each) cost more than the larger transactions the time bound allows.
    default_batch_size = 2_000

    def __init__(self, *, host: str = "localhost", port: int = 3306, user: str = "pyworkflow", password: str = "",
                 database: str = "pyworkflow", query: dict[str, str] | None = None, url: str | None = None,
                 statement_timeout: object = 30.0, lock_timeout: object = 10.0, batch_size: int | None = None,
                 max_rows: int | None = None, transaction_s: object = None,
                 parallel_batches: object = MySQLDialect.default_parallel_batches) -> None:
        try:
            from pymysql.charset import charset_by_name
        except ImportError as exc:
            raise BackendUnavailableError("MySQL", "mysql", exc) from exc
        query = dict(query or {})
        connect_timeout = int(query.pop("connect_timeout", 10))
        charset = query.setdefault("charset", "utf8mb4")
        if charset_by_name(charset) is None:
            raise ConfigurationError(f"charset in the MySQL URL must be one PyMySQL knows, such as utf8mb4; "
                                     f"got {charset!r}")
        sa_url = URL.create("mysql+pymysql", username=user, password=password or None, host=host, port=port,
                            database=database, query=query)
        self.statement_timeout = timeout(statement_timeout, "statement_timeout")
        self.lock_timeout = timeout(lock_timeout, "lock_timeout")
        parallel = values.integer(parallel_batches, "parallel_batches", maximum=MAX_PARALLEL_BATCHES, example=2)
        dialect = MySQLDialect(sa_url, connect_timeout, self.statement_timeout, self.lock_timeout, parallel)
        super().__init__(url=url or f"mysql://{user}@{host}:{port}/{database}", dialect=dialect,
                         batch_size=batch_size, max_rows=max_rows, transaction_s=transaction_s)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MySQLBackend:
        parts, database = server_and_database(url, "MySQL URL must be mysql://user:password@host:3306/database")
        params = query_params(parts, QUERY | {TRANSACTION_S}, url)
        options = url_options(params, options)
        if not params.get("connect_timeout", "10").isdigit():
            raise ConfigurationError(f"connect_timeout in the MySQL URL must be whole seconds; "
                                     f"got {redact_url(url)!r}")
        return cls(host=parts.hostname or "localhost", port=parts.port or 3306,
                   user=unquote(parts.username or "pyworkflow"), password=unquote(parts.password or ""),
                   database=unquote(database), query=params, url=url, **options)
