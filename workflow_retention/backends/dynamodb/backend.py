"""``DynamoDBBackend``: the URL, the options, the connection and the table check; the work is in the role modules."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from workflow_retention import values
from workflow_retention.base import (
    DEFAULT_BATCH_SIZE,
    Capability,
    CensusJob,
    OrphanJob,
    PurgeJob,
    Shard,
    StorageBackend,
)
from workflow_retention.exceptions import ConfigurationError, StorageError
from workflow_retention.planning import RunRef
from workflow_retention.report import SpaceReport
from workflow_retention.seed import SeedRun
from workflow_retention.urls import split_url

from . import archive, segments
from .census import census, count_runs, space
from .client import Table, connect, default_region
from .layout import KEY_SCHEMA, REQUIRED_INDEXES
from .orphans import OrphanSweep
from .purge import Purge
from .runs import children_of, get_runs, newest_runs
from .seed import prepare_table, write_runs

log = logging.getLogger("workflow_retention.dynamodb")

URL_FORM = ("dynamodb://TABLE?region=REGION[&endpoint_url=http://host:port][&max_wcu_per_second=N]"
            "[&retry_deadline=60s][&timeout=30s]")
PARAMETERS = ("region", "endpoint_url", "max_wcu_per_second", "retry_deadline", "timeout")
DEFAULT_TIMEOUT = 30.0  # seconds to connect, and to wait for each answer
DEFAULT_RETRY_DEADLINE = 60.0
MAX_TIMEOUT = 3600.0
MAX_RETRY_DEADLINE = 86400.0
MAX_WCU_PER_SECOND = 100_000.0
MAX_WORKERS = 64
_TABLE = re.compile(r"^[A-Za-z0-9_.\-]{3,255}$")
_REGION = re.compile(r"^[a-z0-9][a-z0-9\-]{0,49}$")
_SECRET_WORDS = ("key", "secret", "token", "password", "credential", "session")


def _endpoint(value: str | None) -> str | None:
    if value in (None, ""):
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"endpoint_url must look like http://host:port or https://host; got {value!r}")
    if parts.username or parts.password:
        raise ConfigurationError("endpoint_url must not contain credentials; "
                                 "they come from the standard AWS credential chain")
    return value


class DynamoDBBackend(StorageBackend):
    """pyworkflow-engine 0.4.0's DynamoDB table, purged with boto3 (design: docs/backends/dynamodb.md).

    URL: ``dynamodb://TABLE?region=REGION[&endpoint_url=...][&max_wcu_per_second=N][&retry_deadline=60s]
    [&timeout=30s]``. Credentials come only from the standard AWS chain (environment, shared config and
    credentials files, SSO, instance or task role); a URL carrying any is refused, without echoing them.

    Options (URL parameter and constructor argument unless said otherwise):

    ``table`` (the URL's host part; default ``pyworkflow``)
        pyworkflow's table: 3 to 255 characters of ``A-Z a-z 0-9 _ . -``.
    ``region`` (default: the AWS configuration's default region; there is no built-in default)
        The AWS region, such as ``us-east-1``.
    ``endpoint_url`` (default: AWS)
        Another endpoint (``http://host:port`` or ``https://host``), e.g. DynamoDB Local; no credentials in it.
    ``max_wcu_per_second`` (default: no cap)
        Cap on the write capacity units retention spends per second (one second of burst), above 0 and up
        to 100,000, so that a purge cannot starve production traffic. The cap is per store: a shard of ``n``
        (:meth:`shards`) paces at ``max_wcu_per_second / n``, so the shards of one plan spend at most the cap
        together.
    ``retry_deadline`` (default ``60s``)
        How long throttling and ``UnprocessedItems``/``UnprocessedKeys`` are retried (exponential backoff,
        full jitter) before the operation stops with an error: seconds (``7.5``) or a duration (``90s``,
        ``5m``), above 0 and up to a day.
    ``timeout`` (default ``30s``)
        The longest wait to connect, and for each answer: seconds or a duration, above 0 and up to an hour.
        botocore makes one attempt per call; the only retries are the ones above.
    ``workers`` (constructor only; default 8)
        Threads for requests and Scan segments, 1 to 64 (DynamoDB's latency, not CPU, is the limit).
    ``batch_size`` (constructor or ``by_url`` option; default 500)
        Runs per batch: the GSI1 page, the plan, the markers written before one round of commits.
    ``client`` (constructor only)
        A boto3 DynamoDB client to use instead of one built from the options; ``close()`` leaves it open.
    ``url`` (constructor only)
        The URL the backend was built from, shown (redacted) in logs and reports.

    Consistency: run records (and, in the Scan's checkpoint join, markers) are read with strongly consistent
    BatchGetItem, and a purged run's partition with a strongly consistent PartiQL read; reads of the indexes
    (GSI1, GSI4) and Scans are eventually consistent (indexes offer nothing else). A run is committed only by
    its conditional delete, and an orphan is deleted only after a consistent read finds its run gone; an item
    a read missed is left for the next purge or orphan sweep.

    Shards (:meth:`shards`): ``n`` parallel Scan segments of GSI1; a shard purges the runs of its segment one
    Scan page (one batch) at a time and reports the page's ``LastEvaluatedKey`` as its cursor; the final pass
    deletes its runs' checkpoints (docs/backends/dynamodb.md, "Shards").

    Errors: :class:`ConfigurationError` for a malformed URL, credentials in it, an unknown parameter or a
    value out of range (naming the option and its range), before anything connects;
    :class:`BackendUnavailableError` when boto3 is not installed (the ``dynamodb`` extra: ``pip install
    '.[dynamodb]'`` in a checkout); :class:`StorageError`, the driver's error chained, when the table does
    not exist or is not a pyworkflow table (keys ``PK``/``SK``, indexes GSI1 and GSI4), when a call fails
    (naming the call, the table, the endpoint and the cause: no answer within ``timeout``, no connection, no
    credentials), or when retries pass ``retry_deadline`` (naming what is undone; rerun to finish).
    """

    name = "dynamodb"
    capabilities = frozenset({Capability.SCHEDULES, Capability.STREAMS, Capability.CORRUPTIBLE_TIMESTAMPS,
                              Capability.SHARDS, Capability.ARCHIVE,
                              Capability.ARCHIVE_RECHECK})

    def __init__(self, table: str = "pyworkflow", *, region: str | None = None, endpoint_url: str | None = None,
                 max_wcu_per_second: float | str | None = None,
                 retry_deadline: float | str | timedelta = DEFAULT_RETRY_DEADLINE,
                 timeout: float | str | timedelta = DEFAULT_TIMEOUT, workers: int = 8, client: Any = None,
                 url: str | None = None, batch_size: int | None = DEFAULT_BATCH_SIZE) -> None:
        if not isinstance(table, str) or not _TABLE.match(table):
            raise ConfigurationError(f"DynamoDB table name must be 3-255 characters of A-Z a-z 0-9 _ . -; "
                                     f"got {table!r}")
        self.table_name = table
        region = region or (client.meta.region_name if client is not None else default_region())
        if not region or not _REGION.match(region):
            raise ConfigurationError(f"region must be an AWS region such as us-east-1 (?region= in the URL, or "
                                     f"the AWS configuration's default region); got {region!r}")
        self.region: str = region
        self.endpoint_url = _endpoint(endpoint_url)
        self.max_wcu = values.number(max_wcu_per_second, "max_wcu_per_second", maximum=MAX_WCU_PER_SECOND,
                                     example="100", unit="of write capacity units per second") \
            if max_wcu_per_second not in (None, "") else None
        self.retry_deadline = values.seconds(retry_deadline, "retry_deadline", maximum=MAX_RETRY_DEADLINE)
        self.timeout = values.seconds(timeout, "timeout", maximum=MAX_TIMEOUT)
        self.workers = values.integer(workers, "workers", maximum=MAX_WORKERS, example=8)
        self._client, self._own_client = client, client is None
        self._table: Table | None = None
        self._verified = False
        query = {"region": self.region, **({"endpoint_url": self.endpoint_url} if self.endpoint_url else {})}
        super().__init__(url=url or f"dynamodb://{table}?{urlencode(query)}",
                         batch_size=batch_size if batch_size is not None else DEFAULT_BATCH_SIZE)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> DynamoDBBackend:
        parts = split_url(url)
        if "@" in parts.netloc:
            raise ConfigurationError("a dynamodb URL must not contain credentials; they come from the standard "
                                     "AWS chain (environment, shared config and credentials files, SSO, role)")
        raw = parse_qs(parts.query, keep_blank_values=True)
        secret = sorted(k for k in raw if any(w in k.lower() for w in _SECRET_WORDS))
        if secret:
            raise ConfigurationError(f"dynamodb URL parameter(s) {', '.join(secret)} look like credentials; "
                                     "credentials never go in the URL, they come from the standard AWS chain")
        unknown = sorted(set(raw) - set(PARAMETERS))
        if unknown or parts.path not in ("", "/") or not parts.netloc:
            raise ConfigurationError(f"dynamodb URL must look like {URL_FORM}"
                                     + (f"; unknown parameter(s): {', '.join(unknown)}" if unknown else ""))
        arguments: dict[str, Any] = {**{k: v[-1] for k, v in raw.items()}, **options}
        return cls(parts.netloc, url=url, **arguments)

    # -- connection -------------------------------------------------------------------

    def open(self) -> None:
        if self._table is not None:
            return
        if self._client is None:
            self._client = connect(self.region, self.endpoint_url, timeout=self.timeout, workers=self.workers)
        self._table = Table(self._client, self.table_name, deadline_s=self.retry_deadline, max_wcu=self.max_wcu,
                            workers=self.workers)

    def close(self) -> None:
        if self._table is not None:
            self._table.close()
            self._table = None
        if self._own_client and self._client is not None:
            self._client.close()
            self._client = None

    @property
    def table(self) -> Table:
        self.open()
        assert self._table is not None
        return self._table

    def _check(self) -> dict[str, object]:
        """The table must have pyworkflow's key schema and the indexes retention reads."""
        table = self.table.describe(region=self.region, where=self.endpoint_url or "AWS")
        keys = {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]}
        indexes = sorted(g["IndexName"] for g in table.get("GlobalSecondaryIndexes", []))
        missing = [i for i in REQUIRED_INDEXES if i not in indexes]
        if keys != KEY_SCHEMA or missing:
            raise StorageError(f"DynamoDB table {self.table_name!r} is not a pyworkflow table: keys {keys}, "
                               f"indexes {indexes} (expected PK/SK and {', '.join(REQUIRED_INDEXES)})")
        self._verified = True
        return {"table": self.table_name, "region": self.region, "endpoint": self.endpoint_url or "AWS",
                "status": table.get("TableStatus"), "items_estimate": table.get("ItemCount"), "indexes": indexes,
                "max_wcu_per_second": self.max_wcu, "retry_deadline_s": self.retry_deadline,
                "timeout_s": self.timeout}

    def _verify(self) -> None:
        if not self._verified:
            self._check()

    # -- the operations -----------------------------------------------------------------

    def _shards(self, n: int, until: datetime | None) -> list[Shard]:
        """``n`` parallel Scan segments of GSI1 (``Segment=i, TotalSegments=n``): nothing is read to plan them."""
        return segments.plan(n)

    def _purge(self, job: PurgeJob) -> None:
        if job.partial:
            segments.segment_of(job.shard)
        elif job.resume_after is not None:
            raise ConfigurationError("resume_after is a shard's cursor: a whole-store DynamoDB purge reports none "
                                     "and cannot resume from one")
        self._verify()
        with self.table.share_of_cap(job.shard.count):
            self._logged(Purge(self.table, job).run, "purge")

    def _read_runs(self, run_ids: set[str]) -> dict[str, RunRef]:
        self._verify()
        return get_runs(self.table, run_ids)

    def _read_children(self, parent_ids: Sequence[str]) -> dict[str, list[RunRef]]:
        self._verify()
        return children_of(self.table, parent_ids)

    def _newest_runs(self, names: set[str], n: int) -> dict[str, list[str]]:
        """One GSI2 Query per workflow name (its runs by created_at), newest first, until n terminal runs."""
        self._verify()
        return newest_runs(self.table, names, n)

    def _gather(self, run_ids: Sequence[str]) -> dict[str, Any]:
        self.open()
        return archive.gather(self.table, run_ids)

    def _restore(self, lines: list[dict[str, Any]]) -> None:
        self.open()
        archive.restore(self.table, lines)

    def _record_key(self, kind: str, record: Any) -> Any:
        try:
            return archive.item_key(record)
        except (TypeError, KeyError):
            return None  # not an item: written as archived

    def _sweep_orphans(self, job: OrphanJob) -> None:
        self._verify()
        self._logged(OrphanSweep(self.table, job).run, "orphan sweep")

    def _census(self, job: CensusJob) -> None:
        self._verify()
        census(self.table, job)

    def _logged(self, body: Callable[[], None], what: str) -> None:
        """Run ``body`` and log the capacity it used (also when it fails)."""
        before = self.table.capacity.as_dict()
        try:
            body()
        finally:
            after = self.table.capacity.as_dict()
            log.info("dynamodb %s capacity table=%s %s", what, self.table_name,
                     " ".join(f"{k}={round(after[k] - before[k], 1)}" for k in after))

    def _prepare_seed(self) -> None:
        prepare_table(self.table)

    def _write_seed(self, runs: list[SeedRun]) -> None:
        write_runs(self.table, runs)

    def _space(self) -> SpaceReport:
        return space(self.table.describe(region=self.region, where=self.endpoint_url or "AWS"), self.url)

    def _count_runs(self, limit: int) -> tuple[int, bool]:
        self._verify()
        return count_runs(self.table, limit)
