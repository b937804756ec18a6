"""Keyed sweeps (the baseline's schedule and stream purges, orphan repair) and the census.

A :class:`Sweep` walks one table in primary-key (or unique-key) order, one
keyset window of ``batch_size`` rows per short read transaction, so memory
and every statement are bounded by the window. Python decides exactly which
rows go (timestamps are parsed, so SQLite's offset-carrying text compares as
instants), ``on_batch`` runs, and one write transaction deletes them by key
with the SQL condition repeated, which is the re-check: a schedule restored
meanwhile, or a run record that reappeared, keeps its rows.

Orphans: events, steps, hooks and flags reference their run with ON DELETE
CASCADE, so they are orphaned only where the reference was not enforced
(SQLite connections without ``PRAGMA foreign_keys``, restores with checks
off); step checkpoints have no reference at all and pyworkflow's own purge
always leaves them. Each window row of the four run_id tables carries a ``NOT
EXISTS`` flag computed by the server, with the column's own collation (MySQL
compares ids case-insensitively, as the engine does). A checkpoint key
``<run_id>:<step_id>`` is an orphan only when no prefix of it names an existing
run (run ids may contain ``:``): :func:`~workflow_retention.planning.key_owners`
decides, with one existence lookup per window, and again inside the deleting
transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Text, cast, delete, exists, func, literal, select, true, tuple_

from workflow_retention import timeutil
from workflow_retention.backends.sql.purge import MARKERS
from workflow_retention.planning import TERMINAL_SUBSCRIPTIONS, key_owners, key_prefixes
from workflow_retention.report import Kind, age_bucket
from workflow_retention.timeutil import parse_timestamp

if TYPE_CHECKING:
    from workflow_retention.base import CensusJob, OrphanJob, PurgeJob

log = logging.getLogger("workflow_retention.sql")

#: Per-row overhead added to the payload length in the orphan bytes estimate.
ROW_OVERHEAD = 64

#: Report kind of each table the census counts.
CENSUS_TABLES = (
    (Kind.RUNS, "workflow_runs"), (Kind.EVENTS, "events"), (Kind.STEPS, "steps"),
    (Kind.CHECKPOINTS, "checkpoints"), (Kind.HOOKS, "hooks"), (Kind.CANCELLATION_FLAGS, "cancellation_flags"),
    (Kind.SCHEDULES, "schedules"), (Kind.STREAMS, "streams"), (Kind.SIGNALS, "signals"),
    (Kind.SUBSCRIPTIONS, "stream_subscriptions"), (Kind.ACKNOWLEDGMENTS, "signal_acknowledgments"),
    (Kind.SCHEDULED_SIGNALS, "scheduled_signals"),
)


@dataclass
class Sweep:
    """Delete the rows of ``table`` that ``where`` (SQL, a superset) and ``keep`` (exact) select."""

    kind: str
    table: Any
    keys: tuple[str, ...]
    fields: tuple[Any, ...] = ()
    where: Any = None
    recheck: Any = None
    decide: Callable[[Any], bool | None] = lambda row: True
    size: Any = None
    #: For derived keys ``<run_id>:<rest>``: the keys among those given that are orphans, asked in the
    #: window's read and again inside the transaction that deletes (the re-check).
    orphans: Callable[[Any, list[str]], set[str]] | None = None
    skipped: int = field(default=0, init=False)


def older(value: Any, when: datetime) -> bool | None:
    """:func:`workflow_retention.timeutil.older`, with a NULL time counting as old (nothing to honour)."""
    return timeutil.older(value, when, missing=True)


class SweepMixin:
    """Sweeps, orphan repair and census for :class:`~workflow_retention.backends.sql.base.SQLBackend`."""

    def run_sweep(self, job: PurgeJob | OrphanJob, sweep: Sweep) -> None:
        with self.session():
            self._run_sweep(job, sweep)

    def _run_sweep(self, job: PurgeJob | OrphanJob, sweep: Sweep) -> None:
        t = sweep.table
        keys = [t.c[k] for k in sweep.keys]
        size = ([func.coalesce(func.length(cast(sweep.size, Text)), 0).label("wr_size")]
                if sweep.size is not None else [])
        cursor: tuple[Any, ...] | None = None
        while True:
            stmt = select(*keys, *sweep.fields, *size)
            if sweep.where is not None:
                stmt = stmt.where(sweep.where)
            if cursor is not None:
                stmt = stmt.where(self.after(keys, cursor))
            with self.read() as conn:
                rows = conn.execute(stmt.order_by(*keys).limit(job.batch_size)).all()
                orphans = sweep.orphans(conn, [row[0] for row in rows]) if sweep.orphans and rows else None
            if not rows:
                return
            cursor = tuple(rows[-1][: len(keys)])
            self._sweep_window(job, sweep, keys, rows if orphans is None else [r for r in rows if r[0] in orphans])
            if len(rows) < job.batch_size:
                return

    def _sweep_window(self, job: PurgeJob | OrphanJob, sweep: Sweep, keys: list[Any], rows: Sequence[Any]) -> None:
        chosen = []
        for row in rows:
            verdict = sweep.decide(row)
            if verdict is None:
                job.report.warn(f"{sweep.table.name} row {tuple(row[:len(keys)])!r} has an unreadable "
                                "timestamp; left alone")
                sweep.skipped += 1
            elif verdict:
                chosen.append(tuple(row[: len(keys)]))
        if not chosen:
            return
        job.boundary([":".join(map(str, key)) for key in chosen])
        if job.dry_run:
            deleted = len(chosen)
        else:
            deleted = self._timed_write(lambda conn: self._sweep_delete(conn, sweep, keys, chosen))
        job.report.add(sweep.kind, deleted)
        if sweep.size is not None and hasattr(job.report, "bytes"):
            sizes = {tuple(r[: len(keys)]): r.wr_size for r in rows}
            job.report.bytes += sum(int(sizes[k] or 0) + ROW_OVERHEAD for k in chosen) if deleted else 0

    def _sweep_delete(self, conn: Any, sweep: Sweep, keys: list[Any], chosen: list[tuple[Any, ...]]) -> int:
        """Delete the chosen rows whose condition still holds (the re-check, in the deleting transaction)."""
        if sweep.orphans is not None:
            still = sweep.orphans(conn, [k[0] for k in chosen])
            chosen = [k for k in chosen if k[0] in still]
            if not chosen:
                return 0
        match = self.among(keys[0], [k[0] for k in chosen]) if len(keys) == 1 else tuple_(*keys).in_(chosen)
        stmt = delete(sweep.table).where(match)
        if sweep.recheck is not None:
            stmt = stmt.where(sweep.recheck)
        return conn.execute(stmt).rowcount

    # -- the baseline's schedule and stream sweeps ------------------------------------------

    def aux_sweeps(self, cutoff: datetime) -> list[Sweep]:
        tables = self.metadata.tables
        s, sub = tables["schedules"], tables["stream_subscriptions"]
        ack, sig = tables["signal_acknowledgments"], tables["signals"]
        when = func.coalesce(s.c.deleted_at, s.c.updated_at)
        gone = (self.exact(s.c.status) == "deleted") & self.before(when, cutoff)
        ended = self.exact(sub.c.status).in_(TERMINAL_SUBSCRIPTIONS) & self.before(sub.c.created_at, cutoff)
        sweeps = [
            Sweep(Kind.SCHEDULES, s, ("schedule_id",), (s.c.status, when.label("wr_when")), gone, gone,
                  lambda row: row.status == "deleted" and older(row.wr_when, cutoff)),
            Sweep(Kind.SUBSCRIPTIONS, sub, ("stream_id", "step_run_id"), (sub.c.created_at,), ended, ended,
                  lambda row: older(row.created_at, cutoff)),
            Sweep(Kind.ACKNOWLEDGMENTS, ack, ("signal_id", "step_run_id"), (ack.c.acknowledged_at,),
                  self.before(ack.c.acknowledged_at, cutoff), self.before(ack.c.acknowledged_at, cutoff),
                  lambda row: older(row.acknowledged_at, cutoff)),
            Sweep(Kind.SIGNALS, sig, ("signal_id",), (sig.c.published_at,), self.before(sig.c.published_at, cutoff),
                  self.before(sig.c.published_at, cutoff), lambda row: older(row.published_at, cutoff)),
        ]
        if "scheduled_signals" in tables:
            ss = tables["scheduled_signals"]
            due = (ss.c.delivered == true()) & self.before(ss.c.due_at, cutoff)
            sweeps.append(Sweep(Kind.SCHEDULED_SIGNALS, ss, ("id",), (ss.c.due_at,), due, due,
                                lambda row: older(row.due_at, cutoff)))
        return sweeps

    # -- orphans ------------------------------------------------------------------------

    def _sweep_orphans(self, job: OrphanJob) -> None:
        job.report.bytes_estimated = True
        with self.translated("orphan sweep"), self.session():
            with self.read() as conn:
                layout = self.inspect_layout(conn)
            self._resume(job)  # runs an interrupted purge left without records: finished first
            for sweep in self.orphan_sweeps(job.not_after):
                if not self.has(sweep.table.name):
                    job.report.warn(layout.table_note(sweep.table.name))
                    continue
                self.run_sweep(job, sweep)
                job.report.skipped += sweep.skipped

    def orphan_sweeps(self, not_after: datetime) -> list[Sweep]:
        tables = self.metadata.tables
        runs = tables["workflow_runs"]

        def no_run(owner: Any) -> Any:
            return ~exists(select(literal(1)).where(runs.c.run_id == owner))

        def decide(stamps: tuple[str, ...], keyed: bool = False) -> Callable[[Any], bool | None]:
            def verdict(row: Any) -> bool | None:
                if not keyed and not row.wr_orphan:  # keyed rows reach here only as orphans
                    return False
                ages = [older(getattr(row, s), not_after) for s in stamps]
                return None if None in ages else all(ages)
            return verdict

        sweeps = []
        for kind, name, key, stamps, payload in (
                (Kind.EVENTS, "events", "event_id", ("timestamp",), "data"),
                (Kind.STEPS, "steps", "step_id", ("created_at",), "result"),
                (Kind.HOOKS, "hooks", "token", ("created_at",), "payload"),
                (Kind.CANCELLATION_FLAGS, "cancellation_flags", "run_id", ("created_at",), None)):
            t = tables[name]
            flag = no_run(t.c.run_id)
            sweeps.append(Sweep(kind, t, (key,), (*[t.c[s] for s in stamps], flag.label("wr_orphan")),
                                recheck=flag, decide=decide(stamps),
                                size=t.c[payload] if payload else None))
        cp = tables["checkpoints"]
        sweeps.append(Sweep(Kind.CHECKPOINTS, cp, ("step_run_id",), (cp.c.created_at, cp.c.updated_at),
                            decide=decide(("created_at", "updated_at"), keyed=True), size=cp.c.data,
                            orphans=self._orphan_keys))
        return sweeps

    def _orphan_keys(self, conn: Any, keys: list[str]) -> set[str]:
        """The derived keys ``<run_id>:<rest>`` no prefix of which names an existing run (:func:`key_owners`).

        A key without ``:`` (a stream step's checkpoint) names no run and is never an orphan.
        """
        owners = key_owners(keys, lambda ids: self._existing(conn, ids))
        return {key for key, owner in owners.items() if owner is None and key_prefixes(key)}

    # -- census ---------------------------------------------------------------------------

    def _census(self, job: CensusJob) -> None:
        census, tables = job.census, self.metadata.tables
        census.bytes_estimated = True
        with self.translated("audit"), self.session():
            with self.read() as conn:
                layout = self.inspect_layout(conn)
                for note in [*map(layout.table_note, layout.missing_tables), *map(layout.index_note,
                                                                                 layout.missing_indexes)]:
                    log.warning("%s: %s", self.url, note)
                runs = tables["workflow_runs"]
                status = self.exact(runs.c.status).label("status")
                for value, n in conn.execute(select(status, func.count()).group_by(status)):
                    census.runs_by_status[str(value)] += n  # exactly as stored: COMPLETED is not completed
                if self.has(MARKERS):
                    pending = conn.execute(select(func.count()).select_from(self.markers_table)).scalar_one()
                    if pending:
                        census.warn(f"{pending} runs of an interrupted purge are marked in {MARKERS}: their "
                                    "records are gone, their rows not yet; the next purge or orphan sweep "
                                    "finishes them")
                sizes = self.table_bytes(conn)
                for kind, name in CENSUS_TABLES:
                    if name in tables and self.has(name):
                        n = conn.execute(select(func.count()).select_from(tables[name])).scalar_one()
                        census.count(kind, n, sizes.get(name, 0))
                        job.progress(kind, n)
            self._census_ages(job)

    def _census_ages(self, job: CensusJob) -> None:
        r = self.table("workflow_runs").c
        cursor: str | None = None
        seen = 0
        while True:
            stmt = select(r.run_id, r.updated_at).order_by(r.run_id).limit(5000)
            if cursor is not None:
                stmt = stmt.where(r.run_id > cursor)
            with self.read() as conn:
                rows = conn.execute(stmt).all()
            for row in rows:
                try:
                    age = (job.now - parse_timestamp(row.updated_at)).total_seconds() / 86400
                except ValueError:
                    continue  # an unreadable updated_at: counted by status only
                job.census.runs_by_age[age_bucket(age)] += 1
            seen += len(rows)
            job.progress("runs_by_age", seen)
            if len(rows) < 5000:
                return
            cursor = rows[-1].run_id
