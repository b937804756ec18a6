"""Harness: pyworkflow-engine's FileStorageBackend in a temporary directory, inspected file by file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.harness.base import Harness, Item, derived, digest
from workflow_retention.backends.file import FileBackend
from workflow_retention.report import Kind

SHARED_LOCK_PREFIXES = ("hook_", "schedule_", "stream_", "signals_", "sub_")


def lock_owner(name: str) -> str | None:
    """The run a ``.locks/`` file is the per-run lock of, by the engine's naming (None: shared)."""
    stem = name.removesuffix(".lock")
    if name == "token_index.lock" or stem.startswith(SHARED_LOCK_PREFIXES):
        return None
    if stem.startswith("checkpoint_"):
        return derived(stem.removeprefix("checkpoint_"))
    if stem.startswith("events_"):
        return stem.removeprefix("events_")
    return stem.removesuffix("_cancel")


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # damaged or hostile content: the inventory shows it as unreadable
        return None


def _field(raw: bytes, key: str) -> str | None:
    data = _json(raw)
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


class FileHarness(Harness):
    name = "file"
    capabilities = FileBackend.capabilities
    orphan_kinds = frozenset({Kind.EVENTS, Kind.STEPS, Kind.CHECKPOINTS, Kind.HOOKS, Kind.HOOK_TOKENS,
                              Kind.CANCELLATION_FLAGS, Kind.LOCK_FILES})
    timestamped_orphan_kinds = orphan_kinds - {Kind.HOOK_TOKENS}
    pyworkflow_modules = ("pyworkflow.storage.file",)

    def __init__(self, root: Path) -> None:
        super().__init__()
        from pyworkflow.storage.file import FileStorageBackend

        self.root = root
        self.base = root / "store"
        self._pw = FileStorageBackend(base_path=str(self.base))  # creates the layout, as the engine does

    async def _make_pyworkflow(self) -> Any:
        return self._pw

    async def make_engine(self) -> Any:
        from pyworkflow.storage.file import FileStorageBackend

        return FileStorageBackend(base_path=str(self.base))

    def retention(self, **options: Any) -> FileBackend:
        return FileBackend(self.base, **options)

    # -- raw inspection -------------------------------------------------------------

    def _raw_inventory(self) -> list[Item]:
        items: list[Item] = []
        for directory, _dirs, files in os.walk(self.base):
            for name in files:
                if name.startswith(".wr-probe-"):  # a purge's write probe (created and removed at once), not data
                    continue
                path = Path(directory, name)
                items += self._items(path.relative_to(self.base), path.read_bytes())
        return items

    def _items(self, rel: Path, raw: bytes) -> list[Item]:
        top, name = (rel.parts[0] if len(rel.parts) > 1 else ""), rel.name
        stem = name.rsplit(".", 1)[0]
        if top == "runs" and name.endswith(".json.purging"):
            run_id = name.removesuffix(".json.purging")
            return [Item("purge_markers", run_id, run_id, digest(raw))]
        if top == "runs" and name.endswith((".json", ".cancel")):
            kind = "runs" if name.endswith(".json") else "cancellation_flags"
            return [Item(kind, stem, stem, digest(raw))]
        if top == "events" and name.endswith(".jsonl"):
            lines = [line for line in raw.decode().splitlines() if line.strip()]
            return [Item("events", f"{stem}#{n}", stem, digest(line)) for n, line in enumerate(lines, 1)]
        if top in ("steps", "hooks"):
            return [Item(top, stem, _field(raw, "run_id"), digest(raw))]
        if top == "checkpoints":
            return [Item("checkpoints", stem, derived(stem), digest(raw))]
        if top == ".locks":
            return [Item("lock_files", name, lock_owner(name), digest(raw))]
        if top == "signals" and isinstance(signals := _json(raw), list):
            return [Item("signals", f"{stem}#{s.get('signal_id')}", None, digest(s)) for s in signals]
        if top in ("schedules", "streams", "subscriptions", "acknowledgments"):
            return [Item(top, stem, None, digest(raw))]
        if rel == Path("_token_index.json") and isinstance(index := _json(raw), dict):
            return [Item("token_index", token, derived(str(value)), digest(value))
                    for token, value in index.items()]
        return [Item("other", str(rel), None, digest(raw))]

    # -- writing raw records --------------------------------------------------------------

    def _write(self, rel: str, data: Any, written_at: datetime) -> None:
        path = self.base / rel
        path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))
        os.utime(path, (written_at.timestamp(), written_at.timestamp()))

    async def synthesize_orphan(self, kind: str, run_id: str, written_at: datetime) -> None:
        from pyworkflow.storage.schemas import Hook, StepExecution, StepStatus

        when = written_at.isoformat()
        if kind == Kind.EVENTS:
            self._write(f"events/{run_id}.jsonl", json.dumps(
                {"event_id": "evt_1", "run_id": run_id, "type": "workflow.started", "sequence": 1,
                 "timestamp": when, "data": {}}) + "\n", written_at)
        elif kind == Kind.STEPS:
            step = StepExecution(step_id=f"step_{run_id}", run_id=run_id, step_name="x",
                                 status=StepStatus.COMPLETED, created_at=written_at, updated_at=written_at)
            self._write(f"steps/step_{run_id}.json", step.to_dict(), written_at)
        elif kind == Kind.CHECKPOINTS:
            self._write(f"checkpoints/{run_id}:step_x.json", {"cursor": 1}, written_at)
        elif kind == Kind.HOOKS:
            hook = Hook(hook_id="hook_x_1", run_id=run_id, token=f"{run_id}:hook_x_1", created_at=written_at)
            self._write(f"hooks/{run_id}__hook_x_1.json", hook.to_dict(), written_at)
        elif kind == Kind.HOOK_TOKENS:
            path = self.base / "_token_index.json"
            index = json.loads(path.read_text()) if path.exists() else {}
            index[f"{run_id}:hook_x_1"] = f"{run_id}:hook_x_1"
            path.write_text(json.dumps(index, indent=2))
        elif kind == Kind.CANCELLATION_FLAGS:
            self._write(f"runs/{run_id}.cancel", when, written_at)
        elif kind == Kind.LOCK_FILES:
            self._write(f".locks/{run_id}.lock", "", written_at)
        else:
            raise NotImplementedError(kind)

    def corrupt_updated_at(self, run_id: str) -> None:
        path = self.base / "runs" / f"{run_id}.json"
        data = json.loads(path.read_text())
        data["updated_at"] = "not-a-timestamp"
        path.write_text(json.dumps(data, indent=2))

    def set_status(self, run_id: str, status: str) -> None:
        path = self.base / "runs" / f"{run_id}.json"
        data = json.loads(path.read_text())
        data["status"] = status
        path.write_text(json.dumps(data, indent=2))


@pytest.fixture
def file_harness(tmp_path: Path) -> Iterator[FileHarness]:
    harness = FileHarness(tmp_path)
    yield harness
    harness.close()


HARNESS_CLASS = FileHarness
