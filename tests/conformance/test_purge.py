"""The purge contract, on every backend, checked by raw inspection of the store."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.conformance.checks import (
    assert_no_orphans,
    items_of,
    pyworkflow_views,
    run_ids,
    snapshot,
)
from tests.harness.base import Harness
from tests.scenario import CUTOFF, NOW, Scenario, add_run, build
from workflow_retention.report import Kind
from workflow_retention.seed import generate


class Interrupt(Exception):
    pass


@pytest.fixture
def scenario(backend: Harness) -> Scenario:
    return backend.run(build(backend, backend.pyworkflow()))


def purge(h: Harness, cutoff=CUTOFF, batch_size: int | None = None, **kwargs: Any):
    options = {"batch_size": batch_size} if batch_size else {}
    return h.retention(**options).delete_old_runs(cutoff, **kwargs)


def test_deletes_exactly_the_expired_runs(backend: Harness, scenario: Scenario) -> None:
    report = purge(backend)
    items = backend.inventory()
    assert run_ids(items) == scenario.kept | scenario.held
    assert report.runs == len(scenario.deleted)
    assert report.held == len(scenario.held)
    assert report.changed == 0 and report.skipped == 0
    for kind, n in scenario.aux_deleted.items():
        assert report.counts[kind] == n, kind
    assert report.counts[Kind.EVENTS] >= 3 * len(scenario.deleted)
    assert report.counts[Kind.CHECKPOINTS] == 2 * len(scenario.deleted)


def test_nothing_of_a_deleted_run_remains(backend: Harness, scenario: Scenario) -> None:
    purge(backend)
    items = backend.inventory()
    assert_no_orphans(items)
    leftovers = items_of(items, scenario.deleted)
    assert not leftovers, f"records of deleted runs remain: {sorted(leftovers)[:10]}"


def test_kept_runs_are_unchanged(backend: Harness, scenario: Scenario) -> None:
    survivors = scenario.kept | scenario.held
    raw_before = items_of(backend.inventory(), survivors)
    api_before = pyworkflow_views(backend, survivors)
    purge(backend)
    assert items_of(backend.inventory(), survivors) == raw_before
    api_after = pyworkflow_views(backend, survivors)
    assert api_after == api_before
    assert all(view["run"] is not None and view["events"] for view in api_after.values())


def test_naive_datetime_is_rejected_before_anything_changes(backend: Harness, scenario: Scenario) -> None:
    before = snapshot(backend.inventory())
    for dry_run in (True, False):
        with pytest.raises(ValueError, match="timezone-aware"):
            backend.retention().delete_old_runs(CUTOFF.replace(tzinfo=None), dry_run=dry_run)
    assert snapshot(backend.inventory()) == before


def test_dry_run_changes_nothing_and_counts_like_the_purge(backend: Harness, scenario: Scenario) -> None:
    before = snapshot(backend.inventory())
    dry = purge(backend, dry_run=True)
    assert snapshot(backend.inventory()) == before
    real = purge(backend)
    assert dry.dry_run and not real.dry_run
    assert dict(dry.counts) == dict(real.counts)
    assert (dry.held, dry.runs) == (real.held, real.runs) == (len(scenario.held), len(scenario.deleted))


def test_rerun_is_a_no_op(backend: Harness, scenario: Scenario) -> None:
    purge(backend)
    after_first = snapshot(backend.inventory())
    again = purge(backend)
    assert again.runs == 0 and sum(again.counts.values()) == 0
    assert again.held == len(scenario.held)
    assert snapshot(backend.inventory()) == after_first


@pytest.mark.parametrize("k", [1, 3])
def test_interrupted_purge_then_rerun_ends_clean(backend: Harness, scenario: Scenario, k: int) -> None:
    def stop_after_k(info) -> None:
        if info.index > k:
            raise Interrupt(f"injected after {k} batches")

    with pytest.raises(Interrupt):
        purge(backend, batch_size=2, on_batch=stop_after_k)
    partial = run_ids(backend.inventory())
    assert scenario.kept | scenario.held <= partial
    assert partial & scenario.deleted, "the interruption came too late to leave work for the rerun"
    purge(backend)
    items = backend.inventory()
    assert run_ids(items) == scenario.kept | scenario.held
    assert_no_orphans(items)


def test_run_changed_between_selection_and_deletion_keeps_all_its_data(
        backend: Harness, scenario: Scenario) -> None:
    from pyworkflow.storage.schemas import RunStatus

    pw = backend.pyworkflow()
    touched: dict[str, Any] = {}

    def engine_updates_a_run(info) -> None:
        if touched:
            return
        victim = "run_tree_grandchild" if "run_tree_grandchild" in info.run_ids else info.run_ids[0]
        backend.run(pw.update_run_status(victim, RunStatus.FAILED))  # updated_at becomes now
        touched["id"] = victim
        touched["items"] = items_of(backend.inventory(), {victim})

    report = purge(backend, on_batch=engine_updates_a_run)
    victim = touched["id"]
    ancestors = scenario.ancestors(victim)
    items = backend.inventory()
    assert items_of(items, {victim}) == touched["items"], "the changed run lost data"
    assert run_ids(items) == scenario.kept | scenario.held | {victim} | (ancestors & scenario.deleted)
    assert report.changed == 1
    assert_no_orphans(items)


def test_project_seeder_store_is_purged_exactly(backend: Harness) -> None:
    seeded = list(generate(120, now=NOW, seed=7))
    retention = backend.retention(batch_size=25)
    assert retention.seed(seeded) == 120
    by_id = {s.run_id: s.run for s in seeded}
    cutoff = NOW - timedelta(days=30)

    def expired(run: dict) -> bool:
        from workflow_retention.timeutil import parse_timestamp
        return run["status"] in {"completed", "failed", "cancelled", "continued_as_new", "interrupted"} and \
            parse_timestamp(run["updated_at"]) < cutoff

    children: dict[str, list[str]] = {}
    for run in by_id.values():
        if run["parent_run_id"]:
            children.setdefault(run["parent_run_id"], []).append(run["run_id"])

    def deletable(run_id: str) -> bool:
        return expired(by_id[run_id]) and all(deletable(c) for c in children.get(run_id, []))

    expected_kept = {r for r in by_id if not deletable(r)}
    report = retention.delete_old_runs(cutoff)
    items = backend.inventory()
    assert run_ids(items) == expected_kept
    assert report.runs == len(by_id) - len(expected_kept)
    assert_no_orphans(items)
    # pyworkflow-engine reads what the seeder wrote.
    sample = next(s for s in seeded if s.run_id in expected_kept and s.hooks)
    view = pyworkflow_views(backend, [sample.run_id])[sample.run_id]
    assert view["run"]["status"] == sample.run["status"]
    assert [e[1] for e in view["events"]] == [e["type"] for e in sample.events]
    # Tokens (<run_id>:<hook_id>): pyworkflow 0.4.0's SQLite reads swap hook_id and run_id.
    assert {h[1] for h in view["hooks"]} == {h["token"] for h in sample.hooks}


def test_unsafe_run_id_is_skipped_and_reported(backend: Harness) -> None:
    from tests.scenario import OLD

    backend.run(add_run(backend.pyworkflow(), "run*hostile", "completed", OLD, extras=False))
    backend.run(add_run(backend.pyworkflow(), "run_fine", "completed", OLD, extras=False))
    report = purge(backend)
    assert run_ids(backend.inventory()) == {"run*hostile"}
    assert report.skipped == 1 and "run*hostile" in report.warnings[0]


@pytest.mark.requires("corruptible_timestamps")
def test_corrupt_updated_at_is_skipped_and_reported(capable_backend: Harness) -> None:
    backend = capable_backend
    scenario = backend.run(build(backend, backend.pyworkflow()))
    backend.corrupt_updated_at("run_exp_completed")
    report = purge(backend)
    assert "run_exp_completed" in run_ids(backend.inventory())
    assert report.skipped == 1 and any("run_exp_completed" in w for w in report.warnings)
    assert report.runs == len(scenario.deleted) - 1
