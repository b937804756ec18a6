"""The census: runs by status and age, rows and estimated bytes per kind; one paged ``token()`` scan per table."""

from __future__ import annotations

from workflow_retention.base import CensusJob
from workflow_retention.report import Kind

from .client import Cql
from .layout import OTHER_TABLES, SOURCES
from .runs import run_ref

CENSUS_PAGE = 1000


def census(cql: Cql, job: CensusJob) -> None:
    """Runs by status and age (of updated_at) and the oldest terminal run, and rows and estimated bytes per kind."""
    counted = 0
    for page in cql.scan("scan_runs", CENSUS_PAGE):
        for row in page:
            ref = run_ref(row)
            job.census.count_run(ref.status, ref.updated_at, job.now)
        job.census.count(Kind.RUNS, len(page))
        counted += len(page)
        job.progress("runs", counted)
    for source in SOURCES:
        rows = 0
        for page in cql.scan(source.scan_name, CENSUS_PAGE):
            job.census.count(source.kind, len(page), sum(source.row_size(row) for row in page))
            rows += len(page)
        job.progress(source.table, rows)
    for table, _, kind in OTHER_TABLES:
        rows = 0
        for page in cql.scan(f"count_{table}", CENSUS_PAGE):
            rows += len(page)
        job.census.count(kind, rows)
        job.progress(table, rows)
    job.census.bytes_estimated = True
