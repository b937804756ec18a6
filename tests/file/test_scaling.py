"""Linear cost and bounded memory: each directory is streamed a fixed number of times, whatever N and the batch."""

from __future__ import annotations

import os
import tracemalloc
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.checks import assert_no_orphans
from tests.harness.file import FileHarness
from tests.scenario import NOW
from workflow_retention.backends.file import FileBackend
from workflow_retention.seed import generate

CUTOFF = NOW - timedelta(days=30)


def _scans(monkeypatch: pytest.MonkeyPatch, base: Path) -> Counter[str]:
    """Count real ``os.scandir`` calls per store directory (the calls still go to the file system)."""
    real, seen = os.scandir, Counter[str]()

    def scandir(path: Any = ".", *args: Any) -> Any:
        where = os.readlink(f"/proc/self/fd/{path}") if isinstance(path, int) else os.fspath(path)  # a dir fd
        rel = os.path.relpath(where, base)
        if not rel.startswith(".."):
            seen[rel] += 1
        return real(path, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    return seen


@pytest.mark.parametrize(("n", "batch_size"), [(60, 7), (240, 3)])
def test_each_directory_is_streamed_a_fixed_number_of_times(store: FileHarness, monkeypatch: pytest.MonkeyPatch,
                                                            n: int, batch_size: int) -> None:
    store.retention().seed(generate(n, now=NOW, seed=5))
    depths = {s.run["nesting_depth"] for s in generate(n, now=NOW, seed=5)}
    for dry_run in (True, False):
        seen = _scans(monkeypatch, store.base)
        report = store.retention(batch_size=batch_size).delete_old_runs(CUTOFF, dry_run=dry_run)
        assert report.batches >= n // (3 * batch_size)
        # runs/: selection, one pass per nesting depth, flags, markers. Every other directory: once.
        assert seen.pop("runs") <= 3 + len(depths)
        assert set(seen.values()) == {1}, seen
        assert {"steps", "hooks", "checkpoints", "events", ".locks", "schedules", "signals"} <= set(seen)
        monkeypatch.undo()
    assert_no_orphans(store.inventory())
    seen = _scans(monkeypatch, store.base)
    store.retention(batch_size=batch_size).sweep_orphans(grace=timedelta(0))
    assert set(seen.values()) == {1, 2} and seen["runs"] == 2  # flags, then markers


def _peaks(base: Path, n: int) -> tuple[int, int]:
    """Peak traced memory of a dry run, then a purge, of ``n`` seeded runs (without hooks: the token
    index is one document the engine itself loads whole, the one thing that grows with the store)."""
    runs = list(generate(n, now=NOW, seed=9))
    for run in runs:
        run.hooks = []
    backend = FileBackend(base, batch_size=25)
    backend.seed(runs)
    del runs
    peaks = []
    for dry_run in (True, False):
        tracemalloc.start()
        try:
            backend.delete_old_runs(CUTOFF, dry_run=dry_run)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    return peaks[0], peaks[1]


def test_memory_does_not_grow_with_the_store(tmp_path: Path) -> None:
    small, large = _peaks(tmp_path / "small", 150), _peaks(tmp_path / "large", 750)
    for before, after in zip(small, large):
        assert after < before + 1024 * 1024 and after < 3 * 1024 * 1024, (small, large)
