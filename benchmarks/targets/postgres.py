"""Benchmark target: PostgreSQL, one database per slot on the server of ``TEST_POSTGRES_URL``
(default ``postgresql://root@127.0.0.1:5432/test``).

The first slot of each N seeds a template database
(``by_url(url).seed(bench_runs(n, now))``, then ``VACUUM ANALYZE``);
every slot gets ``CREATE DATABASE ... TEMPLATE`` of it, so all slots start
from byte-identical data without seeding 100,000 runs three times. Templates
are dropped when the runner exits.

The baseline is pyworkflow-engine 0.4.0's ``PostgresStorageBackend.delete_old_runs``
(one transaction, asyncpg, its default 60 s ``command_timeout``). On the seeded
data it fails with ``ForeignKeyViolationError`` at its last statement (expired
parents whose child survives) and rolls everything back; the time to that
failure, after all its other deletes, is what is reported.
"""

from __future__ import annotations

import atexit
import os
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import workflow_retention.backends.sql.postgres  # noqa: F401 - imported before the child's clock starts
from benchmarks.data import seed_store
from benchmarks.targets import _sql

try:
    from pyworkflow.storage.postgres import PostgresStorageBackend
except ImportError:  # pragma: no cover - the test extra pins it
    pass

run_ours, floor = _sql.run_ours, _sql.floor
SERVER = os.environ.get("TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")
_templates: dict[tuple[int, str], str] = {}

#: The server's processes: the runner reports the CPU they spend during each purge (server_cpu_s).
SERVER_PROCESSES = ("postgres",)


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(sql)


def _url(database: str) -> str:
    return urlsplit(SERVER)._replace(path=f"/{database}").geturl()


def _database(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def _vacuum_analyze(backend: Any) -> None:
    with backend.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")


def _template(n: int, now: datetime) -> str:
    key = (n, now.isoformat())
    if key not in _templates:
        name = f"wr_bench_tpl_{uuid.uuid4().hex[:8]}"
        _admin(f"CREATE DATABASE {name}")
        atexit.register(_admin, f"DROP DATABASE IF EXISTS {name}")
        seed_store(_url(name), n, now, batch_size=5000, then=_vacuum_analyze)
        _templates[key] = name
    return _templates[key]


def prepare(n: int, slot: str, now: datetime) -> str:
    template = _template(n, now)
    database = f"wr_bench_{slot}_{uuid.uuid4().hex[:8]}"
    _admin(f"CREATE DATABASE {database} TEMPLATE {template}")
    return _url(database)


def baseline(url: str, cutoff: datetime) -> dict[str, Any]:
    return _sql.pyworkflow_baseline(lambda: _sql.connected(PostgresStorageBackend(dsn=url)), cutoff)


def extra(url: str, slot: str) -> dict[str, Any]:
    return _sql.rows_left(url)


def cleanup(url: str) -> None:
    _admin(f"DROP DATABASE IF EXISTS {_database(url)} WITH (FORCE)")
