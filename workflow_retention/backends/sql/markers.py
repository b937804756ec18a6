"""Runs whose records a purge deleted before their rows: marking them, finishing them, resuming after a stop.

The design (the commit point of a heavy run, the markers table) is in docs/backends/sql.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import partial

from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Connection

from workflow_retention.backends.sql import runs
from workflow_retention.backends.sql.client import Client
from workflow_retention.backends.sql.layout import MARKERS, RUN_CHILDREN
from workflow_retention.base import OrphanJob, PurgeJob
from workflow_retention.planning import chunked, left_alone
from workflow_retention.report import Kind
from workflow_retention.timeutil import utcnow


class Markers:
    """The marker rows of one purge or orphan sweep (``job``) on one store (``client``)."""

    def __init__(self, client: Client, job: PurgeJob | OrphanJob, purge_id: str = "") -> None:
        self.client = client
        self.job = job
        self.purge_id = purge_id

    def mark(self, conn: Connection, run_ids: Sequence[str]) -> None:
        """One marker row per run, in the transaction that deletes their records (the commit point)."""
        now = self.client.dialect.db_time(utcnow())
        for chunk in chunked(run_ids, self.client.dialect.id_chunk):
            conn.execute(insert(self.client.markers), [{"run_id": r, "purge_id": self.purge_id, "created_at": now}
                                                       for r in chunk])

    def finish(self, run_ids: Sequence[str]) -> None:
        """Delete the child rows of marked runs (records gone) in transactions of the row budget, then their
        markers. A marked run whose record exists again keeps everything: its marker is dropped and it is
        reported."""
        ids = list(run_ids)
        report = self.job.report
        while ids:
            self.job.boundary(ids)
            counts, done, back = self.client.timed_write(partial(self._finish_step, run_ids=ids),
                                                         rows=lambda result: sum(result[0].values()))
            report.merge(counts)
            for run_id in sorted(back):
                left_alone(report, f"run {run_id!r}", "marked for deletion by an interrupted purge, but its record "
                                                      "exists again; its marker was dropped")
            ids = [i for i in ids if i not in back]
            if done:
                return

    def _finish_step(self, conn: Connection, run_ids: list[str]) -> tuple[Counter, bool, set[str]]:
        """One bounded transaction of :meth:`finish`: (counts, done, run ids whose record exists)."""
        client, d = self.client, self.client.dialect
        markers = client.markers
        back = runs.records(client, conn, run_ids)  # under the write transaction: never a live run's rows
        for chunk in chunked(sorted(back), d.id_chunk):
            conn.execute(delete(markers).where(d.among(markers.c.run_id, chunk)))
        gone = [i for i in run_ids if i not in back]
        counts: Counter = Counter()
        left = client.row_budget
        for name, kind in RUN_CHILDREN if gone else ():
            if not client.has(name):
                continue
            table = client.table(name)
            for chunk in chunked(gone, d.id_chunk):
                n = conn.execute(d.delete_some(table, d.among(table.c.run_id, chunk), left)).rowcount
                counts[kind] += n
                left -= n
                if left <= 0:
                    return +counts, False, back
        keys = runs.owned_checkpoints(client, conn, gone) if gone else []
        step_run_id = client.table("checkpoints").c.step_run_id
        for chunk in chunked(keys[:left], d.id_chunk):
            counts[Kind.CHECKPOINTS] += runs.apply(client, conn, "checkpoints", d.among(step_run_id, chunk), False)
        if len(keys) > left:
            return +counts, False, back
        for chunk in chunked(gone, d.id_chunk):
            conn.execute(delete(markers).where(d.among(markers.c.run_id, chunk)))
        return +counts, True, back

    def resume(self) -> None:
        """Finish the runs an interrupted purge marked (their records gone, their rows not yet).

        A dry run only says how many there are. Read in pages of ``batch_size`` marker rows.
        """
        client, job = self.client, self.job
        if not client.has(MARKERS):
            return
        markers = client.markers
        if job.dry_run:
            with client.read() as conn:
                pending = conn.execute(select(func.count()).select_from(markers)).scalar_one()
            if pending:
                job.report.warn(f"{pending} runs of an interrupted purge are marked in {MARKERS}: their records "
                                "are gone, their rows are not yet (counted as orphans here); the next purge or "
                                "orphan sweep finishes them")
            return
        cursor: str | None = None
        finished = 0
        while True:
            stmt = select(markers.c.run_id).order_by(markers.c.run_id).limit(job.batch_size)
            if cursor is not None:
                stmt = stmt.where(markers.c.run_id > cursor)
            with client.read() as conn:
                ids = list(conn.execute(stmt).scalars())
            if not ids:
                break
            cursor = ids[-1]
            skipped = job.report.skipped
            self.finish(ids)
            finished += len(ids) - (job.report.skipped - skipped)
            if len(ids) < job.batch_size:
                break
        if finished:
            job.report.warn(f"{finished} runs of an interrupted purge (records already deleted) had rows left; "
                            "they were deleted now")


def pending(client: Client, conn: Connection) -> int:
    """How many marker rows there are (0 when the table does not exist)."""
    if not client.has(MARKERS):
        return 0
    return int(conn.execute(select(func.count()).select_from(client.markers)).scalar_one())
