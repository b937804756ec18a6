"""A test-only backend: ``faulty+<inner url>`` purges the inner store with faults injected at batch boundaries.

The faults are read from Redis at the start of every purge, so a test can
change them between two invocations served by the same worker process:
``SET <TEST_FAULTS_KEY> '{"delay": 0.5, "fail_at": 2, "hang_at": 3}'``.

* ``delay``: seconds to sleep at every batch boundary (a slow store);
* ``fail_at``: raise :class:`StorageError` at that batch (a store failing mid-purge), or
  :class:`ConfigurationError` with ``fail_kind: "config"`` (an error no retry fixes);
* ``hang_at``: sleep ``hang_s`` seconds (default 600) at that batch: one batch
  longer than the lock's TTL, or a purge to SIGKILL;
* ``shard``: apply ``fail_at`` and ``hang_at`` only in the purge of that shard (its index).

Every boundary reached is appended to ``<TEST_FAULTS_KEY>:batches`` as
``{"pid", "index", "t", "shard", "run_ids"}`` before the fault applies, so the test sees progress
(``shard``: the shard's index, None for a whole-store purge).
The lock's fencing check (the real ``on_batch``) runs after the fault.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import redis

from workflow_retention.backends import by_url
from workflow_retention.base import BatchInfo, CensusJob, OrphanJob, PurgeJob, Shard, StorageBackend
from workflow_retention.exceptions import ConfigurationError, StorageError
from workflow_retention.planning import RunRef
from workflow_retention.report import SpaceReport

PREFIX = "faulty+"
#: Registry entry of this backend (registered only where a test asks for it, never globally).
TARGET = "tests.celery.faulty:FaultyBackend"


class FaultyBackend(StorageBackend):
    name = "faulty"

    def __init__(self, inner: StorageBackend, **options: Any) -> None:
        super().__init__(url=PREFIX + inner.url, batch_size=inner.batch_size)
        self.inner = inner
        self.capabilities = inner.capabilities  # type: ignore[misc]  # shards where the inner store has them
        self.control = redis.Redis.from_url(os.environ["TEST_FAULTS_REDIS"])
        self.key = os.environ["TEST_FAULTS_KEY"]

    @classmethod
    def from_url(cls, url: str, **options: Any) -> FaultyBackend:
        return cls(by_url(url[len(PREFIX):], **options))

    def open(self) -> None:
        self.inner.open()

    def close(self) -> None:
        self.inner.close()

    def _shards(self, n: int, until: datetime | None) -> list[Shard]:
        return self.inner._shards(n, until)

    def _purge(self, job: PurgeJob) -> None:
        job.on_batch = self._faulty(job.on_batch, None if job.shard.is_whole else job.shard.index)
        self.inner._purge(job)

    def _faulty(self, on_batch: Any, shard: int | None = None) -> Any:
        faults = json.loads(self.control.get(self.key) or "{}")
        if "shard" in faults and faults["shard"] != shard:
            faults = {"delay": faults.get("delay", 0)}

        def boundary(info: BatchInfo) -> None:
            self.control.rpush(f"{self.key}:batches",
                               json.dumps({"pid": os.getpid(), "index": info.index, "t": time.time(), "shard": shard,
                                           "run_ids": list(info.run_ids)}))
            if faults.get("fail_at") == info.index:
                if faults.get("fail_kind") == "config":  # an error no retry can fix: the shard fails for good
                    raise ConfigurationError(f"injected configuration error at batch {info.index}")
                raise StorageError(f"injected failure at batch {info.index}")
            if faults.get("hang_at") == info.index:
                time.sleep(faults.get("hang_s", 600))
            time.sleep(faults.get("delay", 0))
            if on_batch is not None:
                on_batch(info)

        return boundary

    def _read_runs(self, run_ids: set[str]) -> dict[str, RunRef]:
        return self.inner._read_runs(run_ids)

    def _read_children(self, parent_ids: Sequence[str]) -> dict[str, list[RunRef]]:
        return self.inner._read_children(parent_ids)

    def _sweep_orphans(self, job: OrphanJob) -> None:
        self.inner._sweep_orphans(job)

    def _census(self, job: CensusJob) -> None:
        self.inner._census(job)

    def _check(self) -> dict[str, object]:
        return self.inner._check()

    def _prepare_seed(self) -> None:
        self.inner._prepare_seed()

    def _write_seed(self, runs: list) -> None:
        self.inner._write_seed(runs)

    def _space(self) -> SpaceReport:
        return self.inner._space()

    def _count_runs(self, limit: int) -> tuple[int, bool]:
        return self.inner._count_runs(limit)
