"""Keyed sweeps (one table in key order, bounded windows) and the purge's schedule and stream sweeps.

How a keyed sweep re-checks its condition in the deleting transaction is in docs/backends/sql.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, Text, cast, delete, func, select, true, tuple_
from sqlalchemy.engine import Connection

from workflow_retention.backends.sql.client import Client
from workflow_retention.base import OrphanJob, PurgeJob
from workflow_retention.planning import DELETED_SCHEDULE, TERMINAL_SUBSCRIPTIONS, left_alone
from workflow_retention.report import Kind, OrphanReport
from workflow_retention.timeutil import older

#: Per-row overhead added to the payload length in the orphan bytes estimate.
ROW_OVERHEAD = 64


@dataclass
class KeyedSweep:
    """Delete the rows of ``table`` that ``where`` (SQL, a superset) and ``decide`` (exact) select."""

    kind: str
    table: Table
    keys: tuple[str, ...]
    fields: tuple[Any, ...] = ()
    where: Any = None
    recheck: Any = None
    decide: Callable[[Any], bool | None] = lambda row: True
    size: Any = None
    #: For derived keys ``<run_id>:<rest>``: the keys among those given that are orphans, asked in the
    #: window's read and again inside the transaction that deletes (the re-check).
    orphans: Callable[[Connection, list[str]], set[str]] | None = None


def run_sweep(client: Client, job: PurgeJob | OrphanJob, sweep: KeyedSweep) -> None:
    """Walk ``sweep.table`` in key order, one keyset window of ``batch_size`` rows per short read, and delete
    what it selects, one write transaction per window."""
    d = client.dialect
    t = sweep.table
    keys = [t.c[k] for k in sweep.keys]
    size = ([func.coalesce(func.length(cast(sweep.size, Text)), 0).label("wr_size")]
            if sweep.size is not None else [])
    cursor: tuple[Any, ...] | None = None
    with client.session():
        while True:
            stmt = select(*keys, *sweep.fields, *size)
            if sweep.where is not None:
                stmt = stmt.where(sweep.where)
            if cursor is not None:
                stmt = stmt.where(d.after(keys, cursor))
            with client.read() as conn:
                rows = conn.execute(stmt.order_by(*keys).limit(job.batch_size)).all()
                orphans = sweep.orphans(conn, [row[0] for row in rows]) if sweep.orphans and rows else None
            if not rows:
                return
            cursor = tuple(rows[-1][: len(keys)])
            _window(client, job, sweep, keys, rows if orphans is None else [r for r in rows if r[0] in orphans])
            if len(rows) < job.batch_size:
                return


def _window(client: Client, job: PurgeJob | OrphanJob, sweep: KeyedSweep, keys: list[Any],
            rows: Sequence[Any]) -> None:
    chosen = []
    for row in rows:
        verdict = sweep.decide(row)
        if verdict is None:
            left_alone(job.report, f"{sweep.table.name} row {tuple(row[:len(keys)])!r}", "its timestamp is unreadable")
        elif verdict:
            chosen.append(tuple(row[: len(keys)]))
    if not chosen:
        return
    job.boundary([":".join(map(str, key)) for key in chosen])
    if job.dry_run:
        deleted = len(chosen)
    else:
        deleted = client.timed_write(lambda conn: _delete(client, conn, sweep, keys, chosen))
    job.report.add(sweep.kind, deleted)
    if sweep.size is not None and isinstance(job.report, OrphanReport):
        sizes = {tuple(r[: len(keys)]): r.wr_size for r in rows}
        job.report.bytes += sum(int(sizes[k] or 0) + ROW_OVERHEAD for k in chosen) if deleted else 0


def _delete(client: Client, conn: Connection, sweep: KeyedSweep, keys: list[Any],
            chosen: list[tuple[Any, ...]]) -> int:
    """Delete the chosen rows whose condition still holds (the re-check, in the deleting transaction)."""
    if sweep.orphans is not None:
        still = sweep.orphans(conn, [k[0] for k in chosen])
        chosen = [k for k in chosen if k[0] in still]
        if not chosen:
            return 0
    match = client.dialect.among(keys[0], [k[0] for k in chosen]) if len(keys) == 1 else tuple_(*keys).in_(chosen)
    stmt = delete(sweep.table).where(match)
    if sweep.recheck is not None:
        stmt = stmt.where(sweep.recheck)
    return int(conn.execute(stmt).rowcount)


# -- the baseline's schedule and stream sweeps ----------------------------------------------

def stream_sweeps(client: Client, cutoff: datetime) -> list[KeyedSweep]:
    """The purge's sweeps of soft-deleted schedules and aged stream data (the baseline's own)."""
    d, tables = client.dialect, client.metadata.tables
    s, sub = tables["schedules"], tables["stream_subscriptions"]
    ack, sig = tables["signal_acknowledgments"], tables["signals"]
    when = func.coalesce(s.c.deleted_at, s.c.updated_at)
    gone = (d.exact(s.c.status) == DELETED_SCHEDULE) & d.before(when, cutoff)
    ended = d.exact(sub.c.status).in_(TERMINAL_SUBSCRIPTIONS) & d.before(sub.c.created_at, cutoff)
    sweeps = [
        KeyedSweep(Kind.SCHEDULES, s, ("schedule_id",), (s.c.status, when.label("wr_when")), gone, gone,
                   lambda row: row.status == DELETED_SCHEDULE and older(row.wr_when, cutoff, missing=True)),
        KeyedSweep(Kind.SUBSCRIPTIONS, sub, ("stream_id", "step_run_id"), (sub.c.created_at,), ended, ended,
                   lambda row: older(row.created_at, cutoff, missing=True)),
        KeyedSweep(Kind.ACKNOWLEDGMENTS, ack, ("signal_id", "step_run_id"), (ack.c.acknowledged_at,),
                   d.before(ack.c.acknowledged_at, cutoff), d.before(ack.c.acknowledged_at, cutoff),
                   lambda row: older(row.acknowledged_at, cutoff, missing=True)),
        KeyedSweep(Kind.SIGNALS, sig, ("signal_id",), (sig.c.published_at,), d.before(sig.c.published_at, cutoff),
                   d.before(sig.c.published_at, cutoff), lambda row: older(row.published_at, cutoff, missing=True)),
    ]
    if "scheduled_signals" in tables:
        ss = tables["scheduled_signals"]
        due = (ss.c.delivered == true()) & d.before(ss.c.due_at, cutoff)
        sweeps.append(KeyedSweep(Kind.SCHEDULED_SIGNALS, ss, ("id",), (ss.c.due_at,), due, due,
                                 lambda row: older(row.due_at, cutoff, missing=True)))
    return sweeps


def purge_streams(client: Client, job: PurgeJob) -> None:
    """Run the purge's schedule and stream sweeps (a missing table is reported by the purge)."""
    for sweep in stream_sweeps(client, job.sweep_cutoff):
        if not client.has(sweep.table.name):
            continue
        run_sweep(client, job, sweep)
