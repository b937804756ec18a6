"""Benchmark target: PostgreSQL, one schema per slot on the server of ``TEST_POSTGRES_URL``
(default ``postgresql://root@127.0.0.1:5432/test``).

The baseline is pyworkflow-engine 0.4.0's ``PostgresStorageBackend.delete_old_runs``
(one transaction, asyncpg, its default 60 s ``command_timeout``). On the seeded
data it fails with ``ForeignKeyViolationError`` at its last statement (expired
parents whose child survives) and rolls everything back; the time to that
failure, after all its other deletes, is what is reported.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from benchmarks.targets import _sql
from workflow_retention.backends import by_url
from workflow_retention.seed import generate

try:  # imported before the child starts its clock
    from pyworkflow.storage.postgres import PostgresStorageBackend
except ImportError:  # pragma: no cover - the test extra pins it
    pass

run_ours, floor = _sql.run_ours, _sql.floor
SERVER = os.environ.get("TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(sql)


def _schema(url: str) -> str:
    return parse_qs(urlsplit(url).query)["schema"][0]


def prepare(n: int, slot: str, now: datetime) -> str:
    schema = f"wr_bench_{slot}_{uuid.uuid4().hex[:8]}"
    _admin(f"CREATE SCHEMA {schema}")
    url = f"{SERVER}{'&' if urlsplit(SERVER).query else '?'}schema={schema}"
    backend = by_url(url, batch_size=5000)
    backend.seed(generate(n, now=now, seed=1))
    with backend.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    backend.close()
    return url


def baseline(url: str, cutoff: datetime) -> dict[str, Any]:
    dsn = url.replace(f"schema={_schema(url)}", f"search_path={_schema(url)}")

    async def purge() -> int:
        pw = PostgresStorageBackend(dsn=dsn)
        await pw.connect()
        try:
            return await pw.delete_old_runs(cutoff)
        finally:
            await pw.disconnect()

    return _sql.timed_baseline(lambda: asyncio.run(purge()))


def extra(url: str, slot: str) -> dict[str, Any]:
    return _sql.rows_left(url)


def cleanup(url: str) -> None:
    _admin(f"DROP SCHEMA IF EXISTS {_schema(url)} CASCADE")
