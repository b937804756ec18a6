"""Memory-backend details the shared conformance suite does not reach."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from workflow_retention.backends.memory import MemoryBackend, MemoryStore
from workflow_retention.seed import generate


def test_a_colon_run_ids_checkpoints_survive_the_purge_and_the_sweep_of_its_prefix_run() -> None:
    now = datetime.now(UTC)
    store = MemoryStore()
    backend = MemoryBackend(store)
    seeded = list(generate(2, now=now, seed=3))
    backend.seed(seeded)
    victim = seeded[0]
    for seed in seeded:
        store._runs[seed.run_id].status = "completed"
        store._runs[seed.run_id].updated_at = now - timedelta(days=90)
        store._runs[seed.run_id].parent_run_id = None
    hostile = f"{victim.run_id}:evil"
    store._runs[hostile] = type(store._runs[victim.run_id])(**{**vars(store._runs[victim.run_id]),
                                                                  "run_id": hostile, "status": "running"})
    store._checkpoints[f"{hostile}:step_1"] = {"keep": True}
    backend.delete_old_runs(now - timedelta(days=30))
    assert victim.run_id not in store._runs and f"{hostile}:step_1" in store._checkpoints
    backend.sweep_orphans(grace=timedelta(0))
    assert f"{hostile}:step_1" in store._checkpoints


def test_on_batch_runs_with_the_engines_lock_released() -> None:
    """The fencing callback (a Redis round trip in the Celery task) must never block the live engine."""
    import threading

    store = MemoryStore()
    backend = MemoryBackend(store, batch_size=10)
    backend.seed(generate(60, now=datetime.now(UTC), seed=3))
    free: list[bool] = []

    def engine() -> None:
        if store._lock.acquire(timeout=1):
            store._lock.release()
            free.append(True)
        else:
            free.append(False)

    def on_batch(info) -> None:
        thread = threading.Thread(target=engine)
        thread.start()
        thread.join()

    report = backend.delete_old_runs(datetime.now(UTC) - timedelta(days=30), on_batch=on_batch)
    assert report.runs and free and all(free)


def test_an_event_appended_after_the_archive_keeps_the_run(tmp_path, monkeypatch) -> None:
    """The archive gathers a batch outside the store's lock; an event the engine appends before the delete
    (a write that leaves the run's version alone) must not go unarchived: the run is kept (issue 20)."""
    import copy

    from pyworkflow.storage.memory import InMemoryStorageBackend

    from workflow_retention.archive import open_archive
    from workflow_retention.archiving import Archiving

    now = datetime.now(UTC)
    store = InMemoryStorageBackend()
    backend = MemoryBackend(store, batch_size=2)
    seeded = list(generate(4, now=now, seed=3))
    backend.seed(seeded)
    for seed in seeded:
        run = store._runs[seed.run_id]
        run.status, run.updated_at, run.parent_run_id = "completed", now - timedelta(days=90), None
    victim = next(s.run_id for s in seeded if store._events.get(s.run_id))
    before = len(store._events[victim])
    original = Archiving.batch

    def archive_then_engine_writes(self: Archiving, ids) -> None:
        original(self, ids)
        if victim in ids:
            with store._lock:  # as the engine's record_event does
                late = copy.deepcopy(store._events[victim][-1])
                late.sequence = before + 1
                store._events[victim].append(late)

    monkeypatch.setattr(Archiving, "batch", archive_then_engine_writes)
    report = backend.delete_old_runs(now - timedelta(days=30), archive=open_archive(f"file://{tmp_path}"))
    assert victim in store._runs and len(store._events[victim]) == before + 1
    assert report.changed == 1 and report.runs == 3
