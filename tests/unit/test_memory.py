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
