"""DynamoDB-specific orphan rules: grace periods borrowed from siblings, purge markers, odd run ids."""

from __future__ import annotations

from datetime import timedelta

from tests.conformance.checks import assert_no_orphans, orphans
from tests.harness.dynamodb import DynamoDBHarness
from tests.scenario import NOW, OLD, add_run
from workflow_retention.report import Kind


def test_counters_and_tokens_follow_their_siblings_grace(dynamodb_harness: DynamoDBHarness) -> None:
    h = dynamodb_harness
    young = NOW - timedelta(minutes=10)
    for kind in (Kind.EVENTS, Kind.EVENT_COUNTERS):
        h.run(h.synthesize_orphan(kind, "run_young_events", young))
    for kind in (Kind.HOOKS, Kind.HOOK_TOKENS):
        h.run(h.synthesize_orphan(kind, "run_young_hook", young))
    left = orphans(h.inventory())
    assert len(left) == 4
    assert h.retention().sweep_orphans(grace=timedelta(hours=1)).total == 0
    assert orphans(h.inventory()) == left
    report = h.retention().sweep_orphans(grace=timedelta(minutes=1))
    assert dict(report.counts) == {Kind.EVENTS: 1, Kind.EVENT_COUNTERS: 1, Kind.HOOKS: 1, Kind.HOOK_TOKENS: 1}
    assert report.bytes > 0 and report.bytes_estimated
    assert_no_orphans(h.inventory())


def test_stale_purge_markers_are_orphans_young_ones_are_not(dynamodb_harness: DynamoDBHarness) -> None:
    from workflow_retention.backends.dynamodb.layout import marker_key

    h = dynamodb_harness
    h.run(add_run(h.pyworkflow(), "run_alive", "completed", OLD, extras=False))
    for run_id, when in (("run_gone_old", OLD), ("run_gone_new", NOW), ("run_alive", OLD)):
        h.client.put_item(TableName=h.table, Item={**marker_key(run_id), "run_id": {"S": run_id},
                                                   "created_at": {"S": when.isoformat()}})
    report = h.retention().sweep_orphans()
    assert dict(report.counts) == {Kind.INDEX_ENTRIES: 1}
    left = {i.run_id for i in h.inventory() if i.kind == "retention_markers"}
    assert left == {"run_gone_new", "run_alive"}


def test_checkpoint_of_a_run_whose_id_holds_a_colon_is_not_an_orphan(dynamodb_harness: DynamoDBHarness) -> None:
    h = dynamodb_harness
    pw = h.pyworkflow()
    h.run(add_run(pw, "run:odd", "completed", OLD, extras=False))
    h.run(pw.save_checkpoint("run:odd:step_x", {"cursor": 1}))
    h.run(pw.set_cancellation_flag("run/../x"))
    report = h.retention().sweep_orphans(grace=timedelta(0))
    assert report.total == 0
    assert report.skipped == 1 and "run/../x" in report.warnings[0]
    assert h.run(pw.load_checkpoint("run:odd:step_x")) == {"cursor": 1}
