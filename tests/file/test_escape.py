"""Every open and unlink stays inside the store, whatever changes during the run, and nothing blocks.

Anyone who can write the base directory can swap a layout directory for a
symlink while a purge runs, or put a FIFO where a record should be. The purge
works through directory descriptors opened once (``O_DIRECTORY|O_NOFOLLOW``),
reads only regular files (``O_NONBLOCK``, then ``fstat``), and takes the
engine's locks on lock files it opens inside ``.locks/`` itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from tests.conformance.checks import run_ids
from tests.file.conftest import tree, write_json
from tests.harness.file import FileHarness
from tests.scenario import CUTOFF, OLD, add_run
from workflow_retention.base import BatchInfo
from workflow_retention.exceptions import StorageError

T = TypeVar("T")

OLD_ISO = OLD.isoformat()


def _swap_for_symlink(store: FileHarness, directory: str, victim: Path) -> None:
    """Move a layout directory aside (still inside the store) and put a symlink to ``victim`` in its place."""
    path = store.base / directory
    os.rename(path, store.base / f"{directory}.moved")
    os.symlink(victim, path)


def _victim_copy(victim: Path, directory: str, names: list[str]) -> Path:
    target = victim / directory
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        (target / name).write_text("outside the store\n")
    return target


@pytest.mark.parametrize("directory", ["events", "steps", "hooks", "checkpoints", ".locks", "runs",
                                       "schedules", "signals", "subscriptions", "acknowledgments"])
def test_a_directory_swapped_for_a_symlink_during_the_purge_leads_nowhere(
        store: FileHarness, victim: Path, directory: str) -> None:
    pw = store.pyworkflow()
    for run_id in ("run_a", "run_b"):
        store.run(add_run(pw, run_id, "completed", OLD))
    write_json(store.base / "schedules" / "s_old.json",
               {"schedule_id": "s_old", "status": "deleted", "updated_at": OLD_ISO})
    write_json(store.base / "subscriptions" / "st__x.json",
               {"stream_id": "st", "step_run_id": "x", "status": "completed", "created_at": OLD_ISO})
    write_json(store.base / "acknowledgments" / "g__x.json",
               {"signal_id": "g", "step_run_id": "x", "acknowledged_at": OLD_ISO})
    write_json(store.base / "signals" / "st.json", [{"signal_id": "g", "published_at": OLD_ISO}])
    names = sorted(os.listdir(store.base / directory))
    _victim_copy(victim, directory, names)
    outside = tree(victim)

    def swap(info: BatchInfo) -> None:
        if info.index == 1:
            _swap_for_symlink(store, directory, victim / directory)

    store.retention(batch_size=1).delete_old_runs(CUTOFF, on_batch=swap)
    assert tree(victim) == outside
    assert (store.base / directory).is_symlink()


def test_a_locks_directory_swapped_during_the_orphan_sweep_leads_nowhere(store: FileHarness,
                                                                         victim: Path) -> None:
    pw = store.pyworkflow()
    store.run(add_run(pw, "run_gone", "completed", OLD))
    store.run(store.baseline_purge(CUTOFF))  # leaves orphans: steps, checkpoints, lock files...
    names = sorted(os.listdir(store.base / ".locks"))
    _victim_copy(victim, ".locks", names + ["run_other.lock", "events_x.lock"])
    outside = tree(victim)

    def swap(info: BatchInfo) -> None:
        if info.index == 1:
            _swap_for_symlink(store, ".locks", victim / ".locks")

    report = store.retention(batch_size=1).sweep_orphans(grace=timedelta(0), on_batch=swap)
    assert tree(victim) == outside and report.total > 0


def _bounded(call: Callable[[], T], fifo: Path, seconds: float = 20) -> T:
    """Run ``call`` in a thread; if it is still blocked after ``seconds``, open the FIFO to free it and fail."""
    value: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            value.append(call())
        except BaseException as exc:  # re-raised in the test thread
            error.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(10)
        pytest.fail(f"blocked on the FIFO {fifo.name}")
    if error:
        raise error[0]
    return value[0]


def test_a_fifo_in_place_of_a_parent_run_file_blocks_nothing(store: FileHarness) -> None:
    pw = store.pyworkflow()
    store.run(add_run(pw, "run_child", "completed", OLD, parent="run_fifo", depth=1))
    store.run(add_run(pw, "run_leaf", "completed", OLD, depth=3))
    fifo = store.base / "runs" / "run_fifo.json"
    os.mkfifo(fifo)
    audit = _bounded(lambda: store.retention().audit(older_than=CUTOFF), fifo)
    orphans = _bounded(lambda: store.retention().sweep_orphans(grace=timedelta(0), dry_run=True), fifo)
    report = _bounded(lambda: store.retention().delete_old_runs(CUTOFF), fifo)
    assert audit.purge is not None
    assert audit.purge.runs == report.runs == 1 and report.held == 1  # the unknown parent holds run_child
    assert report.skipped == 1 and "runs/run_fifo.json" in report.warnings[0]
    assert orphans.total == 0
    fifo.unlink()
    assert run_ids(store.inventory()) == {"run_child"}


@pytest.mark.parametrize("operation", ["purge", "dry_run", "audit", "orphans_dry_run", "orphans"])
def test_a_fifo_in_place_of_the_token_index_blocks_nothing_and_deletes_nothing(
        store: FileHarness, operation: str) -> None:
    store.run(add_run(store.pyworkflow(), "run_a", "completed", OLD))
    index = store.base / "_token_index.json"
    before = {k: v for k, v in tree(store.base).items() if k != "_token_index.json"}
    index.unlink()
    os.mkfifo(index)
    calls = {"purge": lambda b: b.delete_old_runs(CUTOFF),
             "dry_run": lambda b: b.delete_old_runs(CUTOFF, dry_run=True),
             "audit": lambda b: b.audit(older_than=CUTOFF),
             "orphans_dry_run": lambda b: b.sweep_orphans(grace=timedelta(0), dry_run=True),
             "orphans": lambda b: b.sweep_orphans(grace=timedelta(0))}
    with pytest.raises(StorageError, match="_token_index.json is not a regular file"):
        _bounded(lambda: calls[operation](store.retention()), index)
    index.unlink()
    assert tree(store.base) == before


def test_a_symlinked_token_index_lock_fails_the_purge_before_anything_is_committed(
        store: FileHarness, victim: Path) -> None:
    pw = store.pyworkflow()
    store.run(add_run(pw, "run_a", "completed", OLD))
    lock = store.base / ".locks" / "token_index.lock"
    lock.unlink()
    os.symlink(victim / "victim.lock", lock)
    before, outside = tree(store.base), tree(victim)
    with pytest.raises(StorageError, match="token_index.lock"):
        store.retention().delete_old_runs(CUTOFF)
    assert tree(store.base) == before and tree(victim) == outside


@pytest.mark.parametrize("name", ["schedule_s_old.lock", "signals_st.lock", "sub_st_x.lock"])
def test_a_symlinked_aux_lock_skips_that_record_only(store: FileHarness, victim: Path, name: str) -> None:
    write_json(store.base / "schedules" / "s_old.json",
               {"schedule_id": "s_old", "status": "deleted", "updated_at": OLD_ISO})
    write_json(store.base / "subscriptions" / "st__x.json",
               {"stream_id": "st", "step_run_id": "x", "status": "completed", "created_at": OLD_ISO})
    write_json(store.base / "signals" / "st.json", [{"signal_id": "g", "published_at": OLD_ISO}])
    os.symlink(victim / "victim.lock", store.base / ".locks" / name)
    outside = tree(victim)
    report = store.retention().delete_old_runs(CUTOFF)
    assert tree(victim) == outside
    assert report.skipped == 1 and name in report.warnings[0]
    assert sum(report.counts.values()) == 2
