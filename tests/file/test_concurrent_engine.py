"""A busy engine beside a purge of over a thousand runs, file-store specific and aggressive.

pyworkflow-engine's own ``FileStorageBackend`` runs in another thread with its
own event loop throughout the purge. It

* rewrites, in place and without pause, the big contexts (256 KB to 4 MB) of
  running children of expired parents (the torn reads of issue 14.3);
* revives expired runs (``update_run_status(RUNNING)``), preferring the batch
  being purged, then records events, creates hooks, rewrites their context and
  starts running children under them;
* at every batch boundary, before the batch is committed, starts a running
  child under one of the batch's own (still expired) runs.

The judge reads the raw store before and after: no run that is still there
lost anything, nothing the engine wrote to a run it kept alive is missing,
every surviving child still has its parent, the holds are exact, and a rerun
plus the orphan sweep leave no orphan.
"""

from __future__ import annotations

import asyncio
import queue
import random
import threading
import time
import traceback
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Self

from tests.conformance.checks import assert_no_orphans, run_ids
from tests.harness.base import Item
from tests.harness.file import FileHarness
from tests.scenario import CUTOFF, NOW
from workflow_retention.base import BatchInfo
from workflow_retention.planning import TERMINAL_STATUSES
from workflow_retention.seed import generate
from workflow_retention.timeutil import parse_timestamp

RUNS = 1500
BIG_CHILDREN = 24
SIZES = (256 << 10, 1 << 20, 2 << 20, 4 << 20)


@dataclass
class Kept:
    events: int = 0
    hooks: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)


class Engine:
    """pyworkflow's FileStorageBackend on the store, in its own thread and event loop."""

    def __init__(self, store: FileHarness, expired: list[str], big: dict[str, int], seed: int) -> None:
        self.store, self.expired, self.big = store, expired, big
        self.rng = random.Random(seed)
        self.current: list[str] = []
        self.kept: dict[str, Kept] = {}
        self.attempted: set[str] = set()
        self.children_of_expired: dict[str, str] = {}  # child -> the expired parent it was started under
        self.requests: queue.Queue = queue.Queue()
        self.errors: list[str] = []
        self.actions = 0
        self.rewrites = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    def on_batch(self, info: BatchInfo) -> None:
        """Between selection and commit: the engine starts a running child under one run of this batch."""
        self.current = list(info.run_ids)
        done = threading.Event()
        self.requests.put((list(info.run_ids), done))
        assert done.wait(30), "the engine did not answer"

    # -- the engine's thread ---------------------------------------------------------------

    def _main(self) -> None:
        from pyworkflow.storage.file import FileStorageBackend

        loop = asyncio.new_event_loop()
        try:
            pw = FileStorageBackend(base_path=str(self.store.base))
            while not self._stop.is_set():
                try:
                    batch, done = self.requests.get_nowait()
                except queue.Empty:
                    loop.run_until_complete(self._act(pw))
                else:
                    try:
                        loop.run_until_complete(self._child_under_batch(pw, batch))
                    finally:
                        done.set()
                self.actions += 1
        except BaseException:  # reported to the test
            self.errors.append(traceback.format_exc())
        finally:
            loop.close()

    async def _child_under_batch(self, pw: Any, batch: list[str]) -> None:
        from pyworkflow.storage.schemas import RunStatus, WorkflowRun

        for parent_id in self.rng.sample(batch, len(batch)):
            parent = await pw.get_run(parent_id)
            if parent is None or parent.status.value not in TERMINAL_STATUSES or parent.nesting_depth >= 3:
                continue
            child = f"run_late_{uuid.uuid4().hex[:12]}"
            await pw.create_run(WorkflowRun(run_id=child, workflow_name="late_child", status=RunStatus.RUNNING,
                                            parent_run_id=parent_id, nesting_depth=parent.nesting_depth + 1))
            self.children_of_expired[child] = parent_id
            return

    async def _act(self, pw: Any) -> None:
        roll = self.rng.random()
        if roll < 0.4:
            run_id = self.rng.choice(sorted(self.big))
            await pw.update_run_context(run_id, {"blob": "y" * self.big[run_id], "n": self.rewrites})
            self.rewrites += 1
        elif roll < 0.7 and self.kept:
            await self._write(pw, self.rng.choice(sorted(self.kept)))
        else:
            batch = list(self.current)
            pool = batch if batch and self.rng.random() < 0.8 else self.expired
            victim = self.rng.choice(pool)
            if victim not in self.attempted:
                await self._revive(pw, victim)

    async def _revive(self, pw: Any, run_id: str) -> None:
        from pyworkflow.storage.schemas import RunStatus

        self.attempted.add(run_id)
        try:
            await pw.update_run_status(run_id, RunStatus.RUNNING)
        except (ValueError, FileNotFoundError):
            return  # the purge got there first: the run is gone, nothing was revived
        self.kept[run_id] = Kept()
        await self._write(pw, run_id)

    async def _write(self, pw: Any, run_id: str) -> None:
        from pyworkflow.engine.events import Event, EventType
        from pyworkflow.storage.schemas import Hook, RunStatus, WorkflowRun

        kept, roll = self.kept[run_id], self.rng.random()
        if roll < 0.35:
            await pw.record_event(Event(run_id=run_id, type=EventType.WORKFLOW_STARTED, data={"n": kept.events}))
            kept.events += 1
        elif roll < 0.6:
            hook_id = f"hook_live_{len(kept.hooks) + 1}"
            await pw.create_hook(Hook(hook_id=hook_id, run_id=run_id, token=f"{run_id}:{hook_id}", name="live"))
            kept.hooks.append(hook_id)
        elif roll < 0.85:
            await pw.update_run_context(run_id, {"blob": "z" * self.rng.randint(1 << 10, 512 << 10)})
        else:
            parent = await pw.get_run(run_id)
            child = f"run_kid_{uuid.uuid4().hex[:12]}"
            await pw.create_run(WorkflowRun(run_id=child, workflow_name="kid", status=RunStatus.RUNNING,
                                            parent_run_id=run_id, nesting_depth=parent.nesting_depth + 1))
            kept.children.append(child)


