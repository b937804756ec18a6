"""Harness: pyworkflow-engine's InMemoryStorageBackend, purged in place."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.harness.base import Harness, Item, derived, digest
from workflow_retention.backends.memory import MemoryBackend
from workflow_retention.report import Kind


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


class MemoryHarness(Harness):
    name = "memory"
    capabilities = MemoryBackend.capabilities
    orphan_kinds = frozenset({Kind.EVENTS, Kind.EVENT_COUNTERS, Kind.STEPS, Kind.CHECKPOINTS, Kind.HOOKS,
                              Kind.HOOK_TOKENS, Kind.CANCELLATION_FLAGS, Kind.IDEMPOTENCY_KEYS})
    timestamped_orphan_kinds = frozenset({Kind.EVENTS, Kind.STEPS, Kind.HOOKS})
    pyworkflow_modules = ("pyworkflow.storage.memory",)

    def __init__(self) -> None:
        super().__init__()
        from pyworkflow.storage.memory import InMemoryStorageBackend

        self.store = InMemoryStorageBackend()

    async def _make_pyworkflow(self) -> Any:
        return self.store

    async def make_engine(self) -> Any:
        return self.store  # the engine's own store object, shared between threads under its lock

    async def close_engine(self, pw: Any) -> None:
        pass

    def retention(self, **options: Any) -> MemoryBackend:
        return MemoryBackend(self.store, **options)

    def _raw_inventory(self) -> list[Item]:
        s = self.store
        items: list[Item] = []

        def add(kind: str, key: Any, run_id: str | None, value: Any) -> None:
            items.append(Item(kind, str(key), run_id, digest(_plain(value))))

        for k, v in s._runs.items():
            add("runs", k, k, v)
        for k, v in s._events.items():
            add("events", k, k, v)
        for k, v in s._event_sequences.items():
            add("event_sequences", k, k, v)
        for k, v in s._steps.items():
            add("steps", k, v.run_id, v)
        for k, v in s._hooks.items():
            add("hooks", k, k[0], v)
        for k, v in s._token_index.items():
            add("token_index", k, v[0], v)
        for k, v in s._idempotency_index.items():
            add("idempotency_index", k, v, v)
        for k, v in s._cancellation_flags.items():
            add("cancellation_flags", k, k, v)
        for k, v in s._checkpoints.items():
            add("checkpoints", k, derived(k), v)
        for k, v in s._schedules.items():
            add("schedules", k, None, v)
        for k, v in s._streams.items():
            add("streams", k, None, v)
        for signals in s._signals.values():
            for sig in signals:
                add("signals", sig["signal_id"], None, sig)
        for k, v in s._subscriptions.items():
            add("subscriptions", k, None, v)
        for k in s._acknowledgments:
            add("acknowledgments", k, None, k)
        for k, v in getattr(s, "_scheduled_signals", {}).items():
            add("scheduled_signals", k, None, v)
        return items

    async def synthesize_orphan(self, kind: str, run_id: str, written_at: datetime) -> None:
        from pyworkflow.engine.events import Event, EventType
        from pyworkflow.storage.schemas import Hook, StepExecution, StepStatus

        s = self.store
        if kind == Kind.EVENTS:
            s._events[run_id] = [Event(run_id=run_id, type=EventType.WORKFLOW_STARTED, timestamp=written_at,
                                       sequence=0)]
        elif kind == Kind.EVENT_COUNTERS:
            s._event_sequences[run_id] = 3
        elif kind == Kind.STEPS:
            s._steps[f"step_{run_id}"] = StepExecution(step_id=f"step_{run_id}", run_id=run_id, step_name="x",
                                                       status=StepStatus.COMPLETED, created_at=written_at,
                                                       updated_at=written_at)
        elif kind == Kind.CHECKPOINTS:
            s._checkpoints[f"{run_id}:step_x"] = {"cursor": 1}
        elif kind in (Kind.HOOKS, Kind.HOOK_TOKENS):
            hook = Hook(hook_id="hook_x_1", run_id=run_id, token=f"{run_id}:hook_x_1", created_at=written_at)
            if kind == Kind.HOOKS:
                s._hooks[(run_id, hook.hook_id)] = hook
            else:
                s._token_index[hook.token] = (run_id, hook.hook_id)
        elif kind == Kind.CANCELLATION_FLAGS:
            s._cancellation_flags[run_id] = True
        elif kind == Kind.IDEMPOTENCY_KEYS:
            s._idempotency_index[f"key-{run_id}"] = run_id
        else:
            raise NotImplementedError(kind)

    def corrupt_updated_at(self, run_id: str) -> None:
        self.store._runs[run_id].updated_at = "not-a-timestamp"

    def set_status(self, run_id: str, status: str) -> None:
        self.store._runs[run_id].status = status


@pytest.fixture
def memory_harness() -> Iterator[MemoryHarness]:
    harness = MemoryHarness()
    yield harness
    harness.close()


HARNESS_CLASS = MemoryHarness
