"""The census: runs by status and age, rows and estimated bytes per kind; one paged ``token()`` scan per table."""

from __future__ import annotations

from workflow_retention.base import CensusJob
from workflow_retention.exceptions import StorageError
from workflow_retention.report import Kind, SpaceReport, TableSpace
from workflow_retention.timeutil import utcnow

from .client import Cql
from .layout import OTHER_TABLES, SOURCES, TABLES
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


#: Cassandra 2.1.5 and later: each node's estimate of its primary ranges (partitions, mean partition size).
SIZE_ESTIMATES = ("SELECT table_name, partitions_count, mean_partition_size FROM system.size_estimates "
                  "WHERE keyspace_name = %s")
NO_SIZES = ("Cassandra's sizes are on the nodes (nodetool tablestats, or system.size_estimates from 2.1.5 on): "
            "this server has no size_estimates table, so nothing is reported here")
TOMBSTONES = ("deleted rows are tombstones: their space comes back only when compaction drops them, after the "
              "table's gc_grace_seconds (10 days by default)")


def count_runs(cql: Cql, limit: int) -> tuple[int, bool]:
    """Rows of ``workflow_runs``, counted from a paged token scan up to ``limit``: ``(n, exact)``."""
    n = 0
    for page in cql.scan("scan_runs", CENSUS_PAGE):
        n += len(page)
        if n >= limit:
            return n, False
    return n, True


def space(cql: Cql, url: str) -> SpaceReport:
    """``system.size_estimates`` of the node the driver asks, where the server has it; otherwise unknown."""
    from cassandra import InvalidRequest

    try:
        with cql._guard("size_estimates"):  # any other failure: a StorageError, as every statement's
            rows = list(cql.session.execute(SIZE_ESTIMATES, (cql.settings.keyspace,)))
    except StorageError as exc:
        if not isinstance(exc.__cause__, InvalidRequest):
            raise
        report = SpaceReport.unknown(url, NO_SIZES)  # 2.1.0-2.1.4: no such table
        report.note(TOMBSTONES)
        return report
    report = SpaceReport(backend=url, measured_at=utcnow(), approximate=True)
    sizes: dict[str, list[int]] = {}
    for row in rows:
        if row.table_name in TABLES:
            total = sizes.setdefault(row.table_name, [0, 0])
            total[0] += int(row.partitions_count or 0)
            total[1] += int(row.partitions_count or 0) * int(row.mean_partition_size or 0)
    for name, (partitions, size) in sorted(sizes.items()):
        report.tables.append(TableSpace(name=name, bytes=size, rows=partitions))
    report.total()
    report.note("estimates of one node's primary token ranges (system.size_estimates, refreshed every few minutes), "
                "before replication: the cluster holds about replication_factor times as much")
    report.note(TOMBSTONES)
    return report
