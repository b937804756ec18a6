"""Whatever the records contain, nothing outside the store's base path is read, changed or deleted."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conformance.checks import run_ids
from tests.file.conftest import tree, write_json
from tests.harness.file import FileHarness
from tests.scenario import CUTOFF, OLD, add_run
from workflow_retention.exceptions import StorageError
from workflow_retention.report import Kind

OLD_ISO = OLD.isoformat()


def _run(run_id: str, **extra: object) -> dict:
    return {"run_id": run_id, "workflow_name": "w", "status": "completed", "created_at": OLD_ISO,
            "updated_at": OLD_ISO, "parent_run_id": None, "nesting_depth": 0, **extra}


def _plant(store: FileHarness, victim: Path) -> None:
    """Hostile content in every kind of record, plus one legitimate expired run (run_ok)."""
    base, rel_victim, abs_victim = store.base, "../../victim/secret", str(victim / "secret")
    store.run(add_run(store.pyworkflow(), "run_ok", "completed", OLD))
    store.run(add_run(store.pyworkflow(), "run_live", "running", OLD, extras=False))
    live = json.loads((base / "runs" / "run_live.json").read_text())
    write_json(base / "runs" / "run_live.json", {**live, "parent_run_id": "../../victim/runs/run_far"})
    write_json(base / "runs" / "run_mismatch.json", _run(rel_victim))
    write_json(base / "runs" / "run_abs.json", _run(abs_victim))
    write_json(base / "runs" / "run_nul.json", _run("run_nul\u0000/../../victim"))
    write_json(base / "runs" / "...json", _run(".."))
    write_json(base / "runs" / "run_orphaned_child.json", _run("run_orphaned_child", parent_run_id=rel_victim))
    write_json(base / "steps" / "evil_step.json", {"step_id": "evil_step", "run_id": rel_victim})
    write_json(base / "steps" / "evil_abs.json", {"step_id": "evil_abs", "run_id": abs_victim})
    write_json(base / "hooks" / "evil__x.json", {"hook_id": "x", "run_id": rel_victim, "token": "t"})
    write_json(base / "hooks" / "run_ok__evil.json", {"hook_id": "../../victim/secret", "run_id": "run_ok"})
    index = json.loads((base / "_token_index.json").read_text())
    index.update({"t1": f"{rel_victim}:x", "t2": f"{abs_victim}:y", "t3": 42, "t4": None,
                  "t5": "run_ok\u0000/../x:z", "../t6": "..:x"})
    write_json(base / "_token_index.json", index)
    write_json(base / "checkpoints" / "..:evil.json", {"cursor": 1})
    (base / ".locks" / "..lock").write_text("")
    (base / ".locks" / "checkpoint_..:x.lock").write_text("")
    write_json(base / "schedules" / "evil.json", {"schedule_id": rel_victim, "status": "deleted",
                                                  "updated_at": OLD_ISO})
    write_json(base / "subscriptions" / "s__x.json", {"stream_id": "../../victim", "step_run_id": "x",
                                                      "status": "completed", "created_at": OLD_ISO})
    write_json(base / "acknowledgments" / "a__x.json", {"signal_id": rel_victim, "step_run_id": abs_victim,
                                                        "acknowledged_at": (CUTOFF + timedelta(days=1)).isoformat()})
    # Symlinks inside the store that point at the victim: never followed. (A symlink in place of a run
    # file also keeps every run that could be its parent: test_a_symlinked_run_file_is_never_followed.)
    os.symlink(victim / "secret.json", base / "steps" / "linked_step.json")
    os.symlink(victim / "secret.txt", base / "events" / "run_ok_link.jsonl")
    os.symlink(victim / "victim.lock", base / ".locks" / "run_far.lock")


def test_hostile_records_never_reach_outside_the_store(store: FileHarness, victim: Path) -> None:
    _plant(store, victim)
    outside = tree(victim)
    root_before = sorted(os.listdir(store.root))
    retention = store.retention()

    dry = retention.delete_old_runs(CUTOFF, dry_run=True)
    report = retention.delete_old_runs(CUTOFF)
    orphans = retention.sweep_orphans(grace=timedelta(0))
    audit = retention.audit(older_than=CUTOFF)

    assert tree(victim) == outside
    assert sorted(os.listdir(store.root)) == root_before
    assert dry.runs == report.runs == 2  # run_ok and run_orphaned_child (its parent id is unusable)
    assert {"run_ok", "run_orphaned_child"}.isdisjoint(run_ids(store.inventory()))
    assert report.skipped >= 4 and any("run_mismatch.json" in w for w in report.warnings)
    assert any("hooks/run_ok__evil.json" in w for w in report.warnings)
    # The hostile records are still there, untouched; the symlinks too.
    for rel in ("runs/run_mismatch.json", "runs/run_abs.json", "runs/...json", "steps/evil_step.json",
                "hooks/evil__x.json", "checkpoints/..:evil.json", ".locks/..lock", "schedules/evil.json",
                "subscriptions/s__x.json", "steps/linked_step.json", ".locks/run_far.lock"):
        assert os.path.lexists(store.base / rel), rel
    index = json.loads((store.base / "_token_index.json").read_text())
    assert {"t1", "t2", "t3", "t4", "t5", "../t6"} <= set(index)
    assert not any(str(v).startswith("run_ok:") for v in index.values())
    assert orphans.counts[Kind.HOOK_TOKENS] == 0
    assert audit.purge is not None and audit.purge.runs == 0


def test_a_layout_directory_leading_outside_stops_everything(store: FileHarness, victim: Path) -> None:
    store.run(add_run(store.pyworkflow(), "run_ok", "completed", OLD))
    steps = store.base / "steps"
    for name in os.listdir(steps):
        os.rename(steps / name, victim / name)
    steps.rmdir()
    os.symlink(victim, steps)
    before, outside = tree(store.base), tree(victim)
    for call in (lambda b: b.delete_old_runs(CUTOFF), lambda b: b.delete_old_runs(CUTOFF, dry_run=True),
                 lambda b: b.sweep_orphans(grace=timedelta(0)), lambda b: b.audit()):
        with pytest.raises(StorageError, match="steps/ is a symlink or leads outside the store"):
            call(store.retention())
    assert tree(store.base) == before and tree(victim) == outside


def test_a_symlinked_run_lock_skips_that_run_only(store: FileHarness, victim: Path) -> None:
    for run_id in ("run_a", "run_b"):
        store.run(add_run(store.pyworkflow(), run_id, "completed", OLD))
    lock = store.base / ".locks" / "run_a.lock"
    lock.unlink()
    os.symlink(victim / "victim.lock", lock)
    outside = tree(victim)
    report = store.retention().delete_old_runs(CUTOFF)
    assert run_ids(store.inventory()) == {"run_a"}
    assert report.runs == 1 and report.skipped == 1 and "run_a" in report.warnings[0]
    assert tree(victim) == outside


def test_a_symlinked_run_file_is_never_followed(store: FileHarness, victim: Path) -> None:
    """The engine would follow it (its parent is whatever the target says): every possible parent is kept."""
    _plant(store, victim)
    os.symlink(victim / "runs" / "run_far.json", store.base / "runs" / "run_far.json")
    outside = tree(victim)
    dry = store.retention().delete_old_runs(CUTOFF, dry_run=True)
    report = store.retention().delete_old_runs(CUTOFF)
    store.retention().sweep_orphans(grace=timedelta(0))
    store.retention().audit(older_than=CUTOFF)
    assert tree(victim) == outside
    assert os.path.islink(store.base / "runs" / "run_far.json")
    assert dry.runs == report.runs == 0 and {"run_ok", "run_orphaned_child"} <= run_ids(store.inventory())
    assert any("runs/run_far.json" in w and "could be a parent" in w for w in report.warnings)
