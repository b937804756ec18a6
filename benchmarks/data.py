"""The benchmark data set, identical for every slot of a run.

``BENCH_PROFILE`` (set by ``benchmarks.run --profile``) picks it:

* ``mixed`` (default): the seeder's defaults; about 2 % of runs are child runs
  that outlive their expired parent, so the parent is held. pyworkflow-engine
  0.4.0's own purge fails on such a parent on PostgreSQL and SQLite.
* ``no-holds``: the same, except no child outlives its parent, so the
  baseline can finish and its speed can be compared at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from workflow_retention.seed import SeedRun, generate

PROFILES = {"mixed": {}, "no-holds": {"outlive_share": 0.0}}


def bench_runs(n: int, now: datetime) -> Iterator[SeedRun]:
    profile = os.environ.get("BENCH_PROFILE", "mixed")
    return generate(n, now=now, seed=1, **PROFILES[profile])


def seed_store(url: str, n: int, now: datetime, batch_size: int = 1000,
               then: Callable[[Any], None] | None = None) -> str:
    """Seed ``bench_runs(n, now)`` into the store at ``url`` with our seeder; ``then(backend)`` before closing."""
    from workflow_retention.backends import by_url

    backend = by_url(url, batch_size=batch_size)
    try:
        backend.seed(bench_runs(n, now))
        if then is not None:
            then(backend)
    finally:
        backend.close()
    return url
