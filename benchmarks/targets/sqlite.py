"""Benchmark target: SQLite, one database file per slot under a temporary directory.

The baseline is pyworkflow-engine 0.4.0's ``SQLiteStorageBackend.delete_old_runs``
(one transaction). On the seeded data it raises ``IntegrityError: FOREIGN KEY
constraint failed`` at its last statement (expired parents whose child
survives), after doing all its other deletes; the time to that failure is
what is reported, and the database is left as it was (the child process
exits without committing).
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import workflow_retention.backends.sql.sqlite  # noqa: F401 - imported before the child's clock starts
from benchmarks.data import seed_store
from benchmarks.targets import _sql

try:  # imported before the child starts its clock
    from pyworkflow.storage.sqlite import SQLiteStorageBackend
except ImportError:  # pragma: no cover - the test extra pins it
    pass

run_ours, floor = _sql.run_ours, _sql.floor


def prepare(n: int, slot: str, now: datetime) -> str:
    directory = Path(tempfile.mkdtemp(prefix=f"wr_bench_{slot}_"))
    url = f"sqlite://{directory}/pyworkflow.db"
    return seed_store(url, n, now, batch_size=2000)


def baseline(url: str, cutoff: datetime) -> dict[str, Any]:
    path = url.split("://", 1)[1]
    return _sql.pyworkflow_baseline(lambda: _sql.connected(SQLiteStorageBackend(db_path=path)), cutoff)


def extra(url: str, slot: str) -> dict[str, Any]:
    return _sql.rows_left(url)


def cleanup(url: str) -> None:
    shutil.rmtree(Path(url.split("://", 1)[1]).parent, ignore_errors=True)
