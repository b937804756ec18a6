"""The census on DynamoDB (``audit``): runs by status and age, and every kind of item with its size, in one
paged Scan."""

from __future__ import annotations

from typing import Any

from workflow_retention.base import CensusJob
from workflow_retention.report import Kind, SpaceReport, TableSpace
from workflow_retention.timeutil import utcnow

from . import expr
from .client import SCAN_PAGE, Table
from .layout import classify, item_size, text
from .runs import run_ref


def census(table: Table, job: CensusJob) -> None:
    seen = 0
    for page in table.scan(Limit=SCAN_PAGE):
        for item in page:
            kind, _, _ = classify(item)
            if kind is None:
                continue
            job.census.count(kind, 1, item_size(item))
            if kind == Kind.RUNS:
                job.census.count_run(text(item, "status"), run_ref(item).updated_at, job.now)
                if "GSI3PK" in item:
                    job.census.count(Kind.IDEMPOTENCY_KEYS, 1, item_size({"GSI3PK": item["GSI3PK"]}))
        seen += len(page)
        job.progress("items", seen)


def count_runs(table: Table, limit: int) -> tuple[int, bool]:
    """Run records (``GSI1PK = RUNS``), counted from GSI1 with ``Select=COUNT`` up to ``limit``: ``(n, exact)``."""
    params: dict[str, Any] = dict(expr.query("GSI1PK", "RUNS", index="GSI1"), Select="COUNT")
    n = 0
    while n < limit:
        response = table.call("query", **params)
        n += int(response.get("Count", 0))
        last = response.get("LastEvaluatedKey")
        if not last:
            return n, True
        params["ExclusiveStartKey"] = last
    return n, False


def space(description: dict[str, Any], url: str) -> SpaceReport:
    """DescribeTable's sizes: the table's ``TableSizeBytes``/``ItemCount`` and each index's, free of charge."""
    report = SpaceReport(backend=url, measured_at=utcnow(), approximate=True)
    report.tables.append(TableSpace(name=str(description.get("TableName", "table")),
                                    bytes=_int(description.get("TableSizeBytes")),
                                    rows=_int(description.get("ItemCount"))))
    for index in description.get("GlobalSecondaryIndexes", []) + description.get("LocalSecondaryIndexes", []):
        report.tables.append(TableSpace(name=f"index {index.get('IndexName')}", bytes=_int(index.get("IndexSizeBytes")),
                                        rows=_int(index.get("ItemCount"))))
    report.total()
    report.free_bytes = 0
    report.note("DynamoDB updates ItemCount and TableSizeBytes about every six hours: a purge shows in them hours "
                "later. Deleted items stop counting then; there is nothing to vacuum (storage is billed per GB "
                "stored)")
    return report


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
