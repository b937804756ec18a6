"""Batch markers (issue 17): one marker item per batch instead of one per run, with crash safety unchanged.

The purge writes one marker naming every run of a batch before the batch's commits; past ``OWN_IDS`` runs it
falls back to per-run markers; markers an older version left (per-run) are still finished; the orphan sweep
takes a stale batch marker only when none of its runs exists; a marker's write units are paced by its size.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conformance.checks import assert_no_orphans, items_of, run_ids
from tests.dynamodb.faults import Crash
from tests.dynamodb.helpers import commit_ids, faulty_backend, is_hooks_read, markers
from tests.harness.dynamodb import DynamoDBHarness
from tests.scenario import CUTOFF, NOW, OLD, add_run
from workflow_retention.report import Kind


def _flat(h: DynamoDBHarness, count: int) -> set[str]:
    pw = h.pyworkflow()
    ids = {f"run_bm_{n:03d}" for n in range(count)}
    for run_id in sorted(ids):
        h.run(add_run(pw, run_id, "completed", OLD))
    h.run(add_run(pw, "run_bm_live", "running", OLD))
    return ids


def _marker_puts(client: Any) -> list[int]:
    """Records, per BatchWriteItem holding marker puts, how many marker items it puts."""
    puts: list[int] = []

    def rule(real_fn: Any, n: int, **params: Any) -> Any:
        count = sum(1 for reqs in params["RequestItems"].values() for r in reqs
                    if "PutRequest" in r and r["PutRequest"]["Item"]["PK"]["S"].startswith("RETENTION#"))
        if count:
            puts.append(count)
        return real_fn(**params)

    client.rules["batch_write_item"] = rule
    return puts


def test_one_marker_item_per_batch_names_every_run_of_the_batch(dynamodb_harness: DynamoDBHarness) -> None:
    h = dynamodb_harness
    expired = _flat(h, 7)
    backend, client = faulty_backend(h, batch_size=3)
    puts = _marker_puts(client)
    seen: list[set[str]] = []
    client.crash_at("transact_write_items", 2)  # the second batch's commit: its marker is written, not dropped
    with pytest.raises(Crash):
        backend.delete_old_runs(CUTOFF, on_batch=lambda info: seen.append(set(info.run_ids)))
    backend.close()
    assert puts == [1, 1], "one marker item per batch"
    assert markers(h) == seen[0] | seen[1] and seen[0] | seen[1] <= expired
    report = h.retention().delete_old_runs(CUTOFF)
    items = h.inventory()
    assert run_ids(items) == {"run_bm_live"} and report.runs == len(expired - seen[0])
    assert not markers(h)
    assert_no_orphans(items)


def _nth_hooks_read(n: int) -> Any:
    calls: list[int] = []

    def matches(params: dict[str, Any]) -> bool:
        if is_hooks_read(params):
            calls.append(1)
        return len(calls) == n

    return matches


@pytest.mark.parametrize("rerun_own_ids", [50_000, 4], ids=["rerun-in-memory", "rerun-spills"])
@pytest.mark.parametrize("point", ["after-some-commits", "cascade", "before-the-scan"])
def test_past_own_ids_a_purge_marks_runs_one_by_one_and_a_crash_is_still_finished(
        dynamodb_harness: DynamoDBHarness, monkeypatch: pytest.MonkeyPatch, point: str, rerun_own_ids: int) -> None:
    """With OWN_IDS = 4 and batches of 3, the first batch gets a batch marker and the next per-run markers.

    The rerun finds both forms. A dry run counts what the purge deletes when the runs it would claim fit in
    OWN_IDS (past that it counts only the checkpoints of runs with per-run markers: docs/backends/dynamodb.md).
    """
    from workflow_retention.backends.dynamodb import purge

    monkeypatch.setattr(purge, "OWN_IDS", 4)
    h = dynamodb_harness
    expired = _flat(h, 8)
    live = items_of(h.inventory(), {"run_bm_live"})
    backend, client = faulty_backend(h, batch_size=3)
    if point == "after-some-commits":
        client.crash_at("transact_write_items", 3)
    elif point == "cascade":
        client.crash_when("execute_statement", _nth_hooks_read(3))
    else:
        client.crash_at("scan", 1)
    with pytest.raises(Crash):
        backend.delete_old_runs(CUTOFF)
    backend.close()
    assert markers(h) and markers(h) <= expired
    monkeypatch.setattr(purge, "OWN_IDS", rerun_own_ids)
    dry = h.retention().delete_old_runs(CUTOFF, dry_run=True)
    report = h.retention().delete_old_runs(CUTOFF)
    assert dry.runs == report.runs
    if rerun_own_ids > len(expired):
        assert dict(dry.counts) == dict(report.counts)
    items = h.inventory()
    assert run_ids(items) == {"run_bm_live"} and items_of(items, {"run_bm_live"}) == live
    assert not markers(h)
    assert_no_orphans(items)


def test_a_per_run_marker_left_by_an_older_version_is_finished(dynamodb_harness: DynamoDBHarness) -> None:
    """A purge of the previous version (per-run markers) committed a run and died before its cascade."""
    from workflow_retention.backends.dynamodb.layout import marker_key

    h = dynamodb_harness
    _flat(h, 2)
    h.client.put_item(TableName=h.table, Item={
        **marker_key("run_bm_000"), "entity_type": {"S": "retention_purge"}, "run_id": {"S": "run_bm_000"},
        "purge_id": {"S": "an-older-purge"}, "created_at": {"S": NOW.isoformat()},
        "seen_status": {"S": "completed"}, "seen_updated_at": {"S": OLD.isoformat()}})
    h.client.delete_item(TableName=h.table, Key={"PK": {"S": "RUN#run_bm_000"}, "SK": {"S": "#METADATA"}})
    assert markers(h) == {"run_bm_000"}
    dry = h.retention().delete_old_runs(CUTOFF, dry_run=True)
    report = h.retention().delete_old_runs(CUTOFF)
    assert report.runs == dry.runs == 1 and dict(dry.counts) == dict(report.counts)
    assert report.counts[Kind.CHECKPOINTS] > 0 and report.counts[Kind.HOOKS] == 2
    items = h.inventory()
    assert run_ids(items) == {"run_bm_live"} and not markers(h)
    assert_no_orphans(items)


def test_a_stale_batch_marker_is_an_orphan_only_when_none_of_its_runs_exists(
        dynamodb_harness: DynamoDBHarness) -> None:
    from workflow_retention.backends.dynamodb.markers import batch_partition

    h = dynamodb_harness
    h.run(add_run(h.pyworkflow(), "run_alive", "completed", OLD, extras=False))
    pk = batch_partition("dead")
    for sk, runs, when in (("BATCH#dead#1", ["run_gone_a", "run_gone_b"], OLD),
                           ("BATCH#dead#2", ["run_gone_c", "run_alive"], OLD),
                           ("BATCH#dead#3", ["run_gone_d"], NOW)):
        h.client.put_item(TableName=h.table, Item={
            "PK": {"S": pk}, "SK": {"S": sk}, "purge_id": {"S": "dead"}, "created_at": {"S": when.isoformat()},
            "runs": {"M": {r: {"L": [{"S": "completed"}, {"S": OLD.isoformat()}]} for r in runs}}})
    dry = h.retention().sweep_orphans(dry_run=True)
    report = h.retention().sweep_orphans()
    assert dict(report.counts) == dict(dry.counts) == {Kind.INDEX_ENTRIES: 1}
    assert markers(h) == {"run_gone_c", "run_alive", "run_gone_d"}


def test_a_batch_marker_is_paced_and_counted_by_its_size() -> None:
    """DynamoDB bills a put or delete per KB of the item: a 40 KB marker is 40 units, for the cap too."""
    from workflow_retention.backends.dynamodb.client import Table, write_units

    class Client:
        def batch_write_item(self, **params: Any) -> dict[str, Any]:
            return {}

    spent: list[float] = []
    table = Table(Client(), "t", deadline_s=5, max_wcu=1000, workers=1)
    assert table.limiter is not None
    table.limiter.spend = spent.append  # type: ignore[method-assign]
    big = {"PK": {"S": "RETENTION#PURGE#00"}, "SK": {"S": "BATCH#x#1"}, "runs": {"S": "x" * 40_000}}
    small = {"PK": {"S": "RUN#a"}, "SK": {"S": "#METADATA"}}
    assert write_units(big) == 40 and write_units(small) == 1
    table.put_many([big, small])
    table.delete_many([{"PK": big["PK"], "SK": big["SK"]}], units=[40])
    assert spent == [41, 40] and table.capacity.items_written == 81


def test_an_engine_revival_between_marker_and_commit_narrows_the_marker(dynamodb_harness: DynamoDBHarness) -> None:
    """The run that changed keeps everything; the batch marker is rewritten naming only committed runs
    (seen by a crash right after the commits: the next purge finds no marker naming the changed run)."""
    from pyworkflow.storage.schemas import RunStatus

    h = dynamodb_harness
    _flat(h, 3)
    pw = h.pyworkflow()
    victim: list[str] = []

    def engine_updates_a_run(params: dict[str, Any]) -> None:
        victim.append(commit_ids(params)[0])
        h.run(pw.update_run_status(victim[0], RunStatus.FAILED))

    backend, client = faulty_backend(h, workers=1)
    client.before("transact_write_items", 1, engine_updates_a_run)
    client.crash_when("execute_statement", is_hooks_read)
    with pytest.raises(Crash):
        backend.delete_old_runs(CUTOFF)
    backend.close()
    assert victim and markers(h) == {"run_bm_000", "run_bm_001", "run_bm_002"} - set(victim)
    h.retention().delete_old_runs(CUTOFF)
    items = h.inventory()
    assert run_ids(items) == {"run_bm_live", victim[0]} and not markers(h)
    assert_no_orphans(items)
