"""Two purges at once (the CLI takes no lock: an operator's purge beside the Celery task).

A purge drops only the markers it wrote and those whose cascade it ran to
completion itself; a marker another purge still needs (its run not yet
committed, or committed and not yet cascaded) survives, so that purge can be
finished by a rerun if it dies.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest

from tests.conformance.checks import assert_no_orphans, items_of, run_ids
from tests.dynamodb.faults import Crash
from tests.dynamodb.helpers import faulty_backend, is_hooks_read, markers
from tests.harness.dynamodb import DynamoDBHarness
from tests.scenario import CUTOFF, NOW, OLD, add_run

WAIT = 120.0  # generous: four engineers share two cores
ANCIENT = NOW - timedelta(days=100)
OPERATOR_CUTOFF = NOW - timedelta(days=60)  # the operator's purge keeps more than the Celery task


def _store(h: DynamoDBHarness) -> tuple[set[str], set[str], set[str]]:
    """(runs only the Celery purge deletes, runs both delete, survivors)."""
    pw = h.pyworkflow()
    mine = {"run_b_1", "run_b_2", "run_b_parent", "run_b_child"}
    both = {"run_ab_1", "run_ab_2"}
    for run_id in ("run_b_1", "run_b_2", "run_b_parent"):
        h.run(add_run(pw, run_id, "completed", OLD))
    h.run(add_run(pw, "run_b_child", "failed", OLD, parent="run_b_parent", depth=1))
    for run_id in both:
        h.run(add_run(pw, run_id, "completed", ANCIENT))
    h.run(add_run(pw, "run_live", "running", ANCIENT))
    h.run(add_run(pw, "run_recent", "completed", NOW - timedelta(days=1)))
    return mine, both, {"run_live", "run_recent"}


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            out["report"] = fn()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, out


def test_a_purge_keeps_the_markers_of_a_concurrent_purge_that_then_dies_between_commit_and_cascade(
        dynamodb_harness: DynamoDBHarness) -> None:
    """B writes its markers; A runs whole; B commits and dies before its cascade; a rerun finishes B's runs."""
    h = dynamodb_harness
    mine, both, survivors = _store(h)
    before = items_of(h.inventory(), survivors)
    b_at_commit, a_done = threading.Event(), threading.Event()

    def pause(params: dict[str, Any]) -> None:
        b_at_commit.set()
        assert a_done.wait(WAIT), "purge A never finished"

    b, client = faulty_backend(h, workers=1)  # one thread: B pauses as a whole
    client.before("transact_write_items", 1, pause)
    client.crash_when("execute_statement", is_hooks_read)
    thread, out = _in_thread(lambda: b.delete_old_runs(CUTOFF))
    assert b_at_commit.wait(WAIT), "purge B never reached its commit"
    assert markers(h) == mine | both
    try:
        a = h.retention().delete_old_runs(OPERATOR_CUTOFF)
    finally:
        a_done.set()
        thread.join(WAIT)
    assert isinstance(out.get("error"), Crash), out
    assert a.runs == len(both)
    committed = mine - run_ids(h.inventory())
    assert committed == mine, "B committed its runs before it died"
    assert committed <= markers(h), "purge A dropped markers of runs purge B committed and never cascaded"
    rerun = h.retention().delete_old_runs(CUTOFF)
    items = h.inventory()
    assert run_ids(items) == survivors and rerun.runs == 0
    assert_no_orphans(items)
    assert items_of(items, survivors) == before
    assert not markers(h)


@pytest.mark.parametrize("b_dies", [False, True], ids=["b-finishes", "b-dies"])
def test_a_purge_that_runs_inside_another_purges_cascade_window_finishes_what_it_resumes(
        dynamodb_harness: DynamoDBHarness, b_dies: bool) -> None:
    """B commits; A runs whole (it resumes B's committed runs); then B cascades, or dies."""
    h = dynamodb_harness
    mine, both, survivors = _store(h)
    before = items_of(h.inventory(), survivors)
    b_cascading, a_done = threading.Event(), threading.Event()
    fired: list[int] = []

    def rule(real_fn: Any, n: int, **params: Any) -> Any:
        if is_hooks_read(params) and not fired:
            fired.append(n)
            b_cascading.set()
            assert a_done.wait(WAIT), "purge A never finished"
            if b_dies:
                raise Crash("injected crash at the first cascade query")
        return real_fn(**params)

    b, client = faulty_backend(h, workers=1)
    client.rules["execute_statement"] = rule
    thread, out = _in_thread(lambda: b.delete_old_runs(CUTOFF))
    assert b_cascading.wait(WAIT), "purge B never reached its cascade"
    try:
        a = h.retention().delete_old_runs(CUTOFF)
    finally:
        a_done.set()
        thread.join(WAIT)
    assert a.runs == 0, "A found B's runs committed: it cascades them, it does not count them"
    if b_dies:
        assert isinstance(out.get("error"), Crash), out
        h.retention().delete_old_runs(CUTOFF)
    else:
        assert "error" not in out, out
        assert out["report"].runs == len(mine | both)
    items = h.inventory()
    assert run_ids(items) == survivors
    assert_no_orphans(items)
    assert items_of(items, survivors) == before
    assert not markers(h)
