"""A run file the purge cannot read never lets a possible parent go.

The layout has no parent index: a run's parent is known only from its own
file. A file caught mid-rewrite is re-read under the engine's run lock; a file
that stays unreadable names its possible parents in its raw bytes (all held);
when it names none (or is not a regular file), every expired run that could
have children is held for this purge: only runs at pyworkflow's maximum
nesting depth (which can have no children) still go.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from filelock import FileLock

from tests.conformance.checks import assert_no_orphans, items_of, run_ids
from tests.file.conftest import write_json
from tests.harness.file import FileHarness
from tests.scenario import CUTOFF, NOW, OLD, add_run
from workflow_retention.base import BatchInfo
from workflow_retention.report import Kind, PurgeReport


def _family(store: FileHarness, child_status: str = "running") -> None:
    """run_grand <- run_parent <- run_child (child live), plus an unrelated expired run_other."""
    pw = store.pyworkflow()
    store.run(add_run(pw, "run_grand", "completed", OLD))
    store.run(add_run(pw, "run_parent", "completed", OLD, parent="run_grand", depth=1))
    store.run(add_run(pw, "run_child", child_status, OLD, parent="run_parent", depth=2))
    store.run(add_run(pw, "run_other", "completed", OLD))


def _child_file(store: FileHarness) -> Path:
    return store.base / "runs" / "run_child.json"


def test_a_child_the_engine_is_rewriting_in_place_holds_its_parents(store: FileHarness) -> None:
    """The engine truncates and rewrites runs/<id>.json under .locks/<id>.lock: the purge waits for it."""
    _family(store)
    path = _child_file(store)
    whole = path.read_bytes()
    rewriting = threading.Event()

    def engine() -> None:
        with FileLock(str(store.base / ".locks" / "run_child.lock")):
            path.write_bytes(whole[: len(whole) // 3])  # write_text: truncated, then written
            rewriting.set()
            time.sleep(1.5)
            path.write_bytes(whole)

    thread = threading.Thread(target=engine)
    thread.start()
    rewriting.wait(5)
    try:
        report = store.retention(lock_timeout=10).delete_old_runs(CUTOFF)
    finally:
        thread.join()
    assert run_ids(store.inventory()) == {"run_grand", "run_parent", "run_child"}
    assert (report.runs, report.held, report.skipped) == (1, 2, 0), report.warnings


def _truncated(store: FileHarness, cut_after: str) -> bytes:
    """The child's file as an engine crash mid-write leaves it: cut right after ``cut_after``."""
    raw = _child_file(store).read_bytes()
    return raw[: raw.index(cut_after.encode()) + len(cut_after)]


def test_a_truncated_child_that_still_names_its_parent_holds_that_parent_and_its_ancestors(
        store: FileHarness) -> None:
    _family(store, child_status="completed")
    path = _child_file(store)
    path.write_bytes(_truncated(store, '"parent_run_id": "run_parent",'))
    before = items_of(store.inventory(), {"run_child"})
    report = store.retention().delete_old_runs(CUTOFF)
    assert run_ids(store.inventory()) == {"run_grand", "run_parent", "run_child"}
    assert items_of(store.inventory(), {"run_child"}) == before
    assert (report.runs, report.held, report.skipped) == (1, 2, 1)
    assert "runs/run_child.json" in report.warnings[0]


def _chain(store: FileHarness) -> list[str]:
    """An expired chain at depths 0-3 (pyworkflow's maximum: the depth-3 run can have no children)."""
    pw, chain = store.pyworkflow(), ["run_d0", "run_d1", "run_d2", "run_d3"]
    for depth, run_id in enumerate(chain):
        store.run(add_run(pw, run_id, "completed", OLD, parent=chain[depth - 1] if depth else None, depth=depth))
    return chain


def _deleted_schedule(store: FileHarness) -> None:
    write_json(store.base / "schedules" / "s_old.json",
               {"schedule_id": "s_old", "status": "deleted", "updated_at": OLD.isoformat()})


def _assert_lockdown(store: FileHarness, report: PurgeReport, name: str, kept: set[str]) -> None:
    """Only the depth-3 run went; everything else expired is held; the aux sweeps ran; reported once."""
    assert run_ids(store.inventory()) - {name.removeprefix("runs/").removesuffix(".json")} == kept
    assert report.runs == 1 and report.counts[Kind.SCHEDULES] == 1
    assert report.held == len(kept & {"run_d0", "run_d1", "run_d2", "run_other", "run_parent", "run_grand"})
    assert report.skipped == 1 and name in report.warnings[0], report.warnings
    assert "every expired run that could be a parent is kept" in report.warnings[0]
    assert_no_orphans(store.inventory())


