"""Benchmark target: pyworkflow-engine's InMemoryStorageBackend, seeded inside the measuring process."""

from __future__ import annotations

from datetime import datetime

from benchmarks.data import bench_runs
from workflow_retention.backends.memory import MemoryBackend, get_store


def prepare(n: int, slot: str, now: datetime) -> str:
    return f"memory://bench_{slot}"


def setup_in_child(url: str, slot: str, n: int, now: datetime) -> None:
    MemoryBackend(get_store(url.split("://", 1)[1])).seed(bench_runs(n, now))


def baseline(url: str, cutoff: datetime):
    return get_store(url.split("://", 1)[1]).delete_old_runs(cutoff)


def cleanup(url: str) -> None:
    pass
