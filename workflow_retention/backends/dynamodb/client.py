"""The DynamoDB calls retention makes: the boto3 guard, the client, retries, a deadline, pacing, error translation.

Retries and the deadline are described in docs/backends/dynamodb.md ("Retries and pacing"). This is the
only module that imports boto3 or botocore: every other module works on :class:`Table`, and every driver
error leaves here as :class:`StorageError` (the driver's error chained) unless a method says otherwise.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

from workflow_retention.exceptions import BackendUnavailableError, StorageError
from workflow_retention.planning import chunked

from . import expr
from .layout import Item, item_size

log = logging.getLogger("workflow_retention.dynamodb")

RETRYABLE = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
    "InternalServerError", "ServiceUnavailable",
})
WRITE_BATCH, READ_BATCH = 25, 100
TRANSACTION_BATCH = 100  # conditional deletes per TransactWriteItems, DynamoDB's most (a cancelled one is sent
# again without the deletes that failed; cancellations are rare, requests are not: 4 times fewer)
IN_VALUES = 50  # values of one PartiQL ``IN`` list on a partition key
CANCELLED = "TransactionCanceledException"
#: Cancellation reasons of a TransactWriteItems delete that are retried (the others raise StorageError).
TRANSACTION_RETRYABLE = frozenset({
    "TransactionConflict", "ProvisionedThroughputExceeded", "ThrottlingError", "RequestLimitExceeded",
})
SCAN_PAGE = 1000  # items evaluated per Scan page (at least; a larger batch size gives larger pages)
BACKOFF_BASE, BACKOFF_CAP = 0.05, 5.0
CONDITION_FAILED = "ConditionalCheckFailedException"

def write_units(item: Item) -> int:
    """Write units DynamoDB bills to put or delete ``item``: one per KB started (at least one)."""
    return max(1, -(-item_size(item) // 1024))


T = TypeVar("T")
R = TypeVar("R")


def _boto3() -> ModuleType:
    """boto3, or :class:`BackendUnavailableError` naming the extra to install (the optional-driver guard)."""
    try:
        import boto3
    except ImportError as exc:
        raise BackendUnavailableError("dynamodb", "dynamodb", exc) from exc
    return boto3


def default_region() -> str | None:
    """The AWS configuration's default region (environment, shared config), if any."""
    region: str | None = _boto3().Session().region_name
    return region


def connect(region: str, endpoint_url: str | None, *, timeout: float, workers: int) -> Any:
    """A boto3 DynamoDB client making one attempt per call (retries are :class:`Table`'s), connecting and
    waiting for each answer within ``timeout`` seconds, with a connection for each worker thread."""
    boto3 = _boto3()
    from botocore.config import Config

    # parameter_validation off: botocore's client-side check of every request against the service model took
    # ~10 % of the purge's client CPU; the requests are built here, and the service validates them all the same
    # (a bad one is a ValidationException, raised as StorageError).
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=timeout,
                    read_timeout=timeout, max_pool_connections=workers + 4, parameter_validation=False)
    return boto3.session.Session().client("dynamodb", region_name=region, endpoint_url=endpoint_url,
                                          config=config)


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    error = response.get("Error") if isinstance(response, dict) else None
    return str(error.get("Code") or "") if isinstance(error, dict) else ""


#: The requests that write. They are counted by what DynamoDB bills for them (``Capacity.items_written``, as the
#: pacing spends it), not by asking the service: ``ReturnConsumedCapacity`` on a write makes DynamoDB Local do
#: a third more work per delete (issue 17: 18,836 deletes on 8 threads, 5.9 s of its CPU against 4.5 s without).
WRITES = frozenset({"batch_write_item", "transact_write_items", "delete_item", "put_item", "update_item"})


@dataclass
class Capacity:
    """What this process asked of the table: write units as DynamoDB bills them (counted here, see
    :data:`WRITES`) and the read units the service reported."""

    items_written: int = 0
    read_units: float = 0.0
    calls: int = 0
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, response: dict[str, Any]) -> None:
        used = response.get("ConsumedCapacity") or []
        units = sum(float(e.get("CapacityUnits") or 0) for e in (used if isinstance(used, list) else [used]))
        with self.lock:
            self.calls += 1
            self.read_units += units

    def as_dict(self) -> dict[str, float]:
        return {"items_written": self.items_written, "read_units_reported": round(self.read_units, 1),
                "calls": self.calls, "retries": self.retries}


