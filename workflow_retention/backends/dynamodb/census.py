"""The census on DynamoDB (``audit``): runs by status and age, and every kind of item with its size, in one
paged Scan."""

from __future__ import annotations

from workflow_retention.base import CensusJob
from workflow_retention.report import Kind

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
