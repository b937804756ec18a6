"""Writing :mod:`workflow_retention.seed` runs exactly as pyworkflow-engine 0.4.0's FileStorageBackend does.

Same files, names, JSON formatting (``indent=2``; events one compact line
each, numbered from 1) and the lock files the engine leaves behind. Each
file's mtime is set to the time the engine would have written it, so the
orphan sweep's grace period sees a realistic store. Files are written through
the store's directory descriptors, like everything else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from workflow_retention.backends.file.client import Store
from workflow_retention.backends.file.layout import (
    BASE,
    CHECKPOINT_PREFIX,
    CHECKPOINTS,
    DIRECTORIES,
    EVENTS,
    HOOKS,
    JSON,
    LOCKS,
    RUNS,
    STEPS,
    TOKEN_INDEX,
    TOKEN_INDEX_LOCK,
    events_file,
    flag_file,
    hook_lock,
    is_component,
    lock_file,
    pair_file,
    run_locks,
)
from workflow_retention.exceptions import StorageError
from workflow_retention.planning import is_safe_run_id
from workflow_retention.seed import SeedRun
from workflow_retention.timeutil import parse_timestamp


def prepare(base: Path) -> None:
    """Create the directories, as the engine's constructor does."""
    for name in DIRECTORIES:
        os.makedirs(base / name, exist_ok=True)


class SeedWriter:
    """Writes batches of seed runs; the token index is kept in memory between batches and rewritten after each."""

    def __init__(self, store: Store) -> None:
        index = store.read_token_index()
        if isinstance(index, str):
            raise StorageError(f"cannot seed {store.base}: {TOKEN_INDEX} is corrupt ({index})")
        self.index: dict[str, object] = index
        self.store = store

    def write(self, store: Store, runs: list[SeedRun]) -> None:
        self.store = store
        for seed in runs:
            self._run(seed)
        with store.lock(TOKEN_INDEX_LOCK, 60.0):
            store.rewrite(BASE, TOKEN_INDEX, json.dumps(self.index, indent=2).encode())

    def _run(self, seed: SeedRun) -> None:
        write, run_id = self.store.write_new, seed.run_id
        _check_names(seed)
        if self.store.exists(RUNS, f"{run_id}{JSON}"):  # the engine never rewrites a run on creation; nor do we
            raise StorageError(f"cannot seed {self.store.base}: run {run_id} already exists (seed --append "
                               "draws fresh ids)")
        when = parse_timestamp(seed.run["updated_at"]).timestamp()
        write(RUNS, f"{run_id}{JSON}", _pretty(seed.run), when)
        run_lock, events_lock, cancel_lock = run_locks(run_id)
        write(LOCKS, run_lock, b"", when)
        lines = [json.dumps({"event_id": e["event_id"], "run_id": e["run_id"], "type": e["type"], "sequence": n,
                             "timestamp": e["timestamp"], "data": e["data"]}) + "\n"
                 for n, e in enumerate(seed.events, start=1)]
        if lines:
            write(EVENTS, events_file(run_id), "".join(lines).encode(), when)
            write(LOCKS, events_lock, b"", when)
        for step in seed.steps:
            write(STEPS, f"{step['step_id']}{JSON}", _pretty(step), when)
        for hook in seed.hooks:
            write(HOOKS, pair_file(run_id, hook["hook_id"]), _pretty(hook), when)
            self.index[hook["token"]] = f"{run_id}:{hook['hook_id']}"
            if hook.get("status") != "pending":  # update_hook_status took the hook's lock
                write(LOCKS, hook_lock(hook["hook_id"]), b"", when)
        for step_run_id, data in seed.checkpoints.items():
            write(CHECKPOINTS, f"{step_run_id}{JSON}", _pretty(data), when)
            write(LOCKS, lock_file(CHECKPOINT_PREFIX, step_run_id), b"", when)
        if seed.cancel_flag:
            write(RUNS, flag_file(run_id), seed.run["updated_at"].encode(), when)
            write(LOCKS, cancel_lock, b"", when)


def _check_names(seed: SeedRun) -> None:
    names = [f"{step['step_id']}{JSON}" for step in seed.steps] + [f"{h['hook_id']}{JSON}" for h in seed.hooks]
    names += [f"{key}{JSON}" for key in seed.checkpoints]
    if not is_safe_run_id(seed.run_id) or not all(is_component(n) for n in names):
        raise StorageError(f"seed run {seed.run_id!r}: an id is not usable as a file name")


def _pretty(data: object) -> bytes:
    return json.dumps(data, indent=2).encode()


def count_runs(store: Store, limit: int) -> tuple[int, bool]:
    """Run records in ``runs/`` (``*.json``, markers and flags aside), up to ``limit``; (count, exact)."""
    n = 0
    for entry in store.entries(RUNS, regular=False):
        if entry.name.endswith(JSON):
            n += 1
            if n >= limit:
                return n, False
    return n, True
