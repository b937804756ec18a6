"""The commit order on DynamoDB: a run changed at any moment keeps everything; a crash at any point
leaves a state the next purge completes (markers first, conditional delete, cascade, markers last)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conformance.checks import assert_no_orphans, items_of, run_ids
from tests.dynamodb.faults import Crash
from tests.dynamodb.helpers import commit_ids, faulty_backend, markers
from tests.harness.dynamodb import DynamoDBHarness
from tests.scenario import CUTOFF, Scenario, build


@pytest.fixture
def scenario(dynamodb_harness: DynamoDBHarness) -> Scenario:
    return dynamodb_harness.run(build(dynamodb_harness, dynamodb_harness.pyworkflow()))


def writes(prefix: str, request: str = "DeleteRequest") -> Any:
    """Matches a BatchWriteItem holding a ``request`` for a key whose PK starts with ``prefix``."""
    def matches(params: dict[str, Any]) -> bool:
        for reqs in params["RequestItems"].values():
            for req in reqs:
                body = req.get(request)
                if body and (body.get("Key") or body.get("Item"))["PK"]["S"].startswith(prefix):
                    return True
        return False

    return matches


def nth(n: int) -> Any:
    """Matches the ``n``-th call."""
    calls: list[dict[str, Any]] = []

    def matches(params: dict[str, Any]) -> bool:
        calls.append(params)
        return len(calls) == n

    return matches


def cascade_read(n: int) -> Any:
    """Matches the ``n``-th read of a cascade (hooks on GSI1, or the runs' partitions), not the planner's."""
    calls: list[dict[str, Any]] = []

    def matches(params: dict[str, Any]) -> bool:
        if '"GSI4"' not in params["Statement"]:
            calls.append(params)
        return len(calls) == n

    return matches


CRASH_POINTS = {
    "markers-written": ("batch_write_item", writes("RETENTION#", "PutRequest")),
    "first-commit": ("transact_write_items", nth(1)),
    "after-some-commits": ("transact_write_items", nth(3)),
    "tokens-and-flags": ("batch_write_item", writes("TOKEN#")),
    "hooks-and-partitions": ("batch_write_item", writes("RUN#")),
    "cascade-lookups": ("execute_statement", cascade_read(2)),
    "before-the-scan": ("scan", nth(1)),
    "checkpoints": ("batch_write_item", writes("CHECKPOINT#")),
    "markers-dropped": ("batch_write_item", writes("RETENTION#")),
}


@pytest.mark.parametrize("point", sorted(CRASH_POINTS))
def test_crash_at_any_point_then_rerun_ends_clean(dynamodb_harness: DynamoDBHarness, scenario: Scenario,
                                                  point: str) -> None:
    h = dynamodb_harness
    survivors = scenario.kept | scenario.held
    before = items_of(h.inventory(), survivors)
    backend, client = faulty_backend(h, batch_size=3)
    client.crash_when(*CRASH_POINTS[point])
    with pytest.raises(Crash):
        backend.delete_old_runs(CUTOFF)
    backend.close()
    assert items_of(h.inventory(), survivors) == before, "a crash touched a run that must be kept"
    h.retention().delete_old_runs(CUTOFF)
    items = h.inventory()
    assert run_ids(items) == survivors
    assert_no_orphans(items)
    assert items_of(items, survivors) == before
    assert not markers(h)


def test_run_changed_after_its_marker_keeps_everything(dynamodb_harness: DynamoDBHarness,
                                                       scenario: Scenario) -> None:
    """The engine writes between step 1 (marker) and step 2 (conditional delete)."""
    from pyworkflow.storage.schemas import RunStatus

    h = dynamodb_harness
    pw = h.pyworkflow()
    seen: dict[str, Any] = {}

    def engine_updates_the_run(params: dict[str, Any]) -> None:
        victim = commit_ids(params)[0]
        h.run(pw.update_run_status(victim, RunStatus.FAILED))
        seen.update(victim=victim, items=items_of(h.inventory(), {victim}))

    backend, client = faulty_backend(h, workers=1)  # the engine call runs on the caller's thread
    client.before("transact_write_items", 1, engine_updates_the_run)
    report = backend.delete_old_runs(CUTOFF)
    victim = seen["victim"]
    items = h.inventory()
    kept = items_of(items, {victim})
    assert kept == {k: v for k, v in seen["items"].items() if k[0] != "retention_markers"}
    assert victim in run_ids(items) and report.changed == 1
    assert_no_orphans(items)
    assert not markers(h)
    ancestors, node = set(), victim
    while node in scenario.parents:
        node = scenario.parents[node]
        ancestors.add(node)
    assert run_ids(items) == scenario.kept | scenario.held | {victim} | (ancestors & scenario.deleted)


def test_run_gone_before_its_commit_is_cascaded_not_counted(dynamodb_harness: DynamoDBHarness,
                                                            scenario: Scenario) -> None:
    """Someone else (here: a raw delete, as pyworkflow's own purge does) removes the run item first."""
    h = dynamodb_harness
    gone: dict[str, str] = {}

    def someone_deletes_it(params: dict[str, Any]) -> None:
        gone["id"] = commit_ids(params)[0]
        h.client.delete_item(TableName=h.table, Key={"PK": {"S": f"RUN#{gone['id']}"}, "SK": {"S": "#METADATA"}})

    backend, client = faulty_backend(h, workers=1)
    client.before("transact_write_items", 1, someone_deletes_it)
    report = backend.delete_old_runs(CUTOFF)
    items = h.inventory()
    assert report.runs == len(scenario.deleted) - 1 and report.changed == 0
    assert run_ids(items) == scenario.kept | scenario.held
    assert_no_orphans(items)


def test_markers_of_a_dead_purge_whose_runs_changed_since_are_dropped(dynamodb_harness: DynamoDBHarness,
                                                                      scenario: Scenario) -> None:
    """A purge dies after writing its markers; the engine then revives those runs: no purge can commit
    the versions those markers name any more, so the next purge drops them (and keeps the runs)."""
    from pyworkflow.storage.schemas import RunStatus

    h = dynamodb_harness
    backend, client = faulty_backend(h, workers=1)
    client.crash_at("transact_write_items", 1)
    with pytest.raises(Crash):
        backend.delete_old_runs(CUTOFF)
    marked = markers(h)
    assert marked and marked <= scenario.deleted
    for run_id in marked:
        h.run(h.pyworkflow().update_run_status(run_id, RunStatus.RUNNING))
    revived = items_of(h.inventory(), marked)
    h.retention().delete_old_runs(CUTOFF)
    items = h.inventory()
    assert marked <= run_ids(items)
    assert items_of(items, marked) == {k: v for k, v in revived.items() if k[0] != "retention_markers"}
    assert not markers(h)
    assert_no_orphans(items)
