"""The cascade of a purge: the token index read under the engine's lock, markers removed only when a run is
gone whole, and which run a hook file belongs to (its path, not its content)."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import timedelta

import pytest
from filelock import FileLock

from tests.conformance.checks import assert_no_orphans, items_of, run_ids
from tests.file.conftest import write_json
from tests.harness.file import FileHarness
from tests.scenario import CUTOFF, OLD, add_run
from workflow_retention.backends.file.client import Store
from workflow_retention.report import Kind


def _tokens(store: FileHarness) -> dict:
    return json.loads((store.base / "_token_index.json").read_text())


def _markers(store: FileHarness) -> set[str]:
    return {i.key for i in store.inventory() if i.kind == "purge_markers"}


def test_the_token_index_is_read_under_the_engine_lock(store: FileHarness) -> None:
    """create_hook rewrites the index in place under token_index.lock; a purge reading it then waits."""
    pw = store.pyworkflow()
    for run_id in ("run_a", "run_b"):
        store.run(add_run(pw, run_id, "completed", OLD))
    index = store.base / "_token_index.json"
    whole = index.read_bytes()
    writing = threading.Event()

    def engine() -> None:
        with FileLock(str(store.base / ".locks" / "token_index.lock")):
            index.write_bytes(whole[: len(whole) // 2])
            writing.set()
            time.sleep(1.5)
            index.write_bytes(whole)

    thread = threading.Thread(target=engine)
    thread.start()
    writing.wait(5)
    try:
        report = store.retention(lock_timeout=10).delete_old_runs(CUTOFF)
    finally:
        thread.join()
    assert report.skipped == 0 and report.counts[Kind.HOOK_TOKENS] == 2, report.warnings
    assert _tokens(store) == {}
    assert_no_orphans(store.inventory())


def test_a_marker_stays_until_its_runs_token_entries_are_gone(store: FileHarness) -> None:
    pw = store.pyworkflow()
    for run_id in ("run_a", "run_b"):
        store.run(add_run(pw, run_id, "completed", OLD))
    index = store.base / "_token_index.json"
    good = index.read_text()
    index.write_text(good[: len(good) // 2])  # damaged for good: the purge cannot drop the entries
    first = store.retention().delete_old_runs(CUTOFF)
    assert first.runs == 2 and first.skipped == 1 and "_token_index.json" in first.warnings[0]
    assert _markers(store) == {"run_a", "run_b"}, "the markers went before the token entries"
    index.write_text(good)  # repaired
    second = store.retention().delete_old_runs(CUTOFF)
    assert second.runs == 0 and second.counts[Kind.HOOK_TOKENS] == 2 and second.skipped == 0
    assert _markers(store) == set() and _tokens(store) == {}
    assert_no_orphans(store.inventory())


def test_a_lock_file_held_by_the_engine_keeps_the_marker_for_the_next_purge(store: FileHarness) -> None:
    pw = store.pyworkflow()
    store.run(add_run(pw, "run_a", "completed", OLD))
    with FileLock(str(store.base / ".locks" / "events_run_a.lock")):
        first = store.retention().delete_old_runs(CUTOFF)
    assert first.runs == 1 and _markers(store) == {"run_a"}
    assert (store.base / ".locks" / "events_run_a.lock").exists()
    second = store.retention().delete_old_runs(CUTOFF)
    assert second.counts[Kind.LOCK_FILES] == 1 and _markers(store) == set()
    assert_no_orphans(store.inventory())


def test_a_hook_file_at_a_live_runs_path_stays_whatever_run_its_content_names(store: FileHarness) -> None:
    """Legacy hooks/<hook_id>.json is the only name form whose run is read from the content."""
    pw = store.pyworkflow()
    store.run(add_run(pw, "run_live", "running", OLD))
    store.run(add_run(pw, "run_old", "completed", OLD))
    path = store.base / "hooks" / "run_live__hook_x.json"
    write_json(path, {"hook_id": "run_live__hook_x", "run_id": "run_old", "token": "t"})
    os.utime(path, (OLD.timestamp(), OLD.timestamp()))
    raw, live = path.read_bytes(), items_of(store.inventory(), {"run_live"})
    report = store.retention().delete_old_runs(CUTOFF)
    orphans = store.retention().sweep_orphans()
    assert report.runs == 1 and report.skipped == 0 and orphans.counts[Kind.HOOKS] == 0
    assert path.read_bytes() == raw and items_of(store.inventory(), {"run_live"}) == live


def test_file_names_cannot_forge_report_lines_or_terminal_escapes(store: FileHarness) -> None:
    store.run(add_run(store.pyworkflow(), "run_a", "completed", OLD))
    evil = "step_\x1b[2J\x1b[31mred\rWARNING all good\n2026 INFO forged.json"
    (store.base / "steps" / evil).write_text("{")
    report = store.retention().delete_old_runs(CUTOFF)
    assert report.skipped == 1 and report.runs == 1
    text = report.warnings[0]
    assert not any(ord(c) < 32 or ord(c) == 127 for c in text), repr(text)
    assert "\\x1b[2J" in text and "\\n2026 INFO forged.json" in text
    orphans = store.retention().sweep_orphans(grace=timedelta(0))
    assert not any(ord(c) < 32 for w in orphans.warnings for c in w)
    assert run_ids(store.inventory()) == set()


def test_files_an_engine_recreates_during_the_cascade_go_before_the_marker(store: FileHarness,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer still holding a purged run's id re-creates its lock and events files after their pass."""
    from workflow_retention.backends.file import cascade as cascade_module

    for run_id in ("run_a", "run_b"):
        store.run(add_run(store.pyworkflow(), run_id, "completed", OLD))
    real, once = cascade_module.unlink, list[str]()

    def engine_meanwhile(st: Store, directory: str, name: str, **kwargs: bool) -> int | None:
        out = real(st, directory, name, **kwargs)
        if name == "run_a.cancel" and not once:  # the last pass over runs/ has begun
            once.append(name)
            (store.base / ".locks" / "run_a.lock").write_text("")
            (store.base / "events" / "run_a.jsonl").write_text('{"event_id": "evt_late"}\n')
        return out

    monkeypatch.setattr(cascade_module, "unlink", engine_meanwhile)
    report = store.retention().delete_old_runs(CUTOFF)
    assert report.runs == 2
    items = store.inventory()
    assert_no_orphans(items)
    assert not [i for i in items if i.kind == "purge_markers"]