@pytest.mark.parametrize("content", [
    pytest.param('{\n  "run_id": "run_bad",\n  "workflow_name": "w",\n  "status": "runn', id="crash-truncated"),
    pytest.param('{"run_id": "run_bad", "context": {"parent_run_id": "run_other", "blob": "xx', id="nested-key-only"),
    pytest.param('["run_bad"]', id="not-an-object"),
])
def test_a_damaged_run_file_naming_no_parent_holds_every_run_that_could_be_its_parent(
        store: FileHarness, content: str) -> None:
    chain = _chain(store)
    store.run(add_run(store.pyworkflow(), "run_other", "completed", OLD))
    _deleted_schedule(store)
    (store.base / "runs" / "run_bad.json").write_text(content)
    dry = store.retention().delete_old_runs(CUTOFF, dry_run=True)
    report = store.retention().delete_old_runs(CUTOFF)
    _assert_lockdown(store, report, "runs/run_bad.json", set(chain[:3]) | {"run_other"})
    assert (dry.runs, dry.held, dry.skipped) == (report.runs, report.held, report.skipped)
    assert (store.base / "runs" / "run_bad.json").read_text() == content


def _make_special(path: Path, kind: str, target: Path) -> None:
    if kind == "symlink":
        os.symlink(target, path)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_a_run_file_that_is_not_a_regular_file_holds_every_run_that_could_be_its_parent(
        store: FileHarness, kind: str) -> None:
    chain = _chain(store)
    store.run(add_run(store.pyworkflow(), "run_other", "completed", OLD))
    _deleted_schedule(store)
    target = store.root / "elsewhere.json"
    write_json(target, {"run_id": "run_special", "status": "running", "parent_run_id": "run_d2"})
    _make_special(store.base / "runs" / "run_special.json", kind, target)
    special = store.base / "runs" / "run_special.json"
    report = store.retention().delete_old_runs(CUTOFF)
    assert os.path.lexists(special)
    if kind == "fifo":
        special.unlink()  # the raw inventory reads every file: it would block on a FIFO
    _assert_lockdown(store, report, "runs/run_special.json", set(chain[:3]) | {"run_other"})


def test_a_child_whose_run_id_differs_from_its_file_name_holds_the_parent_it_names(store: FileHarness) -> None:
    _family(store, child_status="completed")
    path = _child_file(store)
    data = json.loads(path.read_text())
    write_json(path, {**data, "run_id": "run_someone_else"})
    report = store.retention().delete_old_runs(CUTOFF)
    assert run_ids(store.inventory()) == {"run_grand", "run_parent", "run_child"}
    assert (report.runs, report.held, report.skipped) == (1, 2, 1)
    assert "runs/run_child.json" in report.warnings[0]


def test_every_parent_a_damaged_file_may_name_is_held(store: FileHarness) -> None:
    """Poison JSON (nested too deep to parse) still names its parent: it and any other candidate are held."""
    _family(store, child_status="completed")
    store.run(add_run(store.pyworkflow(), "run_named_in_context", "completed", OLD))
    path = _child_file(store)
    data = json.loads(path.read_text())
    deep = "[" * 100_000 + "]" * 100_000
    head = json.dumps({k: v for k, v in data.items() if k not in ("context", "parent_run_id")})[:-1]
    path.write_text(head + ', "context": {"parent_run_id": "run_named_in_context", "deep": ' + deep
                    + '}, "parent_run_id": "run_parent"}')
    report = store.retention().delete_old_runs(CUTOFF)
    assert run_ids(store.inventory()) == {"run_grand", "run_parent", "run_child", "run_named_in_context"}
    assert (report.runs, report.held, report.skipped) == (1, 3, 1)


def test_a_child_created_while_its_parent_is_being_committed_keeps_the_parent(store: FileHarness) -> None:
    """The commit step consults the holds, and runs written during the purge are checked before the cascade."""
    from pyworkflow.storage.schemas import RunStatus, WorkflowRun

    pw = store.pyworkflow()
    for n in range(6):
        store.run(add_run(pw, f"run_p{n}", "completed", OLD))
    created: list[str] = []

    def engine(info: BatchInfo) -> None:
        for parent in info.run_ids:
            if parent == "run_p3":
                store.run(pw.create_run(WorkflowRun(run_id="run_new_child", workflow_name="w",
                                                    status=RunStatus.RUNNING, parent_run_id=parent,
                                                    nesting_depth=1)))
                created.append(parent)

    report = store.retention(batch_size=3).delete_old_runs(CUTOFF, on_batch=engine)
    assert created == ["run_p3"]
    assert run_ids(store.inventory()) == {"run_p3", "run_new_child"}
    assert (report.runs, report.held) == (5, 1)
    assert_no_orphans(store.inventory())
    again = store.retention().delete_old_runs(CUTOFF)
    assert (again.runs, again.held) == (0, 1)


