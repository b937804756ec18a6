"""``DynamoDBBackend``: settings, connection, table checks and seeding (the purge is in ``purge.py``)."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from workflow_retention.base import DEFAULT_BATCH_SIZE, CensusJob, OrphanJob, PurgeJob, StorageBackend
from workflow_retention.exceptions import BackendUnavailableError, ConfigurationError, StorageError
from workflow_retention.seed import SeedRun
from workflow_retention.timeutil import parse_duration
from workflow_retention.urls import split_url

from .client import Table
from .layout import TABLE_SCHEMA, run_items
from .orphans import OrphanSweep, census
from .purge import Purge

log = logging.getLogger("workflow_retention.dynamodb")

URL_FORM = ("dynamodb://TABLE?region=REGION[&endpoint_url=http://host:port][&max_wcu_per_second=N]"
            "[&retry_deadline=60s][&timeout=30s]")
PARAMETERS = ("region", "endpoint_url", "max_wcu_per_second", "retry_deadline", "timeout")
DEFAULT_TIMEOUT = 30.0  # seconds to connect, and to wait for each answer
_TABLE = re.compile(r"^[A-Za-z0-9_.\-]{3,255}$")
_REGION = re.compile(r"^[a-z0-9][a-z0-9\-]{0,49}$")
_SECRET_WORDS = ("key", "secret", "token", "password", "credential", "session")
REQUIRED_INDEXES = ("GSI1", "GSI4")


def _boto3() -> Any:
    try:
        import boto3
    except ImportError as exc:
        raise BackendUnavailableError("dynamodb", "dynamodb", exc) from exc
    return boto3


def _seconds(value: float | str | timedelta, name: str) -> float:
    """A positive number of seconds, given as a number, a numeric string, a duration (90s, 5m) or a timedelta."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    else:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            try:
                seconds = parse_duration(str(value), name).total_seconds()
            except ConfigurationError:
                seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ConfigurationError(f"{name} must be a positive number of seconds or a duration like 90s or 5m; "
                                 f"got {value!r}")
    return seconds


def _positive(value: object) -> float:
    try:
        rate = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        rate = 0.0
    if not rate > 0 or rate != rate or rate == float("inf"):
        raise ConfigurationError(f"max_wcu_per_second must be a positive number of write capacity units per "
                                 f"second, e.g. 100; got {value!r}")
    return rate


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
    name = "dynamodb"
    capabilities = frozenset({"schedules", "streams"})

    def __init__(self, table: str = "pyworkflow", *, region: str | None = None, endpoint_url: str | None = None,
                 max_wcu_per_second: float | str | None = None, retry_deadline: float | str | timedelta = 60.0,
                 timeout: float | str | timedelta = DEFAULT_TIMEOUT, workers: int = 8, client: Any = None,
                 url: str | None = None, batch_size: int | None = DEFAULT_BATCH_SIZE) -> None:
        if not isinstance(table, str) or not _TABLE.match(table):
            raise ConfigurationError(f"DynamoDB table name must be 3-255 characters of A-Z a-z 0-9 _ . -; got {table!r}")
        self.table_name = table
        self.region = region or (client.meta.region_name if client is not None else _boto3().Session().region_name)
        if not self.region or not _REGION.match(self.region):
            raise ConfigurationError(f"region must be an AWS region such as us-east-1 (?region= in the URL, or "
                                     f"the AWS configuration's default region); got {self.region!r}")
        self.endpoint_url = _endpoint(endpoint_url)
        self.max_wcu = _positive(max_wcu_per_second) if max_wcu_per_second not in (None, "") else None
        self.retry_deadline = _seconds(retry_deadline, "retry_deadline")
        self.timeout = _seconds(timeout, "timeout")
        if not isinstance(workers, int) or not 1 <= workers <= 64:
            raise ConfigurationError(f"workers must be an integer from 1 to 64; got {workers!r}")
        self.workers = workers
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
        params = {k: v[-1] for k, v in raw.items()}
        return cls(parts.netloc, url=url, **params, **options)  # type: ignore[arg-type]

    # -- connection -------------------------------------------------------------------

    def open(self) -> None:
        if self._table is not None:
            return
        if self._client is None:
            from botocore.config import Config

            # One attempt per call (retries are client.Table's); connecting and each answer within the timeout.
            config = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=self.timeout,
                            read_timeout=self.timeout, max_pool_connections=self.workers + 4)
            self._client = _boto3().session.Session().client(
                "dynamodb", region_name=self.region, endpoint_url=self.endpoint_url, config=config)
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

    def _describe(self) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.table.client.describe_table(TableName=self.table_name)["Table"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                raise StorageError(f"DynamoDB table {self.table_name!r} does not exist in region {self.region} "
                                   f"({self.endpoint_url or 'AWS'})") from exc
            raise self.table.error(exc, "DescribeTable") from exc
        except BotoCoreError as exc:
            raise self.table.error(exc, "DescribeTable") from exc

    def _check(self) -> dict[str, object]:
        """The table must have pyworkflow's key schema and the indexes retention reads."""
        table = self._describe()
        keys = {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]}
        indexes = sorted(g["IndexName"] for g in table.get("GlobalSecondaryIndexes", []))
        missing = [i for i in REQUIRED_INDEXES if i not in indexes]
        if keys != {"PK": "HASH", "SK": "RANGE"} or missing:
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

    def _purge(self, job: PurgeJob) -> None:
        self._verify()
        self._logged(lambda: Purge(self.table, job).run(), "purge")

    def _sweep_orphans(self, job: OrphanJob) -> None:
        self._verify()
        self._logged(lambda: OrphanSweep(self.table, job).run(), "orphan sweep")

    def _census(self, job: CensusJob) -> None:
        self._verify()
        census(self.table, job)

    def _logged(self, body: Any, what: str) -> None:
        before = self.table.capacity.as_dict()
        try:
            body()
        finally:
            after = self.table.capacity.as_dict()
            log.info("dynamodb %s capacity table=%s %s", what, self.table_name,
                     " ".join(f"{k}={round(after[k] - before[k], 1)}" for k in after))

    def _prepare_seed(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.table.client.create_table(TableName=self.table_name, **TABLE_SCHEMA)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
                raise self.table.error(exc, "CreateTable") from exc
        except BotoCoreError as exc:
            raise self.table.error(exc, "CreateTable") from exc
        try:
            self.table.client.get_waiter("table_exists").wait(TableName=self.table_name)
        except BotoCoreError as exc:  # WaiterError included
            raise self.table.error(exc, "DescribeTable (waiting for the new table)") from exc

    def _write_seed(self, runs: list[SeedRun]) -> None:
        self.table.put_many([item for run in runs for item in run_items(run)])
