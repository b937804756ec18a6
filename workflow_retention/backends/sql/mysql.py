"""MySQL and MariaDB: pyworkflow-engine's MySQL store through PyMySQL (``mysql://user:pw@host:port/db``).

Storage facts that shape this module: ``DATETIME(6)`` holds naive UTC
wall-clock (PyMySQL drops ``tzinfo``), so cutoffs are bound as naive UTC;
ids use ``utf8mb4_unicode_ci``, a case-insensitive collation, so step
checkpoints are matched with an escaped ``LIKE`` (index range, same
collation as every engine lookup) rather than a byte range, and orphan
checks run in SQL with that collation; InnoDB checks the ``parent_run_id``
reference row by row, so runs are deleted level by level, leaves first.

Live-engine safety: sessions run at READ COMMITTED (so a re-check reads the
latest committed row, not a snapshot); each batch locks its run rows with
``SELECT ... FOR UPDATE`` in run_id order, re-reads and deletes in one
transaction. ``innodb_lock_wait_timeout`` bounds lock waits and
``max_execution_time`` (MySQL, SELECTs) or ``max_statement_time`` (MariaDB,
every statement) bounds statements; deadlocks (1213) are retried with
jittered backoff, anything else is raised. The DDL used by ``seed`` is
valid on MySQL 8 (text defaults are written as expressions, ``('{}')``)
and on MariaDB 10.2+.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from sqlalchemy import Boolean, ColumnElement, Engine, String, create_engine, delete, event
from sqlalchemy.dialects.mysql import DATETIME, LONGTEXT
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError

from workflow_retention.backends.sql.base import SQLBackend
from workflow_retention.backends.sql.schema import Types
from workflow_retention.exceptions import BackendUnavailableError, ConfigurationError
from workflow_retention.urls import query_params, redact_url, server_and_database

QUERY = {"charset", "connect_timeout"}
RETRY_ERRORS = {1213}  # ER_LOCK_DEADLOCK (SQLSTATE 40001)


class MySQLBackend(SQLBackend):
    name = "mysql"
    capabilities = frozenset({"schedules", "streams"})
    types = Types(id=String(255), name=String(255), status=String(50), short=String(100), long=LONGTEXT(),
                  json=LONGTEXT(), ts=DATETIME(fsp=6), flag=Boolean(), long_default="('{0}')", now_default=False,
                  streams_v5=False)
    # InnoDB deletes row by row through every index (and checks foreign keys): about a quarter of
    # SQLite's or PostgreSQL's rate here, so a quarter of their rows per transaction.
    default_max_rows = 5_000

    def __init__(self, *, host: str = "localhost", port: int = 3306, user: str = "pyworkflow", password: str = "",
                 database: str = "pyworkflow", query: dict[str, str] | None = None, url: str | None = None,
                 **options: Any) -> None:
        try:
            from pymysql.charset import charset_by_name
        except ImportError as exc:
            raise BackendUnavailableError("MySQL", "mysql", exc) from exc
        query = dict(query or {})
        self._connect_timeout = int(query.pop("connect_timeout", 10))
        charset = query.setdefault("charset", "utf8mb4")
        if charset_by_name(charset) is None:
            raise ConfigurationError(f"charset in the MySQL URL must be one PyMySQL knows, such as utf8mb4; "
                                     f"got {charset!r}")
        self._sa_url = URL.create("mysql+pymysql", username=user, password=password or None, host=host, port=port,
                                  database=database, query=query)
        super().__init__(url=url or f"mysql://{user}@{host}:{port}/{database}", **options)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MySQLBackend:
        parts, database = server_and_database(url, "MySQL URL must be mysql://user:password@host:3306/database")
        params = query_params(parts, QUERY, url)
        if not params.get("connect_timeout", "10").isdigit():
            raise ConfigurationError(f"connect_timeout in the MySQL URL must be whole seconds; "
                                     f"got {redact_url(url)!r}")
        return cls(host=parts.hostname, port=parts.port or 3306, user=unquote(parts.username or "pyworkflow"),
                   password=unquote(parts.password or ""), database=unquote(database), query=params, url=url,
                   **options)

    def _create_engine(self) -> Engine:
        socket_timeout = int(self.statement_timeout + self.lock_timeout + 30)
        engine = create_engine(self._sa_url, hide_parameters=True, pool_pre_ping=True, pool_recycle=3600,
                               isolation_level="READ COMMITTED",
                               connect_args={"connect_timeout": self._connect_timeout,
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

    can_defer_cascade = True

    @contextmanager
    def without_cascade(self, conn: Connection) -> Iterator[None]:
        # A session variable (no privilege needed); InnoDB then neither checks nor cascades.
        driver = conn.connection.driver_connection
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

    def retryable(self, exc: DBAPIError) -> bool:
        args = getattr(exc.orig, "args", ())
        return bool(args) and args[0] in RETRY_ERRORS

    def server_version(self, conn: Connection) -> str:
        return conn.exec_driver_sql("SELECT VERSION()").scalar_one()

    def db_time(self, when: datetime) -> Any:
        return when.astimezone(UTC).replace(tzinfo=None)

    def after(self, columns: Any, values: Any) -> ColumnElement:
        return self.expanded_after(columns, values)  # range access on the composite index

    def delete_some(self, table: Any, where: ColumnElement, limit: int) -> Any:
        return delete(table).where(where).with_dialect_options(mysql_limit=limit)  # no LIMIT in IN subqueries

    def checkpoint_ranges(self) -> bool:
        return False  # a case-insensitive collation: LIKE matches as every engine lookup does

    def exact(self, column: ColumnElement) -> ColumnElement:
        return column.collate("utf8mb4_bin")  # statuses: 'RUNNING' is not 'running'

    def id_fold(self, run_id: str) -> str:
        return run_id.lower()  # utf8mb4_unicode_ci: safe ids are ASCII, whose letters compare without case

    def table_bytes(self, conn: Connection) -> dict[str, int]:
        rows = conn.exec_driver_sql(
            "SELECT table_name, data_length + index_length FROM information_schema.tables "
            "WHERE table_schema = DATABASE()").all()
        return {name: int(size or 0) for name, size in rows}
