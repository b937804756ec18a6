"""Harness: pyworkflow-engine's MySQL store in a database of its own on the test server (MariaDB or MySQL 8).

pyworkflow-engine 0.4.0's ``connect()`` always fails on MySQL (a trailing
comma in its ``signals`` DDL), so the schema comes from workflow-retention's
own metadata (``seed`` with no runs), which is pyworkflow's DDL, and
pyworkflow's storage gets its aiomysql pool (``autocommit=True``) set by
hand, as its ``connect()`` would.

PyMySQL writes an aware datetime as its local wall-clock, dropping the
offset. The engine only ever writes ``datetime.now(UTC)``, so its store holds
UTC wall-clock; the scenario's deliberately non-UTC datetimes are therefore
converted to UTC before pyworkflow's connection escapes them, storing the
same instant the engine would.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from sqlalchemy import Engine, create_engine, event

from tests.harness.sql import SQLHarness
from tests.services import Service
from workflow_retention.backends.sql.mysql import MySQLBackend


def server_parts(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {"host": parts.hostname, "port": parts.port or 3306, "user": unquote(parts.username or "root"),
            "password": unquote(parts.password or "")}


def in_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return parts._replace(path=f"/{database}").geturl()


def _utc_escape(original: Any) -> Any:
    def escape(obj: Any) -> Any:
        if isinstance(obj, datetime) and obj.tzinfo is not None:
            obj = obj.astimezone(UTC).replace(tzinfo=None)
        return original(obj)
    return escape


class MySQLHarness(SQLHarness):
    name = "mysql"
    capabilities = MySQLBackend.capabilities  # pyworkflow writes all of them there
    baseline_fails = True  # pyworkflow 0.4.0's MySQL purge always raises (pyworkflow-layout.md, section 4)
    pyworkflow_modules = ("pyworkflow.storage.mysql",)

    def __init__(self, server_url: str, database: str) -> None:
        super().__init__()
        self.server_url = server_url
        self.database = database

    def url(self) -> str:
        return in_database(self.server_url, self.database)

    async def _make_pyworkflow(self) -> Any:
        import aiomysql
        from pyworkflow.storage.mysql import MySQLStorageBackend

        self.retention().seed([])  # creates pyworkflow's schema
        server = server_parts(self.server_url)
        pw = MySQLStorageBackend(database=self.database, **server)
        pw._pool = await aiomysql.create_pool(db=self.database, autocommit=True, minsize=1, maxsize=1, **server)
        async with pw._pool.acquire() as conn:  # the pool's only connection
            conn.escape = _utc_escape(conn.escape)
        pw._initialized = True
        return pw

    def make_raw_engine(self) -> Engine:
        engine = create_engine("mysql+pymysql://" + self.url().split("://", 1)[1],
                               connect_args={"charset": "utf8mb4"})

        @event.listens_for(engine, "connect")
        def no_fk_checks(dbapi_connection: Any, record: Any) -> None:
            with dbapi_connection.cursor() as cur:  # lets the harness write orphans
                cur.execute("SET SESSION FOREIGN_KEY_CHECKS = 0")

        return engine


def admin(server_url: str, sql: str) -> None:
    import pymysql

    conn = pymysql.connect(**server_parts(server_url), autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture
def mysql_database(mysql_service: Service) -> Iterator[str]:
    """A fresh database on the test server, dropped afterwards."""
    database = f"wr_test_{uuid.uuid4().hex[:12]}"
    admin(mysql_service.url, f"CREATE DATABASE {database} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    yield database
    admin(mysql_service.url, f"DROP DATABASE IF EXISTS {database}")


@pytest.fixture
def mysql_harness(mysql_service: Service, mysql_database: str) -> Iterator[MySQLHarness]:
    harness = MySQLHarness(mysql_service.url, mysql_database)
    harness.pyworkflow()
    yield harness
    harness.close()


HARNESS_CLASS = MySQLHarness
