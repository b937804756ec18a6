"""The SQL census: runs by status and age, rows and bytes per kind."""

from __future__ import annotations

import logging

from sqlalchemy import func, select

from workflow_retention.backends.sql import markers
from workflow_retention.backends.sql.client import Client
from workflow_retention.backends.sql.layout import CENSUS_TABLES, MARKERS
from workflow_retention.base import CensusJob
from workflow_retention.timeutil import parse_timestamp

log = logging.getLogger("workflow_retention.sql")

#: Runs read per page for the ages.
AGE_PAGE = 5000


def census(client: Client, job: CensusJob) -> None:
    """Count what the store holds into ``job.census`` (our markers table is not pyworkflow data: a warning
    says when some are pending)."""
    result, tables, d = job.census, client.metadata.tables, client.dialect
    result.bytes_estimated = True
    with client.translated("audit"), client.session():
        with client.read() as conn:
            layout = client.inspect_layout(conn)
            for note in [*map(layout.table_note, layout.missing_tables), *map(layout.index_note,
                                                                             layout.missing_indexes)]:
                log.warning("%s: %s", client.url, note)
            status = d.exact(tables["workflow_runs"].c.status).label("status")
            for value, n in conn.execute(select(status, func.count()).group_by(status)):
                result.count_status(str(value), n)  # exactly as stored: COMPLETED is not completed
            pending = markers.pending(client, conn)
            if pending:
                result.warn(f"{pending} runs of an interrupted purge are marked in {MARKERS}: their records are "
                            "gone, their rows not yet; the next purge or orphan sweep finishes them")
            sizes = d.table_bytes(conn)
            for kind, name in CENSUS_TABLES:
                if name in tables and client.has(name):
                    n = conn.execute(select(func.count()).select_from(tables[name])).scalar_one()
                    result.count(kind, n, sizes.get(name, 0))
                    job.progress(kind, n)
        _ages(client, job)


def _ages(client: Client, job: CensusJob) -> None:
    """Runs by the age of their ``updated_at``, and the oldest terminal run (statuses as stored)."""
    r = client.table("workflow_runs").c
    cursor: str | None = None
    seen = 0
    while True:
        stmt = select(r.run_id, r.status, r.updated_at).order_by(r.run_id).limit(AGE_PAGE)
        if cursor is not None:
            stmt = stmt.where(r.run_id > cursor)
        with client.read() as conn:
            rows = conn.execute(stmt).all()
        for row in rows:
            try:
                updated_at = parse_timestamp(row.updated_at)
            except ValueError:
                continue  # an unreadable updated_at: counted by status only (the purge preview reports it)
            job.census.count_age(row.status, updated_at, job.now)
        seen += len(rows)
        job.progress("runs_by_age", seen)
        if len(rows) < AGE_PAGE:
            return
        cursor = rows[-1].run_id


def count_runs(client: Client, limit: int) -> tuple[int, bool]:
    """Rows of ``workflow_runs``, counted up to ``limit`` (one bounded index scan): ``(n, exact)``."""
    r = client.table("workflow_runs")
    with client.translated("counting runs"), client.read() as conn:
        n = conn.execute(select(func.count()).select_from(select(r.c.run_id).limit(limit).subquery())).scalar_one()
    return int(n), n < limit