class RateLimiter:
    """Caps write capacity units per second (one second of burst), shared by all threads."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self.clock, self.sleep = per_second, clock, sleep
        self._free_at = clock() - 1.0
        self._lock = threading.Lock()

    def spend(self, units: float) -> None:
        with self._lock:
            now = self.clock()
            self._free_at = max(self._free_at, now - 1.0) + units / self.rate
            wait = self._free_at - now
        if wait > 0:
            self.sleep(wait)


class Deadline:
    """Backoff with full jitter until ``seconds`` have passed since the first attempt."""

    def __init__(self, seconds: float, what: str, clock: Callable[[], float], sleep: Callable[[float], None],
                 where: str = "") -> None:
        self.what, self.where, self.clock, self.sleep = what, where, clock, sleep
        self.ends = clock() + seconds
        self.seconds = seconds
        self.attempt = 0

    def wait(self, pending: str) -> None:
        delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** self.attempt))
        self.attempt += 1
        if self.clock() + delay > self.ends:
            raise StorageError(f"DynamoDB {self.what}: still {pending} after retrying for {self.seconds:g}s "
                               f"({self.attempt} attempts{self.where}); nothing was skipped, rerun to finish")
        self.sleep(delay)


class Table:
    """One table through one boto3 client (thread-safe), for the backend's threads."""

    def __init__(self, client: Any, name: str, *, deadline_s: float, max_wcu: float | None = None,
                 workers: int = 8, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client, self.name, self.deadline_s = client, name, deadline_s
        meta = getattr(client, "meta", None)
        self.endpoint: str | None = getattr(meta, "endpoint_url", None)
        self.timeout: float | None = getattr(getattr(meta, "config", None), "read_timeout", None)
        self.clock, self.sleep = clock, sleep
        self.limiter = RateLimiter(max_wcu, clock, sleep) if max_wcu else None
        self.capacity = Capacity()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dynamodb-retention") \
            if workers > 1 else None
        self.segments = workers

    @contextmanager
    def share_of_cap(self, parts: int) -> Iterator[None]:
        """Pace at ``1/parts`` of ``max_wcu_per_second`` while the block runs (one shard of ``parts``).

        The cap is per store: ``parts`` shards of one plan purging side by side, each on its share, spend at
        most the cap together. Without a cap, or with ``parts == 1``, nothing changes.
        """
        if self.limiter is None or parts <= 1:
            yield
            return
        whole = self.limiter.rate
        self.limiter.rate = whole / parts
        try:
            yield
        finally:
            self.limiter.rate = whole

    def deadline(self, what: str) -> Deadline:
        return Deadline(self.deadline_s, what, self.clock, self.sleep,
                        f" on table {self.name!r} at {self.endpoint or 'AWS'}")

    def error(self, exc: Exception, what: str) -> StorageError:
        """:func:`translate` for a call of ``what`` on this table's endpoint."""
        return translate(exc, what, self.name, endpoint=self.endpoint, timeout=self.timeout)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    # -- the table itself ----------------------------------------------------------

    def describe(self, *, region: str, where: str) -> dict[str, Any]:
        """DescribeTable's ``Table``; a missing table raises StorageError naming ``region`` and ``where``."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            description: dict[str, Any] = self.client.describe_table(TableName=self.name)["Table"]
        except ClientError as exc:
            if _code(exc) == "ResourceNotFoundException":
                raise StorageError(f"DynamoDB table {self.name!r} does not exist in region {region} "
                                   f"({where})") from exc
            raise self.error(exc, "DescribeTable") from exc
        except BotoCoreError as exc:
            raise self.error(exc, "DescribeTable") from exc
        return description

    def create(self, schema: Mapping[str, Any]) -> None:
        """CreateTable with ``schema`` unless the table exists already, then wait until it does."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.create_table(TableName=self.name, **schema)
        except ClientError as exc:
            if _code(exc) != "ResourceInUseException":
                raise self.error(exc, "CreateTable") from exc
        except BotoCoreError as exc:
            raise self.error(exc, "CreateTable") from exc
        try:
            self.client.get_waiter("table_exists").wait(TableName=self.name)
        except BotoCoreError as exc:  # WaiterError included
            raise self.error(exc, "DescribeTable (waiting for the new table)") from exc

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``fn`` over ``items`` on the worker threads, in order.

        On the first error the calls not started yet are cancelled and the
        running ones waited for, so nothing keeps writing after it is raised.
        """
        if self.pool is None or len(items) <= 1:
            return [fn(i) for i in items]
        futures = [self.pool.submit(fn, i) for i in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            wait(futures)
            raise

    # -- one call ----------------------------------------------------------------

    def call(self, op: str, *, write_units: float = 0, passthrough: str = "", deadline: Deadline | None = None,
             **params: Any) -> dict[str, Any]:
        """``client.<op>(**params)`` retried on throttling until the deadline; errors become StorageError.

        A ClientError whose code is ``passthrough`` is raised as it is, for the
        caller. ``deadline``: one shared with the caller's own retries.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        if op not in ("batch_write_item", "batch_get_item", "execute_statement", "transact_write_items"):
            params["TableName"] = self.name
        deadline = deadline or self.deadline(op)
        asked = {} if op in WRITES else {"ReturnConsumedCapacity": "TOTAL"}  # writes: counted here, see WRITES
        while True:
            if self.limiter and write_units:
                self.limiter.spend(write_units)
            try:
                response = getattr(self.client, op)(**params, **asked)
            except ClientError as exc:
                code = _code(exc)
                if code == passthrough:  # e.g. a failed condition: billed as a write all the same
                    if write_units:
                        with self.capacity.lock:
                            self.capacity.items_written += max(1, int(write_units))
                    raise
                if code not in RETRYABLE:
                    raise self.error(exc, op) from exc
                log.debug("DynamoDB %s throttled (%s); backing off", op, code)
            except BotoCoreError as exc:
                raise self.error(exc, op) from exc
            else:
                self.capacity.record(response)
                if op in ("delete_item", "put_item", "update_item"):
                    with self.capacity.lock:
                        self.capacity.items_written += max(1, int(write_units))
                return response
            with self.capacity.lock:
                self.capacity.retries += 1
            deadline.wait("throttled")

    def delete_if(self, key: Item, equal: Mapping[str, str], *, current: bool = False) -> tuple[bool, Item | None]:
        """DeleteItem on condition that the item exists and each attribute of ``equal`` holds that string.

        ``(True, None)``: deleted. ``(False, item)``: the condition failed (billed as a write all the
        same); with ``current``, ``item`` is the stored item, None when there is none.
        """
        from botocore.exceptions import ClientError

        extra: dict[str, Any] = {"ReturnValuesOnConditionCheckFailure": "ALL_OLD"} if current else {}
        try:
            self.call("delete_item", Key=key, write_units=1, passthrough=CONDITION_FAILED, **extra,
                      **expr.condition(dict(equal)))
        except ClientError as exc:  # only the failed condition: any other error is a StorageError
            return False, exc.response.get("Item")
        return True, None

    def pages(self, op: str, **params: Any) -> Iterator[list[Item]]:
        """Query (or a single-segment Scan), one page (``Limit`` items evaluated) at a time, keyset-paged."""
        while True:
            response = self.call(op, **params)
            yield response.get("Items", [])
            last = response.get("LastEvaluatedKey")
            if not last:
                return
            params["ExclusiveStartKey"] = last

    def select(self, statement: str, parameters: list[Item | dict[str, Any]], *, consistent: bool = False,
               limit: int | None = None) -> Iterator[list[Item]]:
        """A PartiQL SELECT (ExecuteStatement), one page (``limit`` items evaluated) at a time."""
        params: dict[str, Any] = {"Statement": statement, "Parameters": parameters}
        if consistent:
            params["ConsistentRead"] = True
        if limit:
            params["Limit"] = limit
        while True:
            response = self.call("execute_statement", **params)
            yield response.get("Items", [])
            token = response.get("NextToken")
            if not token:
                return
            params["NextToken"] = token

    def delete_if_many(self, rows: Sequence[tuple[Item, Mapping[str, str]]]) -> list[tuple[str, Item | None]]:
        """:meth:`delete_if` for many items, 25 per TransactWriteItems, on the threads; per row, in order:
        ``("deleted", None)``, ``("changed", stored item)`` (the condition failed on an item) or
        ``("gone", None)`` (no item).

        A transaction cancelled by some of its deletes is sent again without them; throttling and
        conflicts with other writes are retried until the deadline; any other reason raises StorageError.
        DynamoDB bills 2 write units per transactional delete (``items_written`` counts 2).
        """
        return [r for part in self.map(self._delete_if_chunk, list(chunked(rows, TRANSACTION_BATCH))) for r in part]

    def _delete_if_chunk(self, rows: list[tuple[Item, Mapping[str, str]]]) -> list[tuple[str, Item | None]]:
        from botocore.exceptions import ClientError

        outcome: dict[int, tuple[str, Item | None]] = {}
        pending = list(range(len(rows)))
        deadline = self.deadline("TransactWriteItems")
        while pending:
            actions = [{"Delete": {"TableName": self.name, "Key": rows[i][0], **expr.condition(dict(rows[i][1])),
                                   "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}} for i in pending]
            if self.limiter:
                self.limiter.spend(2 * len(pending))
            try:
                self.call("transact_write_items", TransactItems=actions, passthrough=CANCELLED, deadline=deadline)
            except ClientError as exc:  # only a cancellation: any other error is a StorageError
                reasons = exc.response.get("CancellationReasons") or []
                if len(reasons) != len(pending):
                    raise self.error(exc, "TransactWriteItems") from exc
                retry, throttled = [], False
                for i, reason in zip(pending, reasons):
                    code = reason.get("Code") or "None"
                    if code == "ConditionalCheckFailed":
                        outcome[i] = ("changed", reason["Item"]) if reason.get("Item") else ("gone", None)
                    elif code == "None":  # fine itself: cancelled because of another delete
                        retry.append(i)
                    elif code in TRANSACTION_RETRYABLE:
                        retry.append(i)
                        throttled = True
                    else:
                        raise self.error(exc, f"TransactWriteItems ({code}: {reason.get('Message')})") from exc
                with self.capacity.lock:
                    self.capacity.items_written += 2 * (len(pending) - len(retry))
                pending = retry
                if throttled:
                    with self.capacity.lock:
                        self.capacity.retries += 1
                    deadline.wait(f"{len(pending)} deletes throttled or in conflict")
                continue
            with self.capacity.lock:
                self.capacity.items_written += 2 * len(pending)
            for i in pending:
                outcome[i] = ("deleted", None)
            pending = []
        return [outcome[i] for i in range(len(rows))]

    def scan(self, **params: Any) -> Iterator[list[Item]]:
        """A parallel Scan: one page of each segment (one per worker) fetched at a time, on the threads.

        Memory holds at most one page per segment; every segment is keyset-paged.
        """
        segments = self.segments
        starts: dict[int, Any] = dict.fromkeys(range(segments))

        def fetch(segment: int) -> tuple[int, dict[str, Any]]:
            page = dict(params, **({"Segment": segment, "TotalSegments": segments} if segments > 1 else {}))
            if starts[segment]:
                page["ExclusiveStartKey"] = starts[segment]
            return segment, self.call("scan", **page)

        while starts:
            for segment, response in self.map(fetch, sorted(starts)):
                yield response.get("Items", [])
                if response.get("LastEvaluatedKey"):
                    starts[segment] = response["LastEvaluatedKey"]
                else:
                    del starts[segment]

    # -- batches -----------------------------------------------------------------

    def get_many(self, keys: Sequence[Item], projection: dict[str, Any] | None = None) -> list[Item]:
        """Strongly consistent BatchGetItem of ``keys`` (missing ones are simply absent)."""
        unique = list({(k["PK"]["S"], k["SK"]["S"]): k for k in keys}.values())
        return [item for part in self.map(lambda c: self._get_chunk(c, projection or {}),
                                          list(chunked(unique, READ_BATCH))) for item in part]

    def _get_chunk(self, keys: list[Item], projection: dict[str, Any]) -> list[Item]:
        found: list[Item] = []
        request = {self.name: {"Keys": keys, "ConsistentRead": True, **projection}}
        deadline = self.deadline("BatchGetItem")
        while request:
            response = self.call("batch_get_item", RequestItems=request, deadline=deadline)
            found += response.get("Responses", {}).get(self.name, [])
            request = response.get("UnprocessedKeys") or {}
            if request:
                deadline.wait(f"{len(request[self.name]['Keys'])} unprocessed keys")
        return found

    def delete_many(self, keys: Sequence[Item], *, parallel: bool = True, units: Sequence[int] | None = None) -> None:
        """BatchWriteItem deletes, 25 per request, until every key is processed (or the deadline).

        ``parallel=False`` on a worker thread (the pool must not wait on itself). ``units``: the write units
        each delete costs (DynamoDB bills a delete by the size of the item deleted), when known; else 1.
        """
        self.write_many([{"DeleteRequest": {"Key": k}} for k in keys], parallel=parallel, units=units)

    def put_many(self, items: Sequence[Item]) -> None:
        """BatchWriteItem puts, each paced and counted by its size (:func:`write_units`)."""
        self.write_many([{"PutRequest": {"Item": i}} for i in items], units=[write_units(i) for i in items])

    def write_many(self, requests: list[dict[str, Any]], *, parallel: bool = True,
                   units: Sequence[int] | None = None) -> None:
        costs = list(units) if units is not None else [1] * len(requests)
        chunks = list(zip(chunked(requests, WRITE_BATCH), chunked(costs, WRITE_BATCH), strict=True))
        if parallel:
            self.map(lambda chunk: self._write_chunk(*chunk), chunks)
        else:
            for chunk in chunks:
                self._write_chunk(*chunk)

    def _write_chunk(self, requests: list[dict[str, Any]], costs: list[int] | None = None) -> None:
        cost = dict(zip(map(_request_key, requests), costs or [1] * len(requests), strict=True))
        request = {self.name: requests}
        deadline = self.deadline("BatchWriteItem")
        while request:
            pending = sum(cost.get(_request_key(r), 1) for r in request[self.name])
            response = self.call("batch_write_item", RequestItems=request, write_units=pending, deadline=deadline)
            request = response.get("UnprocessedItems") or {}
            left = sum(cost.get(_request_key(r), 1) for r in request.get(self.name, []))
            with self.capacity.lock:
                self.capacity.items_written += pending - left
            if left:
                deadline.wait(f"{len(request[self.name])} unprocessed writes")

    def remove_entries(self, key: Item, attribute: str, names: Sequence[str], *, units: int = 1) -> bool:
        """Remove the entries ``names`` of the map ``attribute`` of an existing item (UpdateItem; billed by the
        item's size, ``units``). False: the item no longer exists (nothing is created)."""
        from botocore.exceptions import ClientError

        req = expr.Request()
        path = req.name(attribute)
        update = "REMOVE " + ", ".join(f"{path}.{req.name(n)}" for n in names)
        try:
            self.call("update_item", Key=key, write_units=units, passthrough=CONDITION_FAILED,
                      **req.params(UpdateExpression=update, ConditionExpression=f"attribute_exists({req.name('PK')})"))
        except ClientError:  # only the failed condition: the item is gone
            return False
        return True


def _request_key(request: dict[str, Any]) -> tuple[str, str]:
    body = request.get("DeleteRequest", {}).get("Key") or request.get("PutRequest", {}).get("Item") or {}
    return body["PK"]["S"], body["SK"]["S"]


def translate(exc: Exception, what: str, table: str, *, endpoint: str | None = None,
              timeout: float | None = None) -> StorageError:
    """A StorageError naming the call, the table, the endpoint and the cause, for any boto3/botocore error.

    ClientErrors carry the service's code and message; the others (no answer,
    no connection, no credentials, a rejected parameter) carry no response.
    """
    from botocore import exceptions as boto

    response = getattr(exc, "response", None)
    error = response.get("Error") if isinstance(response, dict) else None
    error = error if isinstance(error, dict) else {}
    name = type(exc).__name__
    if error.get("Code") or error.get("Message"):
        cause = f"{error.get('Code') or name}: {error.get('Message') or exc}"
    elif isinstance(exc, (boto.ReadTimeoutError, boto.ConnectTimeoutError)):
        limit = f"the {timeout:g}s timeout" if timeout else "the timeout"
        cause = f"{name}: no answer within {limit} (the URL's ?timeout= sets it): {exc}"
    elif isinstance(exc, (boto.NoCredentialsError, boto.PartialCredentialsError, boto.CredentialRetrievalError)):
        cause = (f"{name}: {exc}; credentials come from the standard AWS credential chain (environment, "
                 "shared config and credentials files, SSO, instance or task role)")
    else:
        cause = f"{name}: {exc}"
    return StorageError(f"DynamoDB {what} on table {table!r} at {endpoint or 'AWS'} failed: {cause}")
