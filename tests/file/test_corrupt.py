"""A corrupt or unreadable file is reported and skipped, and the sweep goes on."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from tests.conformance.checks import assert_no_orphans, run_ids
from tests.file.conftest import write_json
from tests.harness.file import FileHarness
from tests.scenario import CUTOFF, OLD, add_run
from workflow_retention.report import Kind


@pytest.fixture
def two_runs(store: FileHarness) -> FileHarness:
    for run_id in ("run_a", "run_b"):
        store.run(add_run(store.pyworkflow(), run_id, "completed", OLD))
    return store


# An unusable run file whose own parent can still be read. One whose parent cannot be told (cut before its
# parent_run_id, or not a JSON object at all) keeps every run that could be its parent: test_damaged_runs.py.
CORRUPTIONS = {
    "run file": ("runs/run_bad.json", b'{"run_id": "run_bad", "parent_run_id": null, "status": "compl'),
    "run file of another run": ("runs/run_bad.json", b'{"run_id": "run_other", "parent_run_id": null}'),
    "step file": ("steps/step_bad.json", b"\xff\xfe not json"),
    "hook file": ("hooks/run_a__hook_bad.json", b"{"),
    "signals array": ("signals/stream_bad.json", b'{"not": "an array"}'),
    "schedule": ("schedules/sched_bad.json", b"nope"),
}


@pytest.mark.parametrize("what", sorted(CORRUPTIONS))
def test_corrupt_file_is_reported_and_the_purge_goes_on(two_runs: FileHarness, what: str) -> None:
    rel, raw = CORRUPTIONS[what]
    path = two_runs.base / rel
    path.write_bytes(raw)
    report = two_runs.retention().delete_old_runs(CUTOFF)
    assert report.runs == 2 and not {"run_a", "run_b"} & run_ids(two_runs.inventory())
    assert path.read_bytes() == raw, "the corrupt file must be left alone"
    assert report.skipped == 1 and rel.split("/")[-1] in report.warnings[0]


def test_corrupt_token_index_is_left_alone_and_the_rest_goes(two_runs: FileHarness) -> None:
    index = two_runs.base / "_token_index.json"
    index.write_text('{"run_a:hook_approval_1": "run_a:hook_ap')
    report = two_runs.retention().delete_old_runs(CUTOFF)
    assert report.runs == 2 and report.counts[Kind.HOOK_TOKENS] == 0 and report.counts[Kind.HOOKS] == 2
    assert report.skipped == 1 and "_token_index.json" in report.warnings[0]
    assert index.read_text() == '{"run_a:hook_approval_1": "run_a:hook_ap'


def test_corrupt_records_do_not_stop_the_orphan_sweep(two_runs: FileHarness) -> None:
    two_runs.run(two_runs.baseline_purge(CUTOFF))
    (two_runs.base / "steps" / "step_bad.json").write_text("{")
    (two_runs.base / "hooks" / "hook_bad.json").write_text("[]")
    report = two_runs.retention().sweep_orphans(grace=timedelta(0))
    assert report.skipped == 2 and report.total > 0
    items = [i for i in two_runs.inventory() if i.key not in ("step_bad", "hook_bad")]
    assert_no_orphans(items)


def test_signals_with_unreadable_timestamps_are_kept(store: FileHarness) -> None:
    old, new = OLD.isoformat(), (CUTOFF + timedelta(days=1)).isoformat()
    signals = [{"signal_id": "s1", "published_at": old}, {"signal_id": "s2", "published_at": "yesterday"},
               {"signal_id": "s3", "published_at": new}, "not a signal"]
    write_json(store.base / "signals" / "stream_x.json", signals)
    report = store.retention().delete_old_runs(CUTOFF)
    assert report.counts[Kind.SIGNALS] == 1
    assert json.loads((store.base / "signals" / "stream_x.json").read_text()) == signals[1:]
