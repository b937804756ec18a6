"""Retries, backoff and the deadline, proven against DynamoDB Local with injected faults.

DynamoDB Local never throttles and never returns ``UnprocessedItems``; the
faults come from :class:`tests.dynamodb.faults.FaultyClient`, which wraps a
real client, so every item that is written is really written.
"""

from __future__ import annotations

import pytest

from tests.conformance.checks import assert_no_orphans, run_ids, snapshot
from tests.dynamodb.helpers import faulty_backend, markers
from tests.harness.dynamodb import DynamoDBHarness
from tests.scenario import CUTOFF, Scenario, build
from workflow_retention.exceptions import StorageError


@pytest.fixture
def scenario(dynamodb_harness: DynamoDBHarness) -> Scenario:
    return dynamodb_harness.run(build(dynamodb_harness, dynamodb_harness.pyworkflow()))


def assert_clean(h: DynamoDBHarness, sc: Scenario) -> None:
    items = h.inventory()
    assert run_ids(items) == sc.kept | sc.held
    assert_no_orphans(items)
    assert not markers(h)


def test_unprocessed_items_and_keys_are_retried_until_done(dynamodb_harness: DynamoDBHarness,
                                                            scenario: Scenario) -> None:
    h = dynamodb_harness
    expected = h.retention().delete_old_runs(CUTOFF, dry_run=True)
    backend, client = faulty_backend(h)
    client.unprocessed_writes(k=6)
    client.unprocessed_reads(k=10)
    report = backend.delete_old_runs(CUTOFF)
    assert client.calls["batch_write_item"] > 6 and client.calls["batch_get_item"] > 10
    assert dict(report.counts) == dict(expected.counts)
    assert_clean(h, scenario)


THROTTLES = ("ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded")


def test_throttling_is_retried_on_every_call(dynamodb_harness: DynamoDBHarness, scenario: Scenario) -> None:
    h = dynamodb_harness
    expected = h.retention().delete_old_runs(CUTOFF, dry_run=True)
    backend, client = faulty_backend(h)
    ops = ("query", "scan", "batch_get_item", "batch_write_item", "execute_statement", "transact_write_items")
    for n, op in enumerate(ops):
        client.throttle_first(op, 2, THROTTLES[n % len(THROTTLES)])
    report = backend.delete_old_runs(CUTOFF)
    assert backend.table.capacity.retries == 2 * len(ops)
    assert dict(report.counts) == dict(expected.counts)
    assert_clean(h, scenario)


@pytest.mark.parametrize("code", ["ThrottlingError", "TransactionConflict"])
def test_a_commit_transaction_cancelled_by_throttling_or_a_conflict_is_sent_again(
        dynamodb_harness: DynamoDBHarness, scenario: Scenario, code: str) -> None:
    """TransactWriteItems reports throttling and conflicts per delete: the transaction is sent again."""
    h = dynamodb_harness
    expected = h.retention().delete_old_runs(CUTOFF, dry_run=True)
    backend, client = faulty_backend(h, batch_size=4)
    client.cancelled_transactions(k=3, code=code)
    report = backend.delete_old_runs(CUTOFF)
    assert client.calls["transact_write_items"] > 3 and backend.table.capacity.retries >= 3
    assert dict(report.counts) == dict(expected.counts) and report.runs == len(scenario.deleted)
    assert_clean(h, scenario)


def test_a_cancellation_reason_that_is_no_throttling_is_loud_and_loses_nothing(dynamodb_harness: DynamoDBHarness,
                                                                              scenario: Scenario) -> None:
    from botocore.exceptions import ClientError

    h = dynamodb_harness
    backend, client = faulty_backend(h, batch_size=4)
    client.cancelled_transactions(k=10**6, code="ValidationError")
    with pytest.raises(StorageError, match="TransactWriteItems .*ValidationError") as caught:
        backend.delete_old_runs(CUTOFF)
    assert isinstance(caught.value.__cause__, ClientError)
    backend.close()
    items = h.inventory()
    assert run_ids(items) >= scenario.kept | scenario.held
    assert scenario.deleted - run_ids(items) <= markers(h), "a run was deleted without a marker to finish it"
    h.retention().delete_old_runs(CUTOFF)
    assert_clean(h, scenario)


def test_passing_the_deadline_is_loud_and_loses_nothing(dynamodb_harness: DynamoDBHarness,
                                                        scenario: Scenario) -> None:
    h = dynamodb_harness
    backend, client = faulty_backend(h, retry_deadline=0.5, batch_size=4)
    client.stuck_writes(after=4)  # the first batch's markers are written, then nothing more
    with pytest.raises(StorageError, match=r"BatchWriteItem: still \d+ unprocessed writes after retrying"):
        backend.delete_old_runs(CUTOFF)
    backend.close()
    items = h.inventory()
    assert run_ids(items) >= scenario.kept | scenario.held
    committed = scenario.deleted - run_ids(items)
    assert committed <= markers(h), "a run was deleted without a marker to finish it"
    h.retention().delete_old_runs(CUTOFF)
    assert_clean(h, scenario)


def test_throttling_past_the_deadline_is_loud(dynamodb_harness: DynamoDBHarness, scenario: Scenario) -> None:
    h = dynamodb_harness
    before = snapshot(h.inventory())
    backend, client = faulty_backend(h, retry_deadline=0.3)
    client.throttle_first("query", 10**6, "ThrottlingException")
    with pytest.raises(StorageError, match="query: still throttled after retrying for 0.3s"):
        backend.delete_old_runs(CUTOFF)
    assert snapshot(h.inventory()) == before


def test_other_errors_are_raised_at_once_as_storage_errors(dynamodb_harness: DynamoDBHarness,
                                                           scenario: Scenario) -> None:
    from botocore.exceptions import ClientError

    h = dynamodb_harness
    backend, client = faulty_backend(h, retry_deadline=30)
    client.throttle_first("query", 10**6, "AccessDeniedException")
    with pytest.raises(StorageError, match="AccessDeniedException") as caught:
        backend.delete_old_runs(CUTOFF)
    assert isinstance(caught.value.__cause__, ClientError)
    assert backend.table.capacity.retries == 0, "a non-retryable error was retried"


def test_missing_table_is_a_clear_error(dynamodb_harness: DynamoDBHarness) -> None:
    from workflow_retention.backends.dynamodb import DynamoDBBackend

    h = dynamodb_harness
    backend = h.track(DynamoDBBackend("wr_no_such_table", region="us-east-1", endpoint_url=h.endpoint))
    with pytest.raises(StorageError, match="'wr_no_such_table' does not exist"):
        backend.delete_old_runs(CUTOFF)
    facts = h.retention().check()
    assert facts["table"] == h.table and "GSI1" in facts["indexes"]
