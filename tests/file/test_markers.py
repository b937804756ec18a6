"""A purge marker (``runs/<id>.json.purging``) condemns a run only when its record is gone.

Restoring ``runs/`` from a backup taken around a crashed purge can leave a
marker beside the run's record; so can anyone who writes a file, a symlink or
a directory with that name. Such a marker is reported and left, and the run
keeps everything.
"""

from __future__ import annotations

import os
import shutil
from datetime import timedelta

import pytest

from tests.conformance.checks import assert_no_orphans, items_of, run_ids
from tests.harness.file import FileHarness
from tests.scenario import CUTOFF, OLD, add_run
from workflow_retention.report import OrphanReport, PurgeReport


def _stray(store: FileHarness, run_id: str, form: str) -> None:
    runs = store.base / "runs"
    marker = runs / f"{run_id}.json.purging"
    if form == "file":
        shutil.copyfile(runs / f"{run_id}.json", marker)
    elif form == "symlink":
        os.symlink(f"{run_id}.json", marker)
    else:
        marker.mkdir()


@pytest.mark.parametrize("operation", ["purge", "orphans"])
@pytest.mark.parametrize("form", ["file", "symlink", "directory"])
@pytest.mark.parametrize("status", ["running", "completed"])
def test_a_stray_marker_beside_a_run_record_never_condemns_the_run(store: FileHarness, form: str,
                                                                   operation: str, status: str) -> None:
    pw = store.pyworkflow()
    store.run(add_run(pw, "run_kept", status, OLD))
    store.run(add_run(pw, "run_parent", "completed", OLD))
    store.run(add_run(pw, "run_child", "completed", OLD, parent="run_parent", depth=1))
    _stray(store, "run_child", form)
    _stray(store, "run_kept", form)
    family = {"run_kept", "run_child", "run_parent"}
    before = items_of(store.inventory(), family)
    for _ in range(2):  # and again: nothing changes on the next run either
        report: PurgeReport | OrphanReport
        if operation == "purge":
            report = purged = store.retention().delete_old_runs(CUTOFF)
            assert (purged.runs, purged.held) == (0, 1)
        else:
            report = swept = store.retention().sweep_orphans(grace=timedelta(0))
            assert swept.total == 0
        assert items_of(store.inventory(), family) == before
        assert report.skipped == 2, report.warnings
        assert any("runs/run_kept.json.purging" in w for w in report.warnings)
    assert run_ids(store.inventory()) == family
    for run_id in ("run_kept", "run_child"):
        assert os.path.lexists(store.base / "runs" / f"{run_id}.json.purging")


def test_a_marker_whose_record_is_gone_is_finished(store: FileHarness) -> None:
    """The crash case the marker exists for: the record was renamed, the cascade did not run."""
    pw = store.pyworkflow()
    store.run(add_run(pw, "run_done", "completed", OLD))
    os.rename(store.base / "runs" / "run_done.json", store.base / "runs" / "run_done.json.purging")
    report = store.retention().delete_old_runs(CUTOFF)
    assert report.skipped == 0 and report.runs == 0
    items = store.inventory()
    assert not [i for i in items if i.run_id == "run_done"] and not [i for i in items if i.kind == "purge_markers"]
    assert_no_orphans(items)
