"""Orphan repair and audit, on every backend (issue 8)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from tests.conformance.checks import assert_no_orphans, orphans, pyworkflow_views, run_ids, snapshot
from tests.harness.base import Harness
from tests.scenario import CUTOFF, NOW, OLD, Scenario, add_run, build


@pytest.fixture
def scenario(backend: Harness) -> Scenario:
    return backend.run(build(backend, backend.pyworkflow()))


async def _plain_store(pw) -> tuple[set[str], set[str]]:
    """Expired and kept runs with every kind of child data, and no parent/child links
    (pyworkflow's own purge on PostgreSQL rolls back entirely on those)."""
    expired = {f"run_base_exp_{n}" for n in range(4)}
    kept = {"run_base_recent", "run_base_running"}
    for run_id in sorted(expired):
        await add_run(pw, run_id, "completed", OLD)
    await add_run(pw, "run_base_recent", "completed", NOW - timedelta(days=1))
    await add_run(pw, "run_base_running", "running", OLD)
    return expired, kept


def test_baseline_purge_then_repair_leaves_zero_orphans(backend: Harness) -> None:
    expired, kept = backend.run(_plain_store(backend.pyworkflow()))
    views = pyworkflow_views(backend, kept)
    try:
        backend.run(backend.baseline_purge(CUTOFF))
    except Exception as exc:  # pyworkflow-engine 0.4.0's purge is broken on some stores
        assert backend.baseline_fails, f"baseline purge failed unexpectedly: {exc!r}"
    left_by_baseline = orphans(backend.inventory())
    report = backend.retention().sweep_orphans(grace=timedelta(0))
    items = backend.inventory()
    assert_no_orphans(items)
    assert report.total == len(left_by_baseline)
    assert kept <= run_ids(items)
    assert pyworkflow_views(backend, kept) == views


def test_each_kind_of_orphan_is_found_and_repaired(kind_backend: Harness, orphan_kind: str) -> None:
    backend = kind_backend
    backend.run(add_run(backend.pyworkflow(), "run_alive", "completed", OLD))
    before_alive = pyworkflow_views(backend, {"run_alive"})
    backend.run(backend.synthesize_orphan(orphan_kind, "run_gone_1", OLD))
    assert orphans(backend.inventory()), f"synthesizing a {orphan_kind} orphan left no trace"
    dry = backend.retention().sweep_orphans(dry_run=True)
    assert dry.counts[orphan_kind] >= 1 and orphans(backend.inventory())
    real = backend.retention().sweep_orphans()
    assert dict(real.counts) == dict(dry.counts)
    assert_no_orphans(backend.inventory())
    assert backend.retention().sweep_orphans().total == 0
    assert pyworkflow_views(backend, {"run_alive"}) == before_alive


def test_orphans_inside_the_grace_period_are_kept(backend: Harness) -> None:
    kinds = sorted(backend.timestamped_orphan_kinds)
    for n, kind in enumerate(kinds):
        backend.run(backend.synthesize_orphan(kind, f"run_young_{n}", NOW - timedelta(minutes=10)))
    young = orphans(backend.inventory())
    assert backend.retention().sweep_orphans(grace=timedelta(hours=1)).total == 0
    assert orphans(backend.inventory()) == young
    backend.retention().sweep_orphans(grace=timedelta(minutes=1))
    assert_no_orphans(backend.inventory())


def test_sweep_never_touches_a_store_without_orphans(backend: Harness, scenario: Scenario) -> None:
    before = snapshot(backend.inventory())
    report = backend.retention().sweep_orphans(grace=timedelta(0))
    assert report.total == 0, dict(report.counts)
    assert snapshot(backend.inventory()) == before


def test_audit_describes_without_changing(backend: Harness, scenario: Scenario) -> None:
    backend.run(backend.synthesize_orphan(sorted(backend.orphan_kinds)[0], "run_gone_2", OLD)) \
        if backend.orphan_kinds else None
    before = snapshot(backend.inventory())
    audit = backend.retention().audit(older_than=CUTOFF)
    assert snapshot(backend.inventory()) == before
    assert sum(audit.census.runs_by_status.values()) == len(scenario.all_runs)
    assert audit.census.runs_by_status["completed"] >= 5
    # The oldest terminal run (the live runs are older still), and how far retention is behind the cutoff.
    assert audit.census.oldest_terminal == OLD and audit.census.lag(CUTOFF) == CUTOFF - OLD
    assert audit.purge is not None and audit.purge.dry_run
    assert audit.purge.runs == len(scenario.deleted) and audit.purge.held == len(scenario.held)
    assert audit.orphans.dry_run and audit.orphans.total == (1 if backend.orphan_kinds else 0)
    data = json.loads(audit.to_json())
    assert data["census"]["kinds"]["runs"]["count"] == len(scenario.all_runs)
