"""``seed`` on an empty database creates exactly pyworkflow-engine 0.4.0's schema, on each dialect."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import uuid
from pathlib import Path
from typing import Any

from tests.harness import mysql as mysql_harness_module
from tests.harness import postgres as postgres_harness_module
from tests.services import Service
from workflow_retention.backends import by_url

#: Indexes pyworkflow's PostgreSQL migrations v2 and v5 add to an upgraded store; its CREATE TABLE
#: path (the only way to build an empty 0.4.0 store) leaves them out. Ours always has them.
PG_UPGRADE_INDEXES = {"idx_events_run_id_step_id_type", "idx_subscriptions_stream_run"}


def _sqlite_schema(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    out = {}
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        columns = [tuple(r) for r in conn.execute(f"PRAGMA table_info({table})")]
        indexes = sorted((name if not name.startswith("sqlite_autoindex") else "auto", unique,
                          tuple(c[2] for c in conn.execute(f"PRAGMA index_info('{name}')")))
                         for _, name, unique, *_ in conn.execute(f"PRAGMA index_list({table})"))
        fks = sorted(tuple(r[2:]) for r in conn.execute(f"PRAGMA foreign_key_list({table})"))
        out[table] = (columns, indexes, fks)
    conn.close()
    return out


def test_sqlite_schema_is_pyworkflows(tmp_path: Path) -> None:
    from pyworkflow.storage.sqlite import SQLiteStorageBackend

    async def engine_schema() -> None:
        pw = SQLiteStorageBackend(db_path=str(tmp_path / "engine.db"))
        await pw.connect()
        await pw.disconnect()

    asyncio.run(engine_schema())
    by_url(f"sqlite://{tmp_path}/ours.db").seed([])
    assert _sqlite_schema(tmp_path / "ours.db") == _sqlite_schema(tmp_path / "engine.db")


def _pg_schema(url: str, schema: str) -> tuple[set, set, set]:
    import psycopg

    with psycopg.connect(url) as conn:
        columns = set(conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default, ordinal_position "
            "FROM information_schema.columns WHERE table_schema = %s", (schema,)).fetchall())
        indexes = set(conn.execute(
            "SELECT tablename, indexname, replace(indexdef, %s, '') FROM pg_indexes WHERE schemaname = %s",
            (schema + ".", schema)).fetchall())
        constraints = set(conn.execute(
            "SELECT conrelid::regclass::text, contype, replace(pg_get_constraintdef(oid), %s, '') "
            "FROM pg_constraint WHERE connamespace = %s::regnamespace", (schema + ".", schema)).fetchall())
    constraints = {(t.split(".")[-1], k, d) for t, k, d in constraints}
    return columns, indexes, constraints


def test_postgres_schema_is_pyworkflows(postgres_harness: Any, postgres_service: Service) -> None:
    url, engine_schema = postgres_service.url, postgres_harness.schema  # created by pyworkflow's connect()
    ours = f"wr_test_{uuid.uuid4().hex[:12]}"
    postgres_harness_module.admin(url, f"CREATE SCHEMA {ours}")
    try:
        backend = by_url(postgres_harness_module.with_query(url, schema=ours))
        backend.seed([])
        backend.close()
        e_cols, e_idx, e_cons = _pg_schema(url, engine_schema)
        o_cols, o_idx, o_cons = _pg_schema(url, ours)
    finally:
        postgres_harness_module.admin(url, f"DROP SCHEMA {ours} CASCADE")
    assert o_cols == e_cols
    assert o_cons == e_cons
    assert {i for i in o_idx if i[1] not in PG_UPGRADE_INDEXES} == e_idx


def _mysql_schema(url: str, database: str) -> tuple[set, ...]:
    import pymysql

    conn = pymysql.connect(**mysql_harness_module.server_parts(url))
    queries = (
        "SELECT table_name, column_name, column_type, is_nullable, column_default, ordinal_position, "
        "collation_name FROM information_schema.columns WHERE table_schema = %s",
        "SELECT table_name, index_name, non_unique, seq_in_index, column_name, collation "
        "FROM information_schema.statistics WHERE table_schema = %s",
        "SELECT table_name, referenced_table_name, delete_rule FROM information_schema.referential_constraints "
        "WHERE constraint_schema = %s",
        "SELECT table_name, engine, table_collation FROM information_schema.tables WHERE table_schema = %s",
    )
    try:
        with conn.cursor() as cur:
            out = []
            for sql in queries:
                cur.execute(sql, (database,))
                out.append(set(cur.fetchall()))
            return tuple(out)
    finally:
        conn.close()


def test_mysql_schema_is_pyworkflows(mysql_harness: Any, mysql_service: Service) -> None:
    """pyworkflow's own MySQL DDL (with its trailing-comma syntax error removed) against ours."""
    import aiomysql
    from pyworkflow.storage.mysql import MySQLStorageBackend

    url, ours = mysql_service.url, mysql_harness.database  # created by our seed([])
    engine_db = f"wr_test_{uuid.uuid4().hex[:12]}"
    mysql_harness_module.admin(url, f"CREATE DATABASE {engine_db} CHARACTER SET utf8mb4 "
                                    "COLLATE utf8mb4_unicode_ci")
    original = aiomysql.cursors.Cursor.execute

    async def fixed(self: Any, query: str, args: Any = None) -> Any:
        return await original(self, re.sub(r",(\s*/\*[^*]*\*/)?\s*\)\s*ENGINE", r"\1) ENGINE", query), args)

    async def engine_schema() -> None:
        pw = MySQLStorageBackend(database=engine_db, **mysql_harness_module.server_parts(url))
        await pw.connect()
        await pw.disconnect()

    aiomysql.cursors.Cursor.execute = fixed
    try:
        asyncio.run(engine_schema())
        assert _mysql_schema(url, ours) == _mysql_schema(url, engine_db)
    finally:
        aiomysql.cursors.Cursor.execute = original
        mysql_harness_module.admin(url, f"DROP DATABASE IF EXISTS {engine_db}")
