"""pyworkflow-engine's own storage class writing to a store while a purge runs, and heavy stores to purge.

:class:`EngineThread` runs pyworkflow's ``SQLiteStorageBackend`` /
``PostgresStorageBackend`` / ``MySQLStorageBackend`` (built as the test harness
builds it) in a thread of its own with its own event loop, exactly as a worker
process beside the purge would, and records every error and the slowest call.

``python -m tests.sql.live_writer --runs 1000 --events 1000`` measures one SQLite
purge of runs with many events beside pyworkflow's ``record_event`` (a live run):
the longest write transaction of the purge, the slowest ``record_event`` and
every error it raised (``database is locked`` when a transaction outlasts the
engine's 5 s busy timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event

NOW = datetime.now(UTC).replace(microsecond=0)
CUTOFF = NOW - timedelta(days=30)
OLD = NOW - timedelta(days=40)

Step = Callable[[Any, random.Random], Awaitable[None]]


class EngineThread:
    """Calls ``step(pw, rng)`` over and over, from another thread with its own event loop."""

    def __init__(self, harness: Any, step: Step, pause: float = 0.002, seed: int = 1) -> None:
        self.harness, self.step, self.pause = harness, step, pause
        self.rng = random.Random(seed)
        self.errors: list[BaseException] = []
        self.calls = 0
        self.slowest = 0.0
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> EngineThread:
        self._thread.start()
        if not self.ready.wait(60):
            raise RuntimeError("pyworkflow's storage did not connect")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            pw = loop.run_until_complete(self.harness._make_pyworkflow())  # bound to this loop
        except BaseException as exc:
            self.errors.append(exc)
            self.ready.set()
            return
        self.ready.set()
        try:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    loop.run_until_complete(self.step(pw, self.rng))
                except BaseException as exc:
                    self.errors.append(exc)
                self.slowest = max(self.slowest, time.perf_counter() - started)
                self.calls += 1
                time.sleep(self.rng.uniform(0, self.pause))
        finally:
            try:
                loop.run_until_complete(pw.disconnect())
            finally:
                loop.close()


def event_of(run_id: str, kind: str = "step.started", **data: Any) -> Any:
    from pyworkflow.engine.events import Event, EventType

    return Event(run_id=run_id, type=EventType(kind), timestamp=datetime.now(UTC), data=data)


class WriteClock:
    """The duration of every write transaction of a retention backend (BEGIN to COMMIT/ROLLBACK): wall
    clock (``durations``) and the CPU time of the thread that ran it (``cpu``; on SQLite the whole
    transaction's work, as the database runs in that thread; on a server only the client's share)."""

    def __init__(self, backend: Any) -> None:
        self.durations: list[float] = []
        self.cpu: list[float] = []
        self._open: dict[int, tuple[float, float]] = {}
        writes = backend.dialect.write_options()
        engine = backend.engine

        def begin(conn: Any) -> None:
            options = conn.get_execution_options()
            if all(options.get(k) == v for k, v in writes.items()):
                self._open[id(conn)] = (time.perf_counter(), time.thread_time())

        def end(conn: Any) -> None:
            started = self._open.pop(id(conn), None)
            if started is not None:
                self.durations.append(time.perf_counter() - started[0])
                self.cpu.append(time.thread_time() - started[1])

        event.listen(engine, "begin", begin)
        event.listen(engine, "commit", end)
        event.listen(engine, "rollback", end)

    @property
    def longest(self) -> float:
        return max(self.durations, default=0.0)


def fill_heavy(harness: Any, runs: int, events: int, prefix: str = "run_heavy") -> list[str]:
    """``runs`` expired runs with ``events`` events each, written raw (fast), in the engine's layout."""
    backend = harness.retention()
    old = backend.db_time(OLD)
    ids = [f"{prefix}_{i:05d}" for i in range(runs)]
    runs_t, events_t = backend.table("workflow_runs"), backend.table("events")
    with harness.raw().begin() as conn:
        conn.execute(runs_t.insert(), [{"run_id": r, "workflow_name": "heavy", "status": "completed",
                                        "created_at": old, "updated_at": old, "input_args": "[]",
                                        "input_kwargs": "{}", "nesting_depth": 0} for r in ids])
        for run_id in ids:
            conn.execute(events_t.insert(), [
                {"event_id": f"evt_{run_id}_{n}", "run_id": run_id, "sequence": n, "type": "step.completed",
                 "timestamp": old, "data": '{"step_id": "s"}', "step_id": "s"} for n in range(events)])
    return ids


def live_run(harness: Any, run_id: str = "run_live_writer") -> str:
    from tests.scenario import add_run

    harness.run(add_run(harness.pyworkflow(), run_id, "running", NOW, extras=False))
    return run_id


def measure(runs: int, events: int, hold_s: float | None = None, **options: Any) -> dict[str, Any]:
    """One SQLite purge of ``runs`` x ``events`` beside pyworkflow's record_event on a live run.

    ``hold_s``: seconds of write lock after which the purge yields (``float("inf")``: never, to see
    what back-to-back batches do to the engine's writers).
    """
    from tests.harness.sqlite import SQLiteHarness

    with tempfile.TemporaryDirectory() as tmp:
        harness = SQLiteHarness(Path(tmp))
        try:
            harness.pyworkflow()
            started = time.perf_counter()
            fill_heavy(harness, runs, events)
            filled = time.perf_counter() - started
            live = live_run(harness)

            async def record(pw: Any, rng: random.Random) -> None:
                await pw.record_event(event_of(live))

            backend = harness.retention(**options)
            if hold_s is not None:
                backend.dialect.hold_s = hold_s
            clock = WriteClock(backend)
            report, failure = None, None
            with EngineThread(harness, record, pause=0.01) as engine:
                time.sleep(0.2)
                started = time.perf_counter()
                try:
                    report = backend.delete_old_runs(CUTOFF)
                except Exception as exc:
                    failure = exc
                seconds = time.perf_counter() - started
                time.sleep(0.2)
        finally:
            harness.close()
    return {"runs": report.runs if report else None, "events": report.counts["events"] if report else None,
            "purge_s": round(seconds, 2), "purge_error": str(failure)[:200] if failure else None,
            "fill_s": round(filled, 1), "write_transactions": len(clock.durations),
            "longest_write_tx_s": round(clock.longest, 3), "batches": report.batches if report else None,
            "record_event_calls": engine.calls, "slowest_record_event_s": round(engine.slowest, 3),
            "record_event_errors": len(engine.errors),
            "first_error": repr(engine.errors[0])[:200] if engine.errors else None}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument("--hold-s", type=float, default=None, help="yield the write lock after this long (inf: never)")
    args = p.parse_args(argv)
    options = {k: v for k, v in (("batch_size", args.batch_size), ("max_rows", args.max_rows)) if v is not None}
    print(json.dumps({"command": "python -m tests.sql.live_writer " + " ".join(argv or []), **options,
                      **measure(args.runs, args.events, hold_s=args.hold_s, **options)}))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
