"""Orphan repair and the census: one paged ``token()`` scan per table, row by row."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime
from typing import Any

from workflow_retention.backends.cassandra.cql import OTHER_TABLES, SOURCES, Source
from workflow_retention.backends.cassandra.runs import RunReader, checkpoint_owner, run_ref
from workflow_retention.backends.cassandra.session import Cql
from workflow_retention.base import CensusJob, OrphanJob
from workflow_retention.planning import key_prefixes
from workflow_retention.report import Kind, age_bucket

CENSUS_PAGE = 1000


def owner_of(source: Source, row: Any) -> str | None:
    if source.owner is None:
        return checkpoint_owner(getattr(row, source.key[0]))
    return getattr(row, source.owner)


def guards(source: Source, row: Any, owner: str) -> list[str]:
    """Runs whose existence keeps the row: its owner, and for a checkpoint key every longer ``:`` prefix."""
    return key_prefixes(getattr(row, source.key[0])) if source.owner is None else [owner]


def row_size(source: Source, row: Any) -> int:
    """Estimated bytes of a row: the sizes of its values (text as UTF-8)."""
    total = 0
    for column in source.columns:
        value = getattr(row, column.strip('"'))
        if isinstance(value, str):
            total += len(value.encode())
        elif isinstance(value, bytes):
            total += len(value)
        elif isinstance(value, uuid.UUID):
            total += 16
        elif value is not None:
            total += 8
    return total


def _micros(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000)


class Sweeper:
    def __init__(self, cql: Cql, job: OrphanJob) -> None:
        self.cql, self.job, self.report = cql, job, job.report
        self.reader = RunReader(cql)
        self.not_after = _micros(job.not_after)

    def run(self) -> None:
        self.report.bytes_estimated = True
        for source in SOURCES:
            for page in self.cql.scan(source.scan_name, self.job.batch_size):
                self._page(source, page)

    def _page(self, source: Source, page: list[Any]) -> None:
        named = [(row, owner) for row in page if (owner := owner_of(source, row)) is not None]
        if not named:
            return
        present = self.reader.present({g for row, owner in named for g in guards(source, row, owner)})
        # WRITETIME: when the store wrote the row. A row with no written value has no time to honour.
        orphans = [(row, owner) for row, owner in named
                   if not any(g in present for g in guards(source, row, owner))
                   and (row.written is None or row.written < self.not_after)]
        if not orphans:
            return
        self.job.boundary(sorted({owner for _, owner in orphans}))
        present = self.reader.present({g for row, owner in orphans for g in guards(source, row, owner)})
        orphans = [(row, owner) for row, owner in orphans
                   if not any(g in present for g in guards(source, row, owner))]
        if not self.job.dry_run:
            orphans = self._delete(source, orphans)
        self.report.add(source.kind, len(orphans))
        self.report.bytes += sum(row_size(source, row) for row, _ in orphans)

    def _delete(self, source: Source, orphans: list[tuple[Any, str]]) -> list[tuple[Any, str]]:
        params = [tuple(getattr(row, c.strip('"')) for c in source.key) + ((owner,) if source.pointer else ())
                  for row, owner in orphans]
        results = self.cql.concurrent([(source.delete_name, p) for p in params])
        if not source.pointer:
            return orphans
        return [orphan for orphan, result in zip(orphans, results) if result.was_applied]


def census(cql: Cql, job: CensusJob) -> None:
    """Runs by status and age (of updated_at), and rows and estimated bytes per kind."""
    counted = 0
    for page in cql.scan("scan_runs", CENSUS_PAGE):
        for row in page:
            ref = run_ref(row)
            job.census.runs_by_status[ref.status or "unknown"] += 1
            if ref.updated_at is not None:
                job.census.runs_by_age[age_bucket((job.now - ref.updated_at).total_seconds() / 86400)] += 1
        job.census.count(Kind.RUNS, len(page))
        counted += len(page)
        job.progress("runs", counted)
    for source in SOURCES:
        sizes: Counter = Counter()
        for page in cql.scan(source.scan_name, CENSUS_PAGE):
            job.census.count(source.kind, len(page), sum(row_size(source, row) for row in page))
            sizes[source.table] += len(page)
        job.progress(source.table, sizes[source.table])
    for table, _, kind in OTHER_TABLES:
        rows = 0
        for page in cql.scan(f"count_{table}", CENSUS_PAGE):
            rows += len(page)
        job.census.count(kind, rows)
        job.progress(table, rows)
    job.census.bytes_estimated = True
