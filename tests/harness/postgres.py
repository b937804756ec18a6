"""Harness: pyworkflow-engine's PostgreSQL store in a schema of its own on the test server.

Each test gets a fresh schema (``search_path``) on the session's server,
dropped afterwards: cheaper than a database per test and just as isolated,
since every object pyworkflow creates (tables, indexes) lives in the schema.
pyworkflow's ``connect()`` cannot migrate an empty database (its v5
migration alters a table it has not created yet), so ``schema_versions`` is
filled with versions 1-7 first, as on a store it created itself; its
``connect()`` then creates every table.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import Engine, create_engine, event, text

from tests.harness.sql import SQLHarness
from tests.services import Service
from workflow_retention.backends.sql.layout import SCHEMA_VERSIONS
from workflow_retention.backends.sql.postgres import PostgresBackend, register_unloadable_timestamps


def with_query(url: str, **params: str) -> str:
    extra = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{url}{'&' if urlsplit(url).query else '?'}{extra}"


def sa_url(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1]


class PostgresHarness(SQLHarness):
    name = "postgres"
    capabilities = PostgresBackend.capabilities  # pyworkflow writes all of them there
    pyworkflow_modules = ("pyworkflow.storage.postgres",)

    def __init__(self, server_url: str, schema: str) -> None:
        super().__init__()
        self.server_url = server_url
        self.schema = schema

    def url(self) -> str:
        return with_query(self.server_url, schema=self.schema)

    async def _make_pyworkflow(self) -> Any:
        from pyworkflow.storage.postgres import PostgresStorageBackend

        with self.raw().begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS schema_versions (version INTEGER PRIMARY KEY, "
                              "applied_at TIMESTAMPTZ NOT NULL, description TEXT)"))
            for version, description in SCHEMA_VERSIONS.items():
                conn.execute(text("INSERT INTO schema_versions VALUES (:v, now(), :d) ON CONFLICT DO NOTHING"),
                             {"v": version, "d": description})
        pw = PostgresStorageBackend(dsn=with_query(self.server_url, search_path=self.schema),
                                    min_pool_size=1, max_pool_size=2)
        await pw.connect()
        return pw

    def make_raw_engine(self) -> Engine:
        engine = create_engine(sa_url(self.server_url), poolclass=None,
                               connect_args={"options": f"-c search_path={self.schema}"})

        @event.listens_for(engine, "connect")
        def no_fk_triggers(dbapi_connection: Any, record: Any) -> None:
            with dbapi_connection.cursor() as cur:  # lets the harness write orphans (superuser)
                cur.execute("SET session_replication_role = replica")
            dbapi_connection.commit()
            register_unloadable_timestamps(dbapi_connection)  # the inventory reads infinity too

        return engine


def admin(server_url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture
def postgres_schema(postgres_service: Service) -> Iterator[str]:
    """A fresh schema on the test server, dropped afterwards."""
    schema = f"wr_test_{uuid.uuid4().hex[:12]}"
    admin(postgres_service.url, f"CREATE SCHEMA {schema}")
    yield schema
    admin(postgres_service.url, f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def postgres_harness(postgres_service: Service, postgres_schema: str) -> Iterator[PostgresHarness]:
    harness = PostgresHarness(postgres_service.url, postgres_schema)
    harness.pyworkflow()
    yield harness
    harness.close()


HARNESS_CLASS = PostgresHarness
