"""keep_last on DynamoDB (issue 21): GSI2 (``WORKFLOW#<name>``, ``created_at`` as the writer wrote it, with its UTC
offset) read newest first; a run whose offset makes its text sort lower is still ranked by its instant."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.conformance.checks import run_ids
from tests.harness.dynamodb import DynamoDBHarness
from tests.scenario import NOW, newest_written_at_an_offset
from workflow_retention.planning import Expiry
from workflow_retention.policy import parse_policy


def test_the_newest_run_is_kept_whatever_the_offset_its_created_at_was_written_with(
        dynamodb_harness: DynamoDBHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of issue 21: the GSI2 read stopped at the first page past the n-th terminal run *as text*; the newest
    run, written at UTC-10, sorts as text below runs created hours before it in UTC, so with pages of 2 it was
    never seen, keep_last kept an older run, and the newest was deleted."""
    from workflow_retention.backends.dynamodb import runs

    monkeypatch.setattr(runs, "SCAN_PAGE", 2)
    h = dynamodb_harness
    h.run(newest_written_at_an_offset(h.pyworkflow(), 4, NOW - timedelta(days=10)))
    policy = parse_policy({"retention": {"default": "1d", "keep_last": 1}})
    report = h.retention(batch_size=10).delete_old_runs(Expiry(policy, NOW))
    assert run_ids(h.inventory()) == {"run_newest"}, report.warnings
    assert report.runs == 4
