"""Raw-store assertions shared by the conformance tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from tests.harness.base import Harness, Item


def run_ids(items: Iterable[Item]) -> set[str]:
    return {i.key for i in items if i.kind == "runs"}


def orphans(items: list[Item]) -> list[Item]:
    """Items naming a run that has no run record."""
    runs = run_ids(items)
    return sorted(i for i in items if i.run_id is not None and i.run_id not in runs)


def assert_no_orphans(items: list[Item]) -> None:
    found = orphans(items)
    assert not found, f"{len(found)} orphaned records, e.g. {found[:10]}"


def items_of(items: Iterable[Item], ids: set[str]) -> dict[tuple[str, str], str]:
    """Raw records (kind, key) -> digest of the given runs."""
    return {(i.kind, i.key): i.digest for i in items if i.run_id in ids}


def snapshot(items: Iterable[Item]) -> dict[tuple[str, str], str]:
    return {(i.kind, i.key): i.digest for i in items}


def _plain(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "value") and hasattr(value, "name"):
        return value.value
    return value


async def _view(pw: Any, run_id: str) -> dict[str, Any]:
    run = await pw.get_run(run_id)
    if run is None:
        return {"run": None}
    events = await pw.get_events(run_id)
    hooks = await pw.list_hooks(run_id=run_id)
    steps = await pw.list_steps(run_id)
    step_id = f"step_charge_{run_id.removeprefix('run_')}"
    return {
        "run": run.to_dict(),
        "events": [(e.event_id, e.type.value, e.sequence, e.data) for e in events],
        "hooks": sorted((h.hook_id, h.token, h.status.value) for h in hooks),
        "steps": sorted(s.step_id for s in steps),
        "flag": await pw.check_cancellation_flag(run_id),
        "checkpoints": [await pw.load_checkpoint(f"{run_id}:{step_id}"),
                        await pw.load_checkpoint(f"{run_id}:{step_id}_b")],
    }


def pyworkflow_views(h: Harness, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """What pyworkflow-engine's own API reads for each run: record, events, hooks, steps, flag, checkpoints."""
    pw = h.pyworkflow()
    return {run_id: h.run(_view(pw, run_id)) for run_id in sorted(ids)}