def _by_run(items: list[Item]) -> dict[str, dict[tuple[str, str], str]]:
    out: dict[str, dict[tuple[str, str], str]] = defaultdict(dict)
    for i in items:
        if i.run_id is not None:
            out[i.run_id][(i.kind, i.key)] = i.digest
    return out


def _runs(store: FileHarness) -> dict[str, dict]:
    import json

    out = {}
    for path in (store.base / "runs").glob("*.json"):
        out[path.name[:-5]] = json.loads(path.read_text())
    return out


def _expired(run: dict) -> bool:
    return run["status"] in TERMINAL_STATUSES and parse_timestamp(run["updated_at"]) < CUTOFF


def _seed(store: FileHarness) -> tuple[list[str], dict[str, int]]:
    """1,500 generated runs, plus running children with big contexts under expired depth-0 parents."""
    from pyworkflow.storage.schemas import RunStatus, WorkflowRun

    seeds = list(generate(RUNS, now=NOW, seed=31, max_age_days=365, child_share=0.3))
    store.retention(batch_size=500).seed(seeds)
    expired = sorted(s.run_id for s in seeds if _expired(s.run))
    roots = [s.run_id for s in seeds if _expired(s.run) and s.run["nesting_depth"] == 0][:BIG_CHILDREN]
    big: dict[str, int] = {}
    pw = store.pyworkflow()
    for n, parent in enumerate(roots):
        child = f"run_big_{n:02d}"
        size = SIZES[n % len(SIZES)]
        store.run(pw.create_run(WorkflowRun(run_id=child, workflow_name="big", status=RunStatus.RUNNING,
                                            parent_run_id=parent, nesting_depth=1,
                                            context={"blob": "x" * size})))
        big[child] = size
    return expired, big


def test_a_busy_engine_loses_nothing_holds_are_exact_and_a_rerun_leaves_no_orphans(store: FileHarness) -> None:
    expired, big = _seed(store)
    assert len(expired) >= 1000
    before = _by_run(store.inventory())

    started = time.monotonic()
    with Engine(store, expired, big, seed=5) as engine:
        report = store.retention(batch_size=50).delete_old_runs(CUTOFF, on_batch=engine.on_batch)
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    assert not engine.errors, engine.errors[:3]
    assert engine.rewrites >= 20 and len(engine.kept) >= 10 and len(engine.children_of_expired) >= 10, (
        engine.rewrites, len(engine.kept), len(engine.children_of_expired))

    after_items = store.inventory()
    after = _by_run(after_items)
    runs = _runs(store)
    # 1. Nothing of a run that is still there was lost (its record may have been rewritten by the engine).
    for run_id in runs:
        lost = {k: v for k, v in before.get(run_id, {}).items()
                if k[0] != "runs" and after[run_id].get(k) != v}
        assert not lost, f"{run_id} lost {sorted(lost)[:5]}"
    # 2. Everything the engine wrote to a run it kept alive is there.
    for run_id, kept in engine.kept.items():
        assert run_id in runs
        events = sum(1 for kind, _ in after[run_id] if kind == "events")
        assert events >= sum(1 for kind, _ in before[run_id] if kind == "events") + kept.events
        assert {("hooks", f"{run_id}__{h}") for h in kept.hooks} <= set(after[run_id])
        assert set(kept.children) <= set(runs)
    assert set(big) | set(engine.children_of_expired) <= set(runs)
    # 3. Every surviving run's parent survives; 4. the holds are exact: an expired run is kept only for a child.
    parents = {r["parent_run_id"] for r in runs.values() if r.get("parent_run_id")}
    assert parents <= set(runs), sorted(parents - set(runs))[:5]
    still_expired = {run_id for run_id, r in runs.items() if _expired(r)}
    assert still_expired <= parents, sorted(still_expired - parents)[:5]
    assert len(still_expired) <= report.held <= len(still_expired) + len(engine.kept)
    assert report.skipped == 0, report.warnings
    # 5. A rerun deletes nothing new, holds exactly the same; the orphan sweep then leaves nothing behind.
    again = store.retention().delete_old_runs(CUTOFF)
    assert (again.runs, again.held, again.skipped) == (0, len(still_expired), 0)
    store.retention().sweep_orphans(grace=timedelta(0))
    items = store.inventory()
    assert_no_orphans(items)
    assert run_ids(items) == set(runs)
    print(f"purge beside the engine: {elapsed:.1f}s, {report.runs} runs, held {report.held}, "
          f"changed {report.changed}, engine actions {engine.actions}, rewrites {engine.rewrites}, "
          f"revived {len(engine.kept)}, late children {len(engine.children_of_expired)}")
