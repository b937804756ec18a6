"""Benchmark target: a pyworkflow-engine FileStorageBackend directory per slot, in a temporary directory.

``baseline`` runs pyworkflow-engine 0.4.0's own ``FileStorageBackend.delete_old_runs``
(quadratic: it re-reads every step file for each run it deletes). ``extra``
reports what is left after the purge: files, and the orphans our dry-run
sweep finds (grace 0), which is what the baseline leaves behind.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

from benchmarks.data import bench_runs
from workflow_retention.backends import by_url
from workflow_retention.backends.file import FileBackend

PREFIX = "wr-bench-file-"


def prepare(n: int, slot: str, now: datetime) -> str:
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{slot}-"))
    url = f"file://{root / 'store'}"
    by_url(url, batch_size=2000).seed(bench_runs(n, now))
    return url


def _path(url: str) -> Path:
    return FileBackend.from_url(url).base_path


def baseline(url: str, cutoff: datetime) -> int:
    from pyworkflow.storage.file import FileStorageBackend

    return asyncio.run(FileStorageBackend(base_path=str(_path(url))).delete_old_runs(cutoff))


def extra(url: str, slot: str) -> dict:
    base = _path(url)
    files = sum(len(names) for _, _, names in os.walk(base))
    orphans = FileBackend(base).sweep_orphans(grace=timedelta(0), dry_run=True)
    return {"files_left": files, "orphans_left": orphans.total}


def cleanup(url: str) -> None:
    root = _path(url).parent
    if root.name.startswith(PREFIX) and Path(tempfile.gettempdir()) in root.parents:
        shutil.rmtree(root)
