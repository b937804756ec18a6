"""Run ids with ':' on DynamoDB: a checkpoint ``CHECKPOINT#<key>`` belongs to the longest prefix of its key
that names an existing run (planning.key_owner), in the purge's Scan, its dry run and the orphan sweep."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.conformance.checks import assert_no_orphans, items_of, run_ids
from tests.harness.dynamodb import DynamoDBHarness
from tests.scenario import CUTOFF, OLD, add_run
from workflow_retention.report import Kind

# Nested ids: a schedule "x" whose runs' ids extend each other (pyworkflow takes schedule_id[:8]).
OUTER, LIVE, INNER = "sched_x", "sched_x:y", "sched_x:y:z"


def _nested(h: DynamoDBHarness) -> None:
    pw = h.pyworkflow()
    h.run(add_run(pw, OUTER, "completed", OLD))
    h.run(add_run(pw, LIVE, "running", OLD))
    h.run(add_run(pw, INNER, "failed", OLD))


@pytest.mark.parametrize("own_ids", [50_000, 0], ids=["own-markers-in-memory", "markers-read"])
def test_runs_inside_and_around_a_live_run_go_whole_and_the_live_run_keeps_its_checkpoints(
        dynamodb_harness: DynamoDBHarness, monkeypatch: pytest.MonkeyPatch, own_ids: int) -> None:
    """The Scan's join, with the purge's own committed runs in memory, and past that limit (markers read)."""
    from workflow_retention.backends.dynamodb import purge

    monkeypatch.setattr(purge, "OWN_IDS", own_ids)
    h = dynamodb_harness
    _nested(h)
    live = items_of(h.inventory(), {LIVE})
    dry = h.retention().delete_old_runs(CUTOFF, dry_run=True)
    report = h.retention().delete_old_runs(CUTOFF)
    items = h.inventory()
    assert run_ids(items) == {LIVE} and items_of(items, {LIVE}) == live
    assert report.runs == 2 and report.counts[Kind.CHECKPOINTS] == 4
    assert dict(dry.counts) == dict(report.counts)
    assert_no_orphans(items)


@pytest.mark.parametrize("dry_run", [True, False])
def test_the_orphan_sweep_takes_a_checkpoint_only_when_no_prefix_of_its_key_is_a_run(
        dynamodb_harness: DynamoDBHarness, dry_run: bool) -> None:
    h = dynamodb_harness
    pw = h.pyworkflow()
    _nested(h)
    h.run(pw.save_checkpoint(f"{INNER}:gone:step_1", {"n": 1}))  # INNER's: the longest existing prefix
    h.run(pw.save_checkpoint("sched_gone:a:step_1", {"n": 2}))  # no prefix is a run: an orphan
    h.client.delete_item(TableName=h.table, Key={"PK": {"S": f"RUN#{OUTER}"}, "SK": {"S": "#METADATA"}})
    report = h.retention().sweep_orphans(grace=timedelta(0), dry_run=dry_run)
    # OUTER's record is gone: its own two checkpoints are orphans; none under LIVE or INNER is.
    assert report.counts[Kind.CHECKPOINTS] == 3, dict(report.counts)
    left = {i.key for i in h.inventory() if i.kind == "checkpoints"}
    assert any(k.startswith(f"CHECKPOINT#{INNER}:gone:") for k in left)
    assert sum(k.startswith(f"CHECKPOINT#{LIVE}:") for k in left) == 5
