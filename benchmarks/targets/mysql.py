"""Benchmark target: MySQL/MariaDB, one database per slot on the server of ``TEST_MYSQL_URL``
(default ``mysql://root@127.0.0.1:3306/test``).

The baseline is pyworkflow-engine 0.4.0's ``MySQLStorageBackend.delete_old_runs``,
on an aiomysql pool set up as its ``connect()`` would (``autocommit=True``; its
``connect()`` itself always fails). It raises ``ValueError: unsupported format
character ','`` before sending anything (``",".join("%s" * 5)``), so it deletes
nothing. :func:`baseline_fixed` runs the same statements with that one bug
fixed, on the same kind of pool; it is not a slot of the runner (run it by
hand, see docs/backends/sql.md).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import workflow_retention.backends.sql.mysql  # noqa: F401 - imported before the child's clock starts
from benchmarks.data import seed_store
from benchmarks.targets import _sql

try:  # imported before the child starts its clock
    import aiomysql
    from pyworkflow.storage.mysql import MySQLStorageBackend
except ImportError:  # pragma: no cover - the test extra pins it
    pass

run_ours, floor = _sql.run_ours, _sql.floor
SERVER = os.environ.get("TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")

#: The server's processes: the runner reports the CPU they spend during each purge (server_cpu_s).
SERVER_PROCESSES = ("mariadbd", "mysqld")


def _server() -> dict[str, Any]:
    parts = urlsplit(SERVER)
    return {"host": parts.hostname, "port": parts.port or 3306, "user": unquote(parts.username or "root"),
            "password": unquote(parts.password or "")}


def _admin(sql: str) -> None:
    import pymysql

    conn = pymysql.connect(**_server(), autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def _database(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def prepare(n: int, slot: str, now: datetime) -> str:
    database = f"wr_bench_{slot}_{uuid.uuid4().hex[:8]}"
    _admin(f"CREATE DATABASE {database} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    url = urlsplit(SERVER)._replace(path=f"/{database}").geturl()
    return seed_store(url, n, now, batch_size=5000)


async def _pyworkflow(url: str) -> Any:
    pw = MySQLStorageBackend(database=_database(url), **_server())
    pw._pool = await aiomysql.create_pool(db=_database(url), autocommit=True, **_server())
    pw._initialized = True
    return pw


def baseline(url: str, cutoff: datetime) -> dict[str, Any]:
    return _sql.pyworkflow_baseline(lambda: _pyworkflow(url), cutoff)


def baseline_fixed(url: str, cutoff: datetime) -> dict[str, Any]:
    """pyworkflow's MySQL statements, in its order, with only the placeholder bug fixed."""
    terminal = ("completed", "failed", "cancelled", "continued_as_new", "interrupted")
    sub = f"SELECT run_id FROM workflow_runs WHERE status IN ({','.join(['%s'] * 5)}) AND updated_at < %s"
    params = (*terminal, cutoff)
    statements = [
        (f"DELETE FROM events WHERE run_id IN ({sub})", params),
        (f"DELETE FROM checkpoints WHERE step_run_id IN (SELECT step_id FROM steps WHERE run_id IN ({sub}))", params),
        (f"DELETE FROM steps WHERE run_id IN ({sub})", params),
        (f"DELETE FROM hooks WHERE run_id IN ({sub})", params),
        (f"DELETE FROM cancellation_flags WHERE run_id IN ({sub})", params),
        ("DELETE FROM signals WHERE published_at < %s", (cutoff,)),
        ("DELETE FROM signal_acknowledgments WHERE acknowledged_at < %s", (cutoff,)),
        ("DELETE FROM stream_subscriptions WHERE status IN (%s,%s) AND created_at < %s",
         ("terminated", "completed", cutoff)),
        ("DELETE FROM schedules WHERE status = 'DELETED' AND deleted_at < %s", (cutoff,)),
        (f"DELETE FROM workflow_runs WHERE status IN ({','.join(['%s'] * 5)}) AND updated_at < %s", params),
    ]

    async def purge() -> int:
        pw = await _pyworkflow(url)
        try:
            async with pw._pool.acquire() as conn, conn.cursor() as cur:
                for sql, args in statements:
                    await cur.execute(sql, args)
                await conn.commit()
                return cur.rowcount
        finally:
            await pw.disconnect()

    started = time.perf_counter()
    result = _sql.timed_baseline(lambda: asyncio.run(purge()))
    result.update(seconds=round(time.perf_counter() - started, 3), transactions="autocommit: one per statement")
    return result


def extra(url: str, slot: str) -> dict[str, Any]:
    return _sql.rows_left(url)


def cleanup(url: str) -> None:
    _admin(f"DROP DATABASE IF EXISTS {_database(url)}")
