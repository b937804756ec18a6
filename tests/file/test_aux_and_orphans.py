"""Schedules and stream data, and the orphan sweep's file-store specifics (exact bytes, locks, legacy hooks)."""

from __future__ import annotations

import fcntl
import json
import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

from filelock import FileLock

from tests.conformance.checks import assert_no_orphans, orphans, pyworkflow_views
from tests.file.conftest import tree, write_json
from tests.harness.file import FileHarness
from tests.scenario import CUTOFF, NOW, OLD, add_run
from workflow_retention.report import Kind

PLUS5 = timezone(timedelta(hours=5))


def _iso(when: datetime) -> str:
    return when.isoformat()


def _aux_store(store: FileHarness) -> None:
    base, old, new = store.base, CUTOFF - timedelta(hours=1), CUTOFF + timedelta(hours=1)
    for sid, status, when in (("s_old", "deleted", old.astimezone(PLUS5)), ("s_upper", "DELETED", old),
                              ("s_new", "deleted", new), ("s_active", "active", old)):
        write_json(base / "schedules" / f"{sid}.json", {"schedule_id": sid, "status": status,
                                                        "updated_at": _iso(when)})
    write_json(base / "signals" / "stream_a.json", [
        {"signal_id": "g1", "published_at": _iso(old.astimezone(PLUS5))},
        {"signal_id": "g2", "published_at": _iso(new)}, {"signal_id": "g3", "published_at": _iso(old)}])
    os.chmod(base / "signals" / "stream_a.json", 0o640)
    for step, status, when in (("t", "terminated", old), ("c", "completed", new), ("w", "waiting", old)):
        write_json(base / "subscriptions" / f"stream_a__{step}.json",
                   {"stream_id": "stream_a", "step_run_id": step, "status": status, "created_at": _iso(when)})
    for sig, when in (("g1", old), ("g2", new)):
        write_json(base / "acknowledgments" / f"{sig}__t.json",
                   {"signal_id": sig, "step_run_id": "t", "acknowledged_at": _iso(when)})


def test_schedules_and_stream_data_compare_as_instants(store: FileHarness) -> None:
    _aux_store(store)
    dry = store.retention().delete_old_runs(CUTOFF, dry_run=True)
    report = store.retention().delete_old_runs(CUTOFF)
    # pyworkflow stores "deleted" exactly: a schedule spelled "DELETED" is not one it deleted (kept, as everywhere)
    expected = {Kind.SCHEDULES: 1, Kind.SIGNALS: 2, Kind.SUBSCRIPTIONS: 1, Kind.ACKNOWLEDGMENTS: 1}
    assert dict(dry.counts) == dict(report.counts) == expected
    base = store.base
    assert sorted(os.listdir(base / "schedules")) == ["s_active.json", "s_new.json", "s_upper.json"]
    signals = base / "signals" / "stream_a.json"
    assert [s["signal_id"] for s in json.loads(signals.read_text())] == ["g2"]
    assert stat.S_IMODE(os.stat(signals).st_mode) == 0o640
    assert sorted(os.listdir(base / "subscriptions")) == ["stream_a__c.json", "stream_a__w.json"]
    assert os.listdir(base / "acknowledgments") == ["g2__t.json"]
    assert not [i for i in store.inventory() if i.kind == "other"], "temp files left behind"


def test_a_locked_signal_stream_is_skipped_and_reported(store: FileHarness) -> None:
    _aux_store(store)
    signals = store.base / "signals" / "stream_a.json"
    before = signals.read_bytes()
    with FileLock(str(store.base / ".locks" / "signals_stream_a.lock")):
        report = store.retention(lock_timeout=0.1).delete_old_runs(CUTOFF)
    assert signals.read_bytes() == before and report.counts[Kind.SIGNALS] == 0
    assert report.skipped == 1 and "signals_stream_a.lock" in report.warnings[0]


def _store_bytes(base: Path) -> int:
    return sum(p.lstat().st_size for p in base.rglob("*") if p.is_file())


def test_orphan_bytes_are_exact_and_only_orphans_go(store: FileHarness) -> None:
    from pyworkflow.storage.schemas import HookStatus

    pw = store.pyworkflow()
    for n in range(3):
        store.run(add_run(pw, f"run_gone_{n}", "completed", OLD))
    store.run(add_run(pw, "run_kept", "completed", NOW - timedelta(days=1)))
    store.run(pw.update_hook_status("hook_approval_1", HookStatus.RECEIVED, run_id="run_kept"))
    write_json(store.base / "checkpoints" / "stream_step_x_srun_1.json", {"cursor": 3})
    store.run(store.baseline_purge(CUTOFF))
    left = orphans(store.inventory())
    kept_view = pyworkflow_views(store, {"run_kept"})
    before = _store_bytes(store.base)
    report = store.retention().sweep_orphans(grace=timedelta(0))
    assert report.total == len(left) and not report.bytes_estimated
    assert report.bytes == before - _store_bytes(store.base) > 0
    assert_no_orphans(store.inventory())
    for shared in ("token_index.lock", "hook_hook_approval_1.lock"):
        assert (store.base / ".locks" / shared).exists(), shared
    assert (store.base / "checkpoints" / "stream_step_x_srun_1.json").exists()
    assert pyworkflow_views(store, {"run_kept"}) == kept_view


