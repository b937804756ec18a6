"""A purge that dies at any point of its cascade leaves purge markers; the next purge or orphan sweep finishes.

The failure is injected around the real file system: the n-th file deletion
(or the token-index rewrite) raises an exception that nothing catches, as a
killed process would stop there.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.conformance.checks import assert_no_orphans, items_of, pyworkflow_views, run_ids
from tests.harness.file import FileHarness
from tests.scenario import CUTOFF, Scenario, build
from workflow_retention.backends.file import cascade as cascade_module
from workflow_retention.base import BatchInfo


class Crash(BaseException):
    """Not an Exception: nothing in the backend may catch it."""


@pytest.fixture
def scenario(store: FileHarness) -> Scenario:
    return store.run(build(store, store.pyworkflow()))


def _crash_after(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, n: int) -> None:
    real, calls = getattr(module, name), [0]

    def dying(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] > n:
            raise Crash(f"{name} #{calls[0]}")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, dying)


def _assert_finished(store: FileHarness, scenario: Scenario, raw_before: dict, views_before: dict) -> None:
    items = store.inventory()
    survivors = scenario.kept | scenario.held
    assert run_ids(items) == survivors
    assert_no_orphans(items)
    assert not [i for i in items if i.kind in ("other", "purge_markers")]
    assert items_of(items, survivors) == raw_before
    assert pyworkflow_views(store, survivors) == views_before


# unlink calls on the scenario: steps 0-9, hooks 10-19, checkpoints 20-39, events 40-49,
# flags 50-59, markers 60-69 (lock files go through unlink_lock, between events and flags).
@pytest.mark.parametrize("point", [("unlink", 0), ("unlink", 7), ("unlink", 45), ("unlink", 63),
                                   ("unlink_lock", 0), ("unlink_lock", 30), ("atomic_write", 0)])
@pytest.mark.parametrize("finisher", ["purge", "sweep_orphans"])
def test_crash_in_the_cascade_then_rerun_ends_clean(store: FileHarness, scenario: Scenario,
                                                     monkeypatch: pytest.MonkeyPatch, point: tuple,
                                                     finisher: str) -> None:
    survivors = scenario.kept | scenario.held
    raw_before, views_before = items_of(store.inventory(), survivors), pyworkflow_views(store, survivors)
    name, n = point
    with monkeypatch.context() as patch:
        _crash_after(patch, cascade_module, name, n)
        with pytest.raises(Crash):
            store.retention().delete_old_runs(CUTOFF)
    markers = sum(1 for i in store.inventory() if i.kind == "purge_markers")
    assert markers, "the crash left no marker"
    if finisher == "purge":
        again = store.retention().delete_old_runs(CUTOFF)
        assert again.runs == 0 and again.held == len(scenario.held)
    else:
        swept = store.retention().sweep_orphans(grace=timedelta(0))
        assert swept.counts["runs"] == markers and swept.bytes > 0
    _assert_finished(store, scenario, raw_before, views_before)


def test_crash_between_commits_keeps_the_rest_for_the_next_purge(store: FileHarness, scenario: Scenario,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    survivors = scenario.kept | scenario.held
    raw_before, views_before = items_of(store.inventory(), survivors), pyworkflow_views(store, survivors)
    with monkeypatch.context() as patch:
        _crash_after(patch, os, "replace", 4)
        with pytest.raises(Crash):
            store.retention(batch_size=3).delete_old_runs(CUTOFF)
    markers = {i.key for i in store.inventory() if i.kind == "purge_markers"}
    assert len(markers) == 4 and markers <= scenario.deleted
    report = store.retention().delete_old_runs(CUTOFF)
    assert report.runs == len(scenario.deleted) - 4
    _assert_finished(store, scenario, raw_before, views_before)


def test_a_stopped_purge_finishes_what_it_committed(store: FileHarness, scenario: Scenario) -> None:
    from workflow_retention.exceptions import LeaseLostError

    def lose_lease(info: BatchInfo) -> None:
        if info.index == 3:
            raise LeaseLostError("lease lost")

    report = store.retention(batch_size=2).delete_old_runs(CUTOFF, on_batch=lose_lease)
    items = store.inventory()
    assert report.stopped and report.runs == 3  # depth 2: one run, depth 1: two; then the lease is lost
    assert not [i for i in items if i.kind == "purge_markers"]
    assert len(run_ids(items) & scenario.deleted) == len(scenario.deleted) - 3
    assert_no_orphans(items)
