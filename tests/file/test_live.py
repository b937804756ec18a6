"""The purge against a live engine: the engine's run lock, and a separate engine process writing meanwhile."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta

from filelock import FileLock

from tests.conformance.checks import assert_no_orphans, items_of, run_ids
from tests.harness.file import FileHarness
from tests.scenario import CUTOFF, OLD, add_run, build
from workflow_retention.base import BatchInfo


def test_a_run_whose_lock_the_engine_holds_is_left_with_its_ancestors(store: FileHarness) -> None:
    pw = store.pyworkflow()
    store.run(add_run(pw, "run_parent", "completed", OLD))
    store.run(add_run(pw, "run_child", "completed", OLD, parent="run_parent", depth=1))
    store.run(add_run(pw, "run_other", "completed", OLD))
    child_items = items_of(store.inventory(), {"run_child"})
    held, release = threading.Event(), threading.Event()

    def engine() -> None:
        with FileLock(str(store.base / ".locks" / "run_child.lock")):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=engine)
    thread.start()
    held.wait(5)
    try:
        report = store.retention(lock_timeout=0.2).delete_old_runs(CUTOFF)
    finally:
        release.set()
        thread.join()
    assert run_ids(store.inventory()) == {"run_parent", "run_child"}
    assert items_of(store.inventory(), {"run_child"}) == child_items
    assert report.runs == 1 and report.skipped == 1 and report.held == 1
    assert "stayed held" in report.warnings[0]


def test_a_run_changed_before_its_depth_pass_holds_its_parent(store: FileHarness) -> None:
    """The grandchild's batch comes first; meanwhile the engine updates the child."""
    from pyworkflow.storage.schemas import RunStatus

    scenario = store.run(build(store, store.pyworkflow()))
    pw = store.pyworkflow()
    seen: list[tuple[str, ...]] = []

    def engine(info: BatchInfo) -> None:
        seen.append(info.run_ids)
        if info.index == 1:
            assert info.run_ids == ("run_tree_grandchild",)
            store.run(pw.update_run_status("run_tree_child", RunStatus.FAILED))

    report = store.retention().delete_old_runs(CUTOFF, on_batch=engine)
    assert not any("run_tree_child" in ids or "run_tree_parent" in ids for ids in seen)
    remaining = run_ids(store.inventory())
    assert remaining == scenario.kept | scenario.held | {"run_tree_child", "run_tree_parent"}
    assert report.changed == 1 and report.held == len(scenario.held) + 1
    assert_no_orphans(store.inventory())


ENGINE = textwrap.dedent("""
    import asyncio, os, sys, time
    from pyworkflow.storage.file import FileStorageBackend
    from pyworkflow.storage.schemas import RunStatus

    async def main(base, ids, go, seconds):
        pw = FileStorageBackend(base_path=base)
        open(go + ".ready", "w").close()
        while not os.path.exists(go):
            time.sleep(0.0005)
        end, touched = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            for run_id in ids:
                try:
                    await pw.update_run_status(run_id, RunStatus.COMPLETED)
                    touched += 1
                except (ValueError, OSError):
                    pass  # the purge got there first
        print(touched)

    asyncio.run(main(sys.argv[1], sys.argv[2].split(","), sys.argv[3], float(sys.argv[4])))
""")


def test_engine_process_updating_runs_during_the_purge(store: FileHarness) -> None:
    """Every run touched by the engine is either completely gone or completely there."""
    pw = store.pyworkflow()
    ids = [f"run_{n:03d}" for n in range(60)]
    for run_id in ids:
        store.run(add_run(pw, run_id, "completed", OLD, hooks=(f"hook_{run_id}",)))
    hot = ids[::3]
    before = store.inventory()
    go = store.root / "go"
    engine = subprocess.Popen([sys.executable, "-c", ENGINE, str(store.base), ",".join(hot), str(go), "1"],
                              stdout=subprocess.PIPE, text=True)

    def batch(info: BatchInfo) -> None:  # the selection pass is over: let the engine loose
        go.touch()
        time.sleep(0.01)

    try:
        while not go.with_suffix(".ready").exists() and engine.poll() is None:
            time.sleep(0.01)
        report = store.retention(batch_size=2).delete_old_runs(CUTOFF, on_batch=batch)
    finally:
        touched = int(engine.communicate(timeout=60)[0])
    items = store.inventory()
    remaining = run_ids(items)
    # A run the engine updated is no longer expired: it must have survived, whole.
    assert touched > 0 and remaining and remaining <= set(hot)
    assert report.runs == len(ids) - len(remaining)
    for run_id in hot:
        now = set(items_of(items, {run_id}))
        assert not now or now == set(items_of(before, {run_id})), f"{run_id} is half-deleted"
    assert_no_orphans(items)
    # Whatever the engine re-created after its run was purged is repaired by the orphan sweep.
    store.retention().sweep_orphans(grace=timedelta(0))
    assert_no_orphans(store.inventory())
