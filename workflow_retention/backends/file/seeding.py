"""Writing :mod:`workflow_retention.seed` runs exactly as pyworkflow-engine 0.4.0's FileStorageBackend does.

Same files, names, JSON formatting (``indent=2``; events one compact line
each, numbered from 1) and the lock files the engine leaves behind. Each
file's mtime is set to the time the engine would have written it, so the
orphan sweep's grace period sees a realistic store.
"""

from __future__ import annotations

import json
import os
from typing import Any

from filelock import FileLock

from workflow_retention.backends.file.layout import (
    CHECKPOINTS,
    DIRECTORIES,
    EVENTS,
    HOOKS,
    LOCKS,
    RUNS,
    STEPS,
    TOKEN_INDEX_LOCK,
    Corrupt,
    Layout,
    atomic_write,
    is_component,
    load_json,
)
from workflow_retention.exceptions import StorageError
from workflow_retention.planning import is_safe_run_id
from workflow_retention.seed import SeedRun
from workflow_retention.timeutil import parse_timestamp

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


class SeedWriter:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.index: dict[str, str] = {}
        self.prefixes = {name: path + os.sep for name, path in layout.dirs.items()}

    def prepare(self) -> None:
        """Create the directories (as the engine's constructor does) and load the token index."""
        for name in DIRECTORIES:
            os.makedirs(self.layout.dirs[name], exist_ok=True)
        try:
            index = load_json(self.layout.token_index)
        except FileNotFoundError:
            index = {}
        except Corrupt as exc:
            raise StorageError(f"cannot seed {self.layout.base}: _token_index.json is corrupt ({exc})") from exc
        self.index = index if isinstance(index, dict) else {}

    def write(self, runs: list[SeedRun]) -> None:
        for seed in runs:
            self._run(seed)
        lock = FileLock(self.layout.lock(TOKEN_INDEX_LOCK))
        with lock:
            atomic_write(self.layout.token_index, json.dumps(self.index, indent=2).encode())

    def _run(self, seed: SeedRun) -> None:
        d, run_id = self.prefixes, seed.run_id
        _check_names(seed)
        when = parse_timestamp(seed.run["updated_at"]).timestamp()
        _write(d[RUNS] + f"{run_id}.json", _pretty(seed.run), when)
        _write(d[LOCKS] + f"{run_id}.lock", b"", when)
        lines = [json.dumps({"event_id": e["event_id"], "run_id": e["run_id"], "type": e["type"], "sequence": n,
                             "timestamp": e["timestamp"], "data": e["data"]}) + "\n"
                 for n, e in enumerate(seed.events, start=1)]
        if lines:
            _write(d[EVENTS] + f"{run_id}.jsonl", "".join(lines).encode(), when)
            _write(d[LOCKS] + f"events_{run_id}.lock", b"", when)
        for step in seed.steps:
            _write(d[STEPS] + f"{step['step_id']}.json", _pretty(step), when)
        for hook in seed.hooks:
            _write(d[HOOKS] + f"{run_id}__{hook['hook_id']}.json", _pretty(hook), when)
            self.index[hook["token"]] = f"{run_id}:{hook['hook_id']}"
            if hook.get("status") != "pending":  # update_hook_status took the hook's lock
                _write(d[LOCKS] + f"hook_{hook['hook_id'].replace('/', '_').replace(':', '_')}.lock", b"", when)
        for step_run_id, data in seed.checkpoints.items():
            _write(d[CHECKPOINTS] + f"{step_run_id}.json", _pretty(data), when)
            _write(d[LOCKS] + f"checkpoint_{step_run_id}.lock", b"", when)
        if seed.cancel_flag:
            _write(d[RUNS] + f"{run_id}.cancel", seed.run["updated_at"].encode(), when)
            _write(d[LOCKS] + f"{run_id}_cancel.lock", b"", when)


def _check_names(seed: SeedRun) -> None:
    names = [f"{step['step_id']}.json" for step in seed.steps] + [f"{h['hook_id']}.json" for h in seed.hooks]
    names += [f"{key}.json" for key in seed.checkpoints]
    if not is_safe_run_id(seed.run_id) or not all(is_component(n) for n in names):
        raise StorageError(f"seed run {seed.run_id!r}: an id is not usable as a file name")


def _pretty(data: Any) -> bytes:
    return json.dumps(data, indent=2).encode()


def _write(path: str, data: bytes, mtime: float) -> None:
    fd = os.open(path, _CREATE, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.utime(fd, (mtime, mtime))
    finally:
        os.close(fd)
