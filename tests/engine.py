"""A concurrent engine for the tests: pyworkflow-engine's own storage class, in another thread, during a purge.

It does what a busy engine does to old runs while retention runs beside it:
it revives expired runs (``update_run_status(RUNNING)``, what recovery of an
``interrupted`` run does), rewrites their context (``update_run_context``; the
file store rewrites the run file in place), records events, creates hooks,
and starts running child runs under runs it revived. It prefers the runs of
the batch being purged right now (``on_batch`` tells it), so its writes land
between selection and deletion.

What it wrote is recorded so the judge can check that nothing of a run the
engine kept alive was lost. A revival counts only when the engine then reads
the run back whole (its workflow name included): an unconditional upsert that
lands after the purge deleted the run (Cassandra, DynamoDB) re-creates a
partial "ghost" record; such runs are only in ``unconfirmed``.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import traceback
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.harness.base import Harness
from workflow_retention.base import BatchInfo
from workflow_retention.planning import TERMINAL_STATUSES


@dataclass
class Writes:
    """What the engine wrote to one run after reviving it."""

    events: int = 0
    hooks: list[str] = field(default_factory=list)
    contexts: int = 0
    children: list[str] = field(default_factory=list)
    in_flight: bool = False  # revived while its batch was being purged


class ConcurrentEngine:
    def __init__(self, harness: Harness, candidates: Iterable[str], *, seed: int = 0,
                 context_bytes: int = 2048, pause: float = 0.002) -> None:
        self.harness = harness
        self.candidates = sorted(candidates)
        self.rng = random.Random(seed)
        self.context_bytes, self.pause = context_bytes, pause
        self.current: list[str] = []
        self._fresh_batch = False  # a batch arrived that the engine has not tried to revive from yet
        self.revived: dict[str, Writes] = {}
        self.attempted: set[str] = set()
        self.errors: list[str] = []
        self.actions = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="concurrent-engine", daemon=True)
        self._ready = threading.Event()
        self.acts_per_batch = 4

    # -- the test's side ------------------------------------------------------------------

    def __enter__(self) -> ConcurrentEngine:
        self._thread.start()
        if not self._ready.wait(120):
            raise RuntimeError("the concurrent engine did not start")
        if self.errors:
            raise RuntimeError(self.errors[0])
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    def on_batch(self, info: BatchInfo) -> None:
        """Point the engine at this batch and let it act a few times before the batch is deleted.

        A store that selects and deletes under one lock (memory) keeps the engine
        waiting: the wait then ends at its deadline.
        """
        self.current = list(info.run_ids)
        self._fresh_batch = True
        start, deadline = self.actions, time.monotonic() + 0.25
        while self.actions < start + self.acts_per_batch and time.monotonic() < deadline:
            time.sleep(0.001)

    @property
    def unconfirmed(self) -> set[str]:
        """Runs the engine tried to revive but could not read back whole: gone first, or left as a ghost."""
        return self.attempted - set(self.revived)

    @property
    def kept_alive(self) -> set[str]:
        """Runs the engine revived (whole) and the children it started under them."""
        return set(self.revived) | {c for w in self.revived.values() for c in w.children}

    # -- the engine's side ----------------------------------------------------------------

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        pw = None
        try:
            pw = loop.run_until_complete(self.harness.make_engine())
            self._ready.set()
            while not self._stop.is_set():
                loop.run_until_complete(self._act(pw))
                self.actions += 1
                time.sleep(self.rng.uniform(0, self.pause))
        except BaseException:
            self.errors.append(traceback.format_exc())
            self._ready.set()
        finally:
            if pw is not None:
                try:
                    loop.run_until_complete(self.harness.close_engine(pw))
                except Exception:
                    self.errors.append(traceback.format_exc())
            loop.close()

    async def _act(self, pw: Any) -> None:
        batch = list(self.current)
        fresh, self._fresh_batch = self._fresh_batch, False
        if not fresh and self.revived and self.rng.random() < 0.4:
            await self._write(pw, self.rng.choice(sorted(self.revived)))
            return
        victim = self.rng.choice(batch if batch and (fresh or self.rng.random() < 0.3) else self.candidates)
        if victim not in self.revived and victim not in self.attempted:
            await self._revive(pw, victim, in_flight=victim in batch)

    async def _revive(self, pw: Any, run_id: str, *, in_flight: bool) -> None:
        from pyworkflow.storage.schemas import RunStatus

        try:
            run = await pw.get_run(run_id)
        except Exception:
            return
        if run is None or getattr(run.status, "value", run.status) not in TERMINAL_STATUSES:
            return
        self.attempted.add(run_id)
        try:
            await pw.update_run_status(run_id, RunStatus.RUNNING)
            again = await pw.get_run(run_id)
        except Exception:  # the run went meanwhile (file: not found; DynamoDB: a partial record)
            again = None
        if again is not None and again.workflow_name and again.status == RunStatus.RUNNING:
            self.revived[run_id] = Writes(in_flight=in_flight)
            await self._write(pw, run_id)

    async def _write(self, pw: Any, run_id: str) -> None:
        """One write to a run the engine keeps alive; a failure here means the run lost its record."""
        from pyworkflow.engine.events import Event, EventType
        from pyworkflow.storage.schemas import Hook, RunStatus, WorkflowRun

        writes = self.revived[run_id]
        roll = self.rng.random()
        try:
            if roll < 0.4:
                await pw.record_event(Event(run_id=run_id, type=EventType.WORKFLOW_STARTED,
                                            data={"resumed": writes.events}))
                writes.events += 1
            elif roll < 0.65:
                hook_id = f"hook_live_{len(writes.hooks) + 1}"
                await pw.create_hook(Hook(hook_id=hook_id, run_id=run_id, token=f"{run_id}:{hook_id}",
                                          name="live"))
                writes.hooks.append(hook_id)
            elif roll < 0.9:
                await pw.update_run_context(run_id, {"blob": "x" * self.rng.randint(1, self.context_bytes),
                                                     "n": writes.contexts})
                writes.contexts += 1
            else:
                parent = await pw.get_run(run_id)
                child = f"run_child_{uuid.uuid4().hex[:12]}"
                await pw.create_run(WorkflowRun(run_id=child, workflow_name="live_child", status=RunStatus.RUNNING,
                                                parent_run_id=run_id,
                                                nesting_depth=(parent.nesting_depth or 0) + 1 if parent else 1))
                writes.children.append(child)
        except Exception:
            self.errors.append(f"write to kept run {run_id}: {traceback.format_exc()}")
