"""Discovery on GSI1 sees every run record under ``GSI1PK = RUNS``, whatever its ``GSI1SK`` holds: the
status ranges pyworkflow writes, and the gaps around them (statuses it never writes, unreadable times)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.conformance.checks import assert_no_orphans, run_ids
from tests.harness.dynamodb import DynamoDBHarness
from tests.scenario import CUTOFF, NOW, OLD, add_run

# Statuses pyworkflow never writes, of runs last updated long ago: reported, kept.
ODD = {
    "run_empty": "",                # sorts before every status
    "run_upper": "CANCELLED",       # upper case sorts before lower case
    "run_between": "done",          # between continued_as_new and failed
    "run_after": "zombie",          # after suspended, the last status
    "run_prefix": "completedx",     # shares a status's letters, not its '#'
}
# Lower-case terminal runs whose GSI1SK tail is not a timestamp: found in the gap after '<status>#9'.
UNREADABLE_INDEX = {"run_tail_word": "completed#garbage", "run_tail_tilde": "failed#~"}


def _set(h: DynamoDBHarness, run_id: str, status: str, gsi1sk: str) -> None:
    h.client.update_item(TableName=h.table, Key={"PK": {"S": f"RUN#{run_id}"}, "SK": {"S": "#METADATA"}},
                         UpdateExpression="SET #s = :s, GSI1SK = :k", ExpressionAttributeNames={"#s": "status"},
                         ExpressionAttributeValues={":s": {"S": status}, ":k": {"S": gsi1sk}})


@pytest.mark.parametrize("dry_run", [True, False])
def test_runs_outside_the_status_ranges_are_found_reported_or_purged_by_the_shared_rule(
        dynamodb_harness: DynamoDBHarness, dry_run: bool) -> None:
    h = dynamodb_harness
    pw = h.pyworkflow()
    for run_id, status in ODD.items():
        h.run(add_run(pw, run_id, "completed", OLD, extras=False))
        _set(h, run_id, status, f"{status}#{OLD.isoformat()}")
    for run_id, gsi1sk in UNREADABLE_INDEX.items():
        h.run(add_run(pw, run_id, gsi1sk.split("#")[0], OLD))
        _set(h, run_id, gsi1sk.split("#")[0], gsi1sk)
    h.run(add_run(pw, "run_recent_odd", "completed", NOW - timedelta(days=1), extras=False))
    _set(h, "run_recent_odd", "Completed", f"Completed#{NOW.isoformat()}")
    report = h.retention().delete_old_runs(CUTOFF, dry_run=dry_run)
    assert report.skipped == len(ODD), report.warnings
    assert all(any(repr(run_id) in w for w in report.warnings) for run_id in ODD)
    assert report.runs == len(UNREADABLE_INDEX)
    items = h.inventory()
    if not dry_run:
        assert run_ids(items) == set(ODD) | {"run_recent_odd"}
        assert_no_orphans(items)
