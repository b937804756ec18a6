"""Live-engine safety on the real servers: writers update and create runs while a purge runs.

Two engines: raw SQL writers (many threads, runs created under old parents), and pyworkflow-engine's
own storage classes driven from another thread with their own event loop.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import DBAPIError

from tests.conformance.checks import assert_no_orphans, run_ids
from tests.sql.conftest import engine_like_pyworkflow, holds_nothing
from tests.sql.live_writer import EngineThread, event_of
from workflow_retention.planning import TERMINAL_STATUSES
from workflow_retention.seed import generate
from workflow_retention.timeutil import parse_timestamp

NOW = datetime.now(UTC).replace(microsecond=0)
CUTOFF = NOW - timedelta(days=30)


class Writers:
    """Threads doing what a busy engine does to the store: resume old runs (status and updated_at
    change, events appended), start new runs, and start child runs under old parents."""

    def __init__(self, harness: Any, backend: Any, candidates: list[str], threads: int = 3) -> None:
        self.engine = engine_like_pyworkflow(harness)
        self.backend, self.candidates = backend, candidates
        self.current: list[str] = []  # the batch being purged right now (set by on_batch)
        self.touched: dict[str, int] = {}  # run_id -> events appended after the update
        self.created: set[str] = set()
        self.children: dict[str, str] = {}  # child -> parent
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._work, args=(n,), daemon=True) for n in range(threads)]

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        self.engine.dispose()

    def _work(self, n: int) -> None:
        rng = random.Random(n)
        while not self.stop.is_set():
            try:
                batch = list(self.current)
                victim = rng.choice(batch if batch and rng.random() < 0.7 else self.candidates)
                action = rng.random()
                if action < 0.6:
                    self._resume(victim)
                elif action < 0.8:
                    self._new_run(None)
                else:
                    self._new_run(victim)
            except DBAPIError as exc:
                if "foreign key" not in str(exc).lower() and "1452" not in str(exc):
                    self.errors.append(exc)  # only "the parent just went" is an expected failure
            except BaseException as exc:
                self.errors.append(exc)
            time.sleep(rng.uniform(0, 0.003))

    def _ts(self) -> Any:
        return self.backend.db_time(datetime.now(UTC))

    def _resume(self, run_id: str) -> None:
        runs, events = self.backend.table("workflow_runs"), self.backend.table("events")
        with self.engine.begin() as conn:
            changed = conn.execute(update(runs).where(runs.c.run_id == run_id).values(
                status="running", updated_at=self._ts())).rowcount
        if not changed:
            return
        self.touched.setdefault(run_id, 0)
        with self.engine.begin() as conn:
            seq = conn.execute(select(func.coalesce(func.max(events.c.sequence), -1) + 1).where(
                events.c.run_id == run_id)).scalar_one()
            conn.execute(insert(events).values(event_id=f"evt_{uuid.uuid4().hex}", run_id=run_id, sequence=seq,
                                               type="workflow.resumed", timestamp=self._ts(), data="{}"))
        self.touched[run_id] += 1

    def _new_run(self, parent: str | None) -> None:
        runs = self.backend.table("workflow_runs")
        run_id = f"run_{uuid.uuid4().hex[:16]}"
        with self.engine.begin() as conn:
            conn.execute(insert(runs).values(
                run_id=run_id, workflow_name="live", status="running", created_at=self._ts(),
                updated_at=self._ts(), parent_run_id=parent, nesting_depth=1 if parent else 0,
                input_args="[]", input_kwargs="{}"))
        self.created.add(run_id)
        if parent:
            self.children[run_id] = parent


def expired(run: dict) -> bool:
    return run["status"] in TERMINAL_STATUSES and parse_timestamp(run["updated_at"]) < CUTOFF


def test_concurrent_writers_during_a_purge(sql: Any) -> None:
    backend = sql.retention(batch_size=15)
    seeded = list(generate(300, now=NOW, seed=11, child_share=0.2))
    backend.seed(seeded)
    before = {(i.kind, i.key): i for i in sql.inventory()}
    candidates = [s.run_id for s in seeded if expired(s.run)]

    with Writers(sql, backend, candidates) as writers:
        def on_batch(info: Any) -> None:
            assert holds_nothing(sql, backend), "a transaction or lock is held across on_batch"
            writers.current = list(info.run_ids)
            time.sleep(0.02)  # the engine gets to write between selection and deletion

        report = backend.delete_old_runs(CUTOFF, on_batch=on_batch)
        time.sleep(0.1)
    assert not writers.errors, writers.errors[:3]
    assert writers.touched and writers.created, "the writers did not get to write"

    items = sql.inventory()
    present = run_ids(items)
    assert_no_orphans(items)
    # A run the engine updated keeps everything it had, plus what was appended since.
    for run_id, appended in writers.touched.items():
        assert run_id in present, f"{run_id} was updated by the engine but deleted"
        kept = {k for k in before if before[k].run_id == run_id} - {(i.kind, i.key) for i in items}
        assert not kept, f"{run_id} lost {sorted(kept)[:5]}"
        assert sum(1 for i in items if i.kind == "events" and i.run_id == run_id) == \
            sum(1 for k in before if k[0] == "events" and before[k].run_id == run_id) + appended
    assert writers.created <= present
    assert set(writers.children.values()) <= present
    assert report.runs > 0
    assert report.changed > 0, "no run changed between selection and deletion: the race was not exercised"
    # Once the engine is quiet, one more purge finishes what the writers' changes deferred
    # (e.g. an expired child planned under a parent that was resumed) and a rerun finds nothing.
    backend.delete_old_runs(CUTOFF)
    assert backend.delete_old_runs(CUTOFF, dry_run=True).runs == 0
    assert_no_orphans(sql.inventory())


# -- pyworkflow-engine's own storage classes as the live engine --------------------------------------

#: What a write by pyworkflow may fail with when the run it names was just purged (its foreign key).
RUN_JUST_WENT = ("foreign key", "1452", "foreignkeyviolation")


class PyworkflowEngine:
    """What a busy engine does to old runs through pyworkflow's own storage API, from another thread with
    its own event loop: revive them (update_run_status RUNNING), update their context, add events and
    hooks. Remembers every write that succeeded, by run."""

    def __init__(self, harness: Any, candidates: list[str]) -> None:
        self.candidates = candidates
        self.current: list[str] = []  # the batch being purged right now (set by on_batch)
        self.added: dict[tuple[str, str], str] = {}  # (inventory kind, key) -> run_id
        self.revived: set[str] = set()
        self.contexts: set[str] = set()
        self.went: int = 0  # writes refused because the run had just been purged
        self.thread = EngineThread(harness, self.step, pause=0.002, seed=7)

    async def step(self, pw: Any, rng: random.Random) -> None:
        from pyworkflow.storage.schemas import Hook, RunStatus

        batch = list(self.current)
        run_id = rng.choice(batch if batch and rng.random() < 0.7 else self.candidates)
        action = rng.random()
        try:
            if action < 0.3:
                await pw.update_run_status(run_id, RunStatus.RUNNING)
                self.revived.add(run_id)
                event = event_of(run_id, "workflow.resumed")
                await pw.record_event(event)
                self.added[("events", event.event_id)] = run_id
            elif action < 0.5:
                await pw.update_run_context(run_id, {"step": rng.random()})
                self.contexts.add(run_id)
            elif action < 0.8:
                event = event_of(run_id, "step.started", step_id=f"step_{rng.randrange(10**6)}")
                await pw.record_event(event)
                self.added[("events", event.event_id)] = run_id
            else:
                hook_id = f"hook_live_{uuid.uuid4().hex[:8]}"
                await pw.create_hook(Hook(hook_id=hook_id, run_id=run_id, token=f"{run_id}:{hook_id}",
                                          created_at=datetime.now(UTC), name="live"))
                self.added[("hooks", f"{run_id}:{hook_id}")] = run_id
        except Exception as exc:
            if not any(s in f"{type(exc).__name__} {exc}".lower() for s in RUN_JUST_WENT):
                raise
            self.went += 1


def test_pyworkflows_own_storage_writes_during_a_purge_of_a_thousand_runs(sql: Any) -> None:
    """Nothing is lost from a run that is not deleted; a rerun leaves zero orphans."""
    backend = sql.retention(batch_size=40)
    seeded = list(generate(2000, now=NOW, seed=17, child_share=0.2))
    backend.seed(seeded)
    candidates = [s.run_id for s in seeded if expired(s.run)]
    assert len(candidates) >= 1100
    before = {(i.kind, i.key): i for i in sql.inventory()}
    engine = PyworkflowEngine(sql, candidates)

    def on_batch(info: Any) -> None:
        assert holds_nothing(sql, backend), "a transaction or lock is held across on_batch"
        engine.current = list(info.run_ids)
        time.sleep(0.01)  # the engine gets to write between selection and deletion

    with engine.thread:
        report = backend.delete_old_runs(CUTOFF, on_batch=on_batch)
        time.sleep(0.1)
    print(f"{sql.name}: purged {report.runs}, changed {report.changed}, held {report.held}; engine: "
          f"{engine.thread.calls} calls, {len(engine.revived)} revived, {len(engine.contexts)} contexts, "
          f"{len(engine.added)} rows added, {engine.went} refused (run gone), slowest {engine.thread.slowest:.2f}s")
    assert not engine.thread.errors, engine.thread.errors[:3]
    assert engine.revived and engine.contexts and engine.added, "the engine did not get to write"
    assert report.runs >= 1000 and report.changed > 0, "no run changed between selection and deletion"

    items = sql.inventory()
    present = run_ids(items)
    now = {(i.kind, i.key) for i in items}
    for run_id in present:
        lost = {key for key, item in before.items() if item.run_id == run_id} - now
        assert not lost, f"{run_id} is kept but lost {sorted(lost)[:5]}"
    added_lost = {key for key, run_id in engine.added.items() if run_id in present} - now
    assert not added_lost, f"writes of kept runs lost: {sorted(added_lost)[:5]}"
    assert {r for r in engine.contexts if r in before and ("runs", r) in now} <= present
    # Once the engine is quiet, one more purge finishes what the engine's writes deferred.
    backend.delete_old_runs(CUTOFF)
    assert backend.delete_old_runs(CUTOFF, dry_run=True).runs == 0
    assert_no_orphans(sql.inventory())
