"""Benchmark target: pyworkflow-engine's InMemoryStorageBackend, seeded inside the measuring process."""

from __future__ import annotations

from datetime import datetime

from workflow_retention.backends.memory import MemoryBackend, get_store
from workflow_retention.seed import generate


def prepare(n: int, slot: str, now: datetime) -> str:
    return f"memory://bench_{slot}"


def setup_in_child(url: str, slot: str, n: int, now: datetime) -> None:
    MemoryBackend(get_store(url.split("://", 1)[1])).seed(generate(n, now=now, seed=1))


def baseline(url: str, cutoff: datetime):
    return get_store(url.split("://", 1)[1]).delete_old_runs(cutoff)


def cleanup(url: str) -> None:
    pass
