"""Orphan repair and the census: one paged ``token()`` scan per table, row by row."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime
from typing import Any

from workflow_retention.backends.cassandra.cascade import packed, stamp
from workflow_retention.backends.cassandra.cql import OTHER_TABLES, SOURCES, Source
from workflow_retention.backends.cassandra.runs import RunReader, run_ref
from workflow_retention.backends.cassandra.session import Cql
from workflow_retention.base import CensusJob, OrphanJob
from workflow_retention.planning import key_owners, key_prefixes
from workflow_retention.report import Kind, age_bucket

CENSUS_PAGE = 1000


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
        # WRITETIME: when the store wrote the row. A row with no written value has no time to honour.
        orphans = [(row, run_id) for row, run_id in self._orphans(source, page)
                   if row.written is None or row.written < self.not_after]
        if not orphans:
            return
        self.job.boundary(sorted({run_id for _, run_id in orphans}))
        orphans = self._orphans(source, [row for row, _ in orphans])  # re-checked after on_batch
        if not self.job.dry_run:
            orphans = self._delete(source, orphans)
        self.report.add(source.kind, len(orphans))
        self.report.bytes += sum(row_size(source, row) for row, _ in orphans)

    def _orphans(self, source: Source, rows: list[Any]) -> list[tuple[Any, str]]:
        """``(row, the run it names)`` for the rows that name no existing run.

        A derived key ``<run_id>:<rest>`` (a step checkpoint) belongs to the
        longest prefix naming an existing run (planning.key_owners): it is an
        orphan only when no prefix does. A key without ``:`` names no run.
        """
        if source.owner is None:
            by_key = {getattr(row, source.key[0]): row for row in rows}
            derived = {key: row for key, row in by_key.items() if key_prefixes(key)}
            owners = key_owners(derived, self.reader.present)
            return [(row, key_prefixes(key)[0]) for key, row in derived.items() if owners[key] is None]
        named = [(row, run_id) for row in rows if (run_id := getattr(row, source.owner))]
        present = self.reader.present({run_id for _, run_id in named})
        return [(row, run_id) for row, run_id in named if run_id not in present]

    def _delete(self, source: Source, orphans: list[tuple[Any, str]]) -> list[tuple[Any, str]]:
        """Delete each orphan in the version read: a row written again since (another run's pointer) survives."""
        self.cql.unlogged_batches(packed(
            [(source.delete_name, (stamp([row]), *(getattr(row, c.strip('"')) for c in source.key)))]
            for row, _ in orphans))
        return orphans


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