def test_a_run_record_with_a_timestamp_that_has_no_utc_form_is_reported_and_the_rest_go(
        store: FileHarness) -> None:
    pw = store.pyworkflow()
    for run_id in ("run_late", "run_early", "run_fine"):
        store.run(add_run(pw, run_id, "completed", OLD))
    for run_id, value in (("run_late", "9999-12-31T23:59:59-14:00"), ("run_early", "0001-01-01T00:00:00+14:00")):
        path = store.base / "runs" / f"{run_id}.json"
        write_json(path, {**json.loads(path.read_text()), "updated_at": value})
    report = store.retention().delete_old_runs(CUTOFF)
    assert run_ids(store.inventory()) == {"run_late", "run_early"}
    assert report.runs == 1 and report.skipped == 2
    audited = store.retention().audit(older_than=CUTOFF).purge
    assert audited is not None and audited.skipped == 2


@pytest.mark.parametrize("where", ["runs", "steps", "hooks"])
def test_json_nested_too_deep_to_parse_is_reported_and_every_other_run_goes(store: FileHarness, where: str) -> None:
    pw = store.pyworkflow()
    for run_id in ("run_a", "run_b"):
        store.run(add_run(pw, run_id, "completed", OLD))
    store.run(add_run(pw, "run_live", "running", NOW - timedelta(days=1)))
    deep = "[" * 100_000 + "]" * 100_000
    if where == "runs":  # a live run whose context is deep: its own parent key is readable
        path = store.base / "runs" / "run_live.json"
        data = json.loads(path.read_text())
        path.write_text(json.dumps({**data, "context": "@"}).replace('"@"', deep))
    elif where == "steps":
        path = store.base / "steps" / "step_poison.json"
        path.write_text('{"step_id": "step_poison", "run_id": "run_a", "result": ' + deep + "}")
    else:
        path = store.base / "hooks" / "run_a__hook_poison.json"
        path.write_text('{"hook_id": "hook_poison", "run_id": "run_a", "payload": ' + deep + "}")
    raw = path.read_bytes()
    audit = store.retention().audit(older_than=CUTOFF)
    report = store.retention().delete_old_runs(CUTOFF)
    orphans = store.retention().sweep_orphans(grace=timedelta(0))
    left = {p.name[:-5] for p in (store.base / "runs").glob("*.json")}  # (the raw inventory parses JSON)
    assert {"run_a", "run_b"}.isdisjoint(left) and report.runs == 2
    assert report.skipped == 1 and path.name in report.warnings[0]
    assert audit.purge is not None and audit.purge.runs == 2 and audit.purge.skipped == 1
    assert path.read_bytes() == raw
    assert orphans.skipped == (0 if where == "runs" else 1)


def test_a_run_file_damaged_after_commits_began_brings_back_every_run_that_could_be_its_parent(
        store: FileHarness) -> None:
    """An engine crash mid-write while the purge runs: the runs it already committed that could have
    children are renamed back before any of their data is touched; the depth-3 run still goes."""
    chain = _chain(store)
    pw = store.pyworkflow()
    store.run(add_run(pw, "run_other", "completed", OLD))
    store.run(add_run(pw, "run_live", "running", OLD))
    live = store.base / "runs" / "run_live.json"
    shallow: list[str] = []

    def crash(info: BatchInfo) -> None:
        shallow.extend(r for r in info.run_ids if r in ("run_d0", "run_other"))
        if len(shallow) == 2:  # the last batch: every other expired run is committed by now
            live.write_text('{"run_id": "run_live", "stat')

    report = store.retention(batch_size=1).delete_old_runs(CUTOFF, on_batch=crash)
    assert run_ids(store.inventory()) == set(chain[:3]) | {"run_other", "run_live"}
    assert (report.runs, report.held, report.skipped) == (1, 4, 1), report.warnings
    assert not [i for i in store.inventory() if i.kind == "purge_markers"]
    assert_no_orphans(store.inventory())