def test_a_held_lock_file_is_not_deleted_until_released(store: FileHarness) -> None:
    store.run(store.synthesize_orphan(Kind.LOCK_FILES, "run_gone", OLD))
    path = store.base / ".locks" / "run_gone.lock"
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        report = store.retention().sweep_orphans()
        assert report.total == 0 and path.exists()
    finally:
        os.close(fd)
    assert store.retention().sweep_orphans().counts == {Kind.LOCK_FILES: 1} and not path.exists()


def test_legacy_hook_files_and_ambiguous_lock_names(store: FileHarness) -> None:
    pw = store.pyworkflow()
    store.run(add_run(pw, "run_alive", "running", OLD))
    for run_id, name in (("run_alive", "hook_legacy_a"), ("run_gone", "hook_legacy_b")):
        path = store.base / "hooks" / f"{name}.json"
        write_json(path, {"hook_id": name, "run_id": run_id, "token": f"{run_id}:{name}"})
        os.utime(path, (OLD.timestamp(), OLD.timestamp()))
    for name in ("run_alive_cancel.lock", "events_run_alive.lock", "run_gone_cancel.lock"):
        (store.base / ".locks" / name).write_text("")
        os.utime(store.base / ".locks" / name, (OLD.timestamp(), OLD.timestamp()))
    report = store.retention().sweep_orphans()
    assert dict(report.counts) == {Kind.HOOKS: 1, Kind.LOCK_FILES: 1}
    assert not (store.base / "hooks" / "hook_legacy_b.json").exists()
    assert (store.base / "hooks" / "hook_legacy_a.json").exists()
    assert {"run_alive_cancel.lock", "events_run_alive.lock"} <= set(os.listdir(store.base / ".locks"))


def test_dry_run_orphan_sweep_changes_nothing(store: FileHarness) -> None:
    for kind in sorted(store.orphan_kinds):
        store.run(store.synthesize_orphan(kind, f"run_gone_{kind}", OLD))
    before = tree(store.base)
    report = store.retention().sweep_orphans(dry_run=True)
    assert report.total == len(orphans(store.inventory())) and tree(store.base) == before


def test_the_lock_files_of_purged_schedules_and_subscriptions_go_with_them(store: FileHarness) -> None:
    from pyworkflow.storage.schemas import Schedule, ScheduleSpec

    pw = store.pyworkflow()
    for sid in ("sched_gone", "sched_kept"):
        store.run(pw.create_schedule(Schedule(schedule_id=sid, workflow_name="w", spec=ScheduleSpec(cron="0 3 * * *"),
                                              created_at=OLD, updated_at=OLD)))
    with store.frozen(OLD):
        store.run(pw.delete_schedule("sched_gone"))
        for step in ("sstep_done", "sstep_waiting"):
            store.run(pw.register_stream_subscription("stream_a", step, ["tick"], stream_run_id="srun_1"))
        store.run(pw.update_subscription_status("stream_a", "sstep_done", "completed"))
    locks = store.base / ".locks"
    assert {"schedule_sched_gone.lock", "sub_stream_a_sstep_done.lock"} <= set(os.listdir(locks))
    dry = store.retention().delete_old_runs(CUTOFF, dry_run=True)
    report = store.retention().delete_old_runs(CUTOFF)
    expected = {Kind.SCHEDULES: 1, Kind.SUBSCRIPTIONS: 1, Kind.LOCK_FILES: 2}
    assert dict(report.counts) == dict(dry.counts) == expected
    left = set(os.listdir(locks))
    assert not {"schedule_sched_gone.lock", "sub_stream_a_sstep_done.lock"} & left
    assert {"schedule_sched_kept.lock", "sub_stream_a_sstep_waiting.lock"} <= left


def test_the_orphan_sweep_removes_schedule_and_subscription_locks_whose_record_is_gone(store: FileHarness) -> None:
    write_json(store.base / "schedules" / "s_live.json", {"schedule_id": "s_live", "status": "active"})
    write_json(store.base / "subscriptions" / "st_a__x_1.json",
               {"stream_id": "st_a", "step_run_id": "x_1", "status": "waiting"})
    names = ["schedule_s_live.lock", "schedule_s_gone.lock", "sub_st_a_x_1.lock", "sub_st_a_gone_1.lock",
             "schedule_s_recent.lock"]
    for name in names:
        path = store.base / ".locks" / name
        path.write_text("")
        if "recent" not in name:
            os.utime(path, (OLD.timestamp(), OLD.timestamp()))
    dry = store.retention().sweep_orphans(dry_run=True)
    report = store.retention().sweep_orphans()
    assert dict(report.counts) == dict(dry.counts) == {Kind.LOCK_FILES: 2}
    assert sorted(os.listdir(store.base / ".locks")) == sorted(
        ["schedule_s_live.lock", "sub_st_a_x_1.lock", "schedule_s_recent.lock"])
    again = store.retention().sweep_orphans()
    assert again.total == 0
