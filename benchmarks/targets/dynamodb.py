"""Benchmark target: a pyworkflow DynamoDB table on DynamoDB Local.

The endpoint is ``DYNAMODB_ENDPOINT_URL`` if set, else the npm package's
DynamoDB Local jar, started by the runner process on first use and stopped at
its exit (dummy credentials are set for that case only). Every slot gets its
own table, seeded identically with ``bench_runs(n, now)``.

Besides time and memory each row reports the write cost of the purge:
``write_units`` counts item writes the way DynamoDB bills them for items up to
1 KB (1 unit per put or delete, including deletes of keys that do not exist),
``wu_per_run`` divides that by the runs deleted, and ``orphans_left`` counts
items that still name a missing run. DynamoDB Local's own ``ConsumedCapacity``
figures are not used (it reports, e.g., 2.0 units for a 100-item transaction).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from benchmarks.data import seed_store
from workflow_retention.backends import by_url

_SERVER: dict[str, Any] = {}
_DUMMY = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}


def _endpoint() -> str:
    for name, value in _DUMMY.items():  # DynamoDB Local checks none; the child processes inherit them
        os.environ.setdefault(name, value)
    if os.environ.get("DYNAMODB_ENDPOINT_URL"):
        return os.environ["DYNAMODB_ENDPOINT_URL"]
    if "url" not in _SERVER:
        from tests.dynamodb.local import start_local

        _SERVER["url"], stop = start_local()
        atexit.register(stop)
    return _SERVER["url"]


def _parts(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return parts.netloc, query["region"], query["endpoint_url"]


def prepare(n: int, slot: str, now: datetime) -> str:
    url = f"dynamodb://bench_{slot}_{n}_{uuid.uuid4().hex[:8]}?region=us-east-1&endpoint_url={_endpoint()}"
    return seed_store(url, n, now)


def run_ours(url: str, cutoff: datetime, batch: int) -> dict[str, Any]:
    backend = by_url(url, batch_size=batch or None)
    try:
        report = backend.delete_old_runs(cutoff)
        cap = backend.table.capacity
        units = cap.items_written
    finally:
        backend.close()
    return {"runs": report.runs, "held": report.held, "batches": report.batches, "counts": dict(report.counts),
            "items_deleted": sum(report.counts.values()), "write_units": units,
            "wu_per_run": round(units / max(report.runs, 1), 2), "calls": cap.calls}


async def _baseline(url: str, cutoff: datetime) -> dict[str, Any]:
    from pyworkflow.storage.dynamodb import DynamoDBStorageBackend

    table, region, endpoint = _parts(url)
    pw = DynamoDBStorageBackend(table_name=table, region=region, endpoint_url=endpoint)
    seen = {"deletes": 0, "calls": 0}

    def count(params: dict[str, Any], **_: Any) -> None:
        seen["calls"] += 1
        seen["deletes"] += sum(len(v) for v in params.get("RequestItems", {}).values())

    def call(**_: Any) -> None:
        seen["calls"] += 1

    pw._session.register("before-parameter-build.dynamodb.BatchWriteItem", count)
    pw._session.register("before-parameter-build.dynamodb.Query", call)
    runs = await pw.delete_old_runs(cutoff)
    return {"runs": runs, "write_units": seen["deletes"], "wu_per_run": round(seen["deletes"] / max(runs, 1), 2),
            "calls": seen["calls"]}


def baseline(url: str, cutoff: datetime) -> dict[str, Any]:
    for name, value in _DUMMY.items():
        os.environ.setdefault(name, value)
    return asyncio.run(_baseline(url, cutoff))


def extra(url: str, slot: str) -> dict[str, Any]:
    """Items left in the table, and how many of them name a run that no longer exists."""
    from workflow_retention.backends.dynamodb.layout import classify
    from workflow_retention.report import Kind

    backend = by_url(url)
    try:
        owners: list[str] = []
        runs: set[str] = set()
        total = 0
        for page in backend.table.scan(Limit=1000):
            for item in page:
                total += 1
                kind, owner, _ = classify(item)
                if kind == Kind.RUNS:
                    runs.add(owner)
                elif owner is not None:
                    owners.append(owner)
    finally:
        backend.close()
    return {"items_left": total, "orphans_left": sum(1 for o in owners if o not in runs)}


def cleanup(url: str) -> None:
    backend = by_url(url)
    try:
        backend.table.client.delete_table(TableName=backend.table_name)
    finally:
        backend.close()
