"""Shared pieces of the DynamoDB tests: a backend on the harness's table with a faulty client."""

from __future__ import annotations

from typing import Any

from tests.dynamodb.faults import FaultyClient
from tests.dynamodb.local import REGION
from tests.harness.dynamodb import DynamoDBHarness


def faulty_backend(h: DynamoDBHarness, **options: Any) -> tuple[Any, FaultyClient]:
    """Our backend on the test's table, through a :class:`FaultyClient` around a real client."""
    import boto3
    from botocore.config import Config

    from workflow_retention.backends.dynamodb import DynamoDBBackend

    real = boto3.client("dynamodb", endpoint_url=h.endpoint, region_name=REGION,
                        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, max_pool_connections=16))
    client = FaultyClient(real)
    backend = DynamoDBBackend(h.table, region=REGION, endpoint_url=h.endpoint, client=client, **options)
    return h.track(backend), client


def markers(h: DynamoDBHarness) -> set[str]:
    """The run ids the purge markers in the table name: a per-run marker's, or each run a batch marker lists."""
    from workflow_retention.backends.dynamodb.layout import MARKER_PREFIX
    from workflow_retention.backends.dynamodb.markers import Marker

    named: set[str] = set()
    params: dict[str, Any] = {"TableName": h.table, "ConsistentRead": True}
    while True:
        page = h.client.scan(**params)
        for item in page.get("Items", []):
            if item["PK"]["S"].startswith(MARKER_PREFIX) and not item["SK"]["S"].startswith("SEGMENT#"):
                marker = Marker.parse(item)
                named |= marker.runs.keys() if marker.runs or marker.batch else {item["SK"]["S"]}
        if "LastEvaluatedKey" not in page:
            return named
        params["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def commit_ids(params: dict[str, Any]) -> list[str]:
    """The run ids whose items a commit request (TransactWriteItems of conditional deletes) deletes."""
    keys = [action["Delete"]["Key"]["PK"]["S"] for action in params.get("TransactItems", []) if "Delete" in action]
    return [pk[len("RUN#"):] for pk in keys if pk.startswith("RUN#")]


def is_hooks_read(params: dict[str, Any]) -> bool:
    """The first read of a cascade: the hooks of its runs on GSI1 (``RUN_HOOKS#<run_id>``), a PartiQL ``IN``."""
    return any(str(v.get("S", "")).startswith("RUN_HOOKS#") for v in params.get("Parameters", []))
