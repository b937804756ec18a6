"""The orphan sweep: one paged ``token()`` scan per table that names runs, row by row.

A row is an orphan when the run it names has no record, and the cluster wrote
it (``WRITETIME``) before the grace period; orphans are re-checked after
``on_batch`` and deleted in the version read.
"""

from __future__ import annotations

from datetime import datetime

from workflow_retention.base import OrphanJob
from workflow_retention.planning import key_owners, key_prefixes

from .client import Cql, packed
from .layout import SOURCES, Row, Source
from .runs import RunReader
from .versioned import stamp


def _micros(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000)


class OrphanSweep:
    """One orphan sweep; :meth:`run` does it all."""

    def __init__(self, cql: Cql, job: OrphanJob) -> None:
        self.cql, self.job, self.report = cql, job, job.report
        self.reader = RunReader(cql)
        self.not_after = _micros(job.not_after)

    def run(self) -> None:
        self.report.bytes_estimated = True
        for source in SOURCES:
            for page in self.cql.scan(source.scan_name, self.job.batch_size):
                self._page(source, page)

    def _page(self, source: Source, page: list[Row]) -> None:
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
        self.report.bytes += sum(source.row_size(row) for row, _ in orphans)

    def _orphans(self, source: Source, rows: list[Row]) -> list[tuple[Row, str]]:
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

    def _delete(self, source: Source, orphans: list[tuple[Row, str]]) -> list[tuple[Row, str]]:
        """Delete each orphan in the version read: a row written again since (another run's pointer) survives."""
        self.cql.unlogged_batches(packed(
            [(source.delete_name, (stamp([row]), *(getattr(row, c.strip('"')) for c in source.key)))]
            for row, _ in orphans))
        return orphans
