"""Never delete live data: run ids chosen by users, statuses written by hand, on every backend."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.conformance.checks import assert_no_orphans, items_of, run_ids, snapshot
from tests.harness.base import Harness
from tests.scenario import CUTOFF, NOW, OLD, add_run

# pyworkflow names schedule-triggered runs sched_<schedule_id[:8]>_<hex>, and users choose schedule
# ids: the schedule "cron:nightly" gives this live run, whose checkpoints are keyed LIVE:<step_id>.
EXPIRED = "sched_cron"
LIVE = "sched_cron:nig_6d1a7a53"


def _colon_store(backend: Harness) -> None:
    pw = backend.pyworkflow()
    backend.run(add_run(pw, EXPIRED, "completed", OLD))
    backend.run(add_run(pw, LIVE, "running", OLD))


def test_purging_a_run_keeps_the_checkpoints_of_a_live_run_whose_id_extends_it(backend: Harness) -> None:
    _colon_store(backend)
    live_before = items_of(backend.inventory(), {LIVE})
    assert any(kind == "checkpoints" for kind, _ in live_before)
    report = backend.retention().delete_old_runs(CUTOFF)
    items = backend.inventory()
    assert run_ids(items) == {LIVE}
    assert items_of(items, {LIVE}) == live_before, "the live run lost data"
    assert report.runs == 1 and report.counts["checkpoints"] == 2
    assert_no_orphans(items)


def test_an_expired_run_with_a_colon_in_its_id_is_purged_whole(backend: Harness) -> None:
    pw = backend.pyworkflow()
    backend.run(add_run(pw, LIVE.replace("nig", "old"), "completed", OLD))
    report = backend.retention().delete_old_runs(CUTOFF)
    items = backend.inventory()
    assert run_ids(items) == set() and report.runs == 1 and report.skipped == 0
    assert_no_orphans(items)
    assert not [i for i in items if i.run_id is not None]


@pytest.mark.parametrize("dry_run", [True, False])
def test_the_orphan_sweep_keeps_the_checkpoints_of_a_live_run_with_a_colon_in_its_id(
        backend: Harness, dry_run: bool) -> None:
    pw = backend.pyworkflow()
    backend.run(add_run(pw, LIVE, "running", OLD))
    before = snapshot(backend.inventory())
    report = backend.retention().sweep_orphans(grace=timedelta(0), dry_run=dry_run)
    assert report.total == 0, dict(report.counts)
    assert snapshot(backend.inventory()) == before


def test_an_unsafe_run_keeps_everything_derived_from_it(backend: Harness) -> None:
    pw = backend.pyworkflow()
    unsafe = "run*hostile"  # never deleted: a wildcard is not a safe identifier
    backend.run(add_run(pw, unsafe, "completed", OLD))
    backend.run(add_run(pw, "run", "completed", OLD))  # its id is a prefix of nothing the unsafe run owns
    before = items_of(backend.inventory(), {unsafe})
    report = backend.retention().delete_old_runs(CUTOFF)
    orphans = backend.retention().sweep_orphans(grace=timedelta(0))
    items = backend.inventory()
    assert run_ids(items) == {unsafe}
    assert items_of(items, {unsafe}) == before
    assert report.skipped == 1 and orphans.total == 0


@pytest.mark.parametrize("status", ["COMPLETED", "Failed", "done"])
def test_a_status_pyworkflow_never_writes_is_kept_reported_and_holds_its_parent(
        backend: Harness, status: str) -> None:
    """pyworkflow writes statuses in lower case; anything else is the same decision everywhere: kept."""
    pw = backend.pyworkflow()
    backend.run(add_run(pw, "run_odd_root", "completed", OLD))
    backend.run(add_run(pw, "run_parent", "completed", OLD))
    backend.run(add_run(pw, "run_odd_child", "completed", OLD, parent="run_parent", depth=1))
    backend.set_status("run_odd_root", status)
    backend.set_status("run_odd_child", status)
    before = items_of(backend.inventory(), {"run_odd_root", "run_odd_child", "run_parent"})
    dry = backend.retention().delete_old_runs(CUTOFF, dry_run=True)
    report = backend.retention().delete_old_runs(CUTOFF)
    items = backend.inventory()
    assert run_ids(items) == {"run_odd_root", "run_odd_child", "run_parent"}
    assert items_of(items, {"run_odd_root", "run_odd_child", "run_parent"}) == before
    assert report.runs == 0 and report.held == 1
    reported = " ".join(report.warnings)
    assert report.skipped == 2 and "run_odd_root" in reported and "run_odd_child" in reported
    assert (dry.runs, dry.held, dry.skipped) == (report.runs, report.held, report.skipped)


def test_a_recent_run_with_an_odd_status_is_not_reported(backend: Harness) -> None:
    backend.run(add_run(backend.pyworkflow(), "run_odd_recent", "completed", NOW - timedelta(days=1)))
    backend.set_status("run_odd_recent", "COMPLETED")
    report = backend.retention().delete_old_runs(CUTOFF)
    assert (report.runs, report.skipped) == (0, 0)
