"""The SQL purge: candidate windows, batches in run_id order, short locking transactions bounded by rows.

Discovery: there is no index on ``updated_at``; since ``updated_at >=
created_at``, ``created_at < cutoff`` bounds the candidates and
``idx_runs_created_at_run_id`` serves a keyset scan on ``(created_at,
run_id)``; a second range, ``created_at`` in the future, finds what sorts
after every real timestamp (unreadable text, ``infinity``) so that it is
reported. Without that index (stores created before pyworkflow-engine 0.3.4)
one keyset scan of the primary key replaces both: linear, and reported.
Each page (a window of ``window_batches`` batches) is read in its own short
read transaction; expiry is then decided exactly in Python (:class:`RunRef`,
the shared rules of :mod:`workflow_retention.planning`), which is what makes
SQLite's offset-carrying text timestamps safe. A run whose ``created_at``
cannot be read, or whose eligible ancestors loop, is reported and kept. The
window is planned as a whole and cut into batches in run_id order
(:func:`split_plan`), so each batch's deletes stay in a narrow slice of the
run_id-led indexes.

Bounded transactions: the rows each planned run holds (events, steps, hooks,
flags) are counted in the window's read; a batch is cut further so that no
write transaction deletes more than the row budget (``max_rows``, shrunk
while transactions take longer than ``transaction_target``). The step
checkpoints are counted where they are read, in the write transaction: too
many, and it rolls back before deleting anything. A family over the budget
on its own is deleted in several transactions (:meth:`_delete_in_steps`),
each re-checking its runs first; the run records go last.

Live engine: after ``on_batch`` (called with no transaction open) the batch's
runs are locked (``SELECT ... FOR UPDATE``; SQLite: ``BEGIN IMMEDIATE``) and
re-read; a run whose status or ``updated_at`` moved, or that gained a child
meanwhile, survives with its ancestors. Within the same transaction the
child tables are deleted explicitly (so each kind is counted; SQLite only
cascades with its per-connection pragma anyway), the step checkpoints by
exact key once :func:`key_owners` gave each to the longest run-id prefix that
exists, then the runs level by level, leaves first, because MySQL checks the
parent reference row by row.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, MetaData, Table, delete, func, insert, or_, select, union_all
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateTable

from workflow_retention.backends.sql.schema import MYSQL_OPTIONS
from workflow_retention.exceptions import StorageError
from workflow_retention.planning import (
    LIVE_STATUSES,
    TERMINAL_STATUSES,
    Plan,
    RunRef,
    chunked,
    heights,
    key_owners,
    plan_page,
    split_plan,
)
from workflow_retention.report import Kind
from workflow_retention.timeutil import parse_timestamp, utcnow

if TYPE_CHECKING:
    from workflow_retention.base import OrphanJob, PurgeJob

log = logging.getLogger("workflow_retention.sql")

#: The second discovery range starts this far past now (or the cutoff, if later): see _purge.
FUTURE_MARGIN = timedelta(days=1)
#: Typed timestamp columns: values from here on may not load into a Python datetime (year 10000,
#: infinity); such a run is a candidate so that it is reported.
LAST_LOADABLE = datetime(9999, 12, 31, tzinfo=UTC)
#: RunRef.data of a run whose created_at cannot be read.
UNREADABLE_CREATED_AT = "created_at"

def _readable(value: Any) -> bool:
    """True when :func:`parse_timestamp` reads ``value``; the common forms are recognised without it."""
    when = value
    if type(value) is str:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            when = None
    if type(when) is datetime and 1 < when.year < 9999:  # no offset can take it out of range
        return True
    try:
        parse_timestamp(value)
    except (TypeError, ValueError):
        return False
    return True


class TooHeavy(Exception):
    """A batch's step checkpoints would take its transaction over the row budget: it rolls back."""


class NotOwned(Exception):
    """A cascade that deleted step checkpoints by key range met one that belongs to another run (a longer
    run id): it rolls back, and the batch is redone reading its checkpoints first."""


class Weights(Counter):
    """Rows each run holds in its child tables, for the runs over ``share``; any other run holds at most that."""

    def __init__(self, share: int) -> None:
        super().__init__()
        self.share = share

    def of(self, run_id: str) -> int:
        return int(self[run_id]) if run_id in self else self.share


#: Tables a purge deletes from besides the runs' own (a missing one is reported).
PURGED_TABLES = ("checkpoints", "schedules", "signals", "stream_subscriptions", "signal_acknowledgments",
                 "scheduled_signals")

#: Our own table: the runs whose records a purge deleted before their child rows (see _delete_in_steps).
MARKERS = "workflow_retention_purge_markers"

#: Child tables whose rows per run are counted before a batch is cut (a run has at most one flag).
COUNTED_CHILDREN = ("events", "steps", "hooks")
#: Child tables of a run, keyed by ``run_id``, in deletion order, with their report kind.
RUN_CHILDREN = (("events", Kind.EVENTS), ("steps", Kind.STEPS), ("hooks", Kind.HOOKS),
                ("cancellation_flags", Kind.CANCELLATION_FLAGS))


class PurgeMixin:
    """``_purge`` for :class:`~workflow_retention.backends.sql.base.SQLBackend`."""

    #: Candidates are read in windows of this many batches and each window is cut into batches
    #: in run_id order: every index the cascade deletes from leads with run_id, so a batch then
    #: rewrites a narrow slice of each index instead of pages spread over all of it.
    window_batches: int = 8
    #: Rows the batch being deleted may delete in its one transaction (None: no limit); see _write_batch.
    _transaction_budget: int | None = None
    #: True while a batch is redone reading its step checkpoints before deleting (see NotOwned).
    _checkpoints_first: bool = False
    #: Written into the markers of the purge under way (see _commit_family).
    _purge_id: str = ""

    def _purge(self, job: PurgeJob) -> None:
        window = job.batch_size * self.window_batches
        self._row_budget = self.max_rows
        runs = self.table("workflow_runs").c
        # created_at < cutoff holds every expired run (updated_at >= created_at); created_at in the
        # future holds what sorts after every real timestamp (unreadable text, infinity), so that
        # such a run is reported instead of never being seen.
        future = max(job.report.started_at or utcnow(), job.cutoff) + FUTURE_MARGIN
        past, later = self.before(runs.created_at, job.cutoff), self.not_before(runs.created_at, future)
        with self.translated("purge"), self.session():
            if not self._purge_allowed(job):
                return
            self._purge_id = uuid.uuid4().hex
            self._resume(job)
            ranges: list[tuple[Any, tuple[Any, ...]]]
            if any(need.columns == ("created_at", "run_id") for need in self.layout.missing_indexes):
                ranges = [(or_(past, later), (runs.run_id,))]  # one linear scan of the primary key
            else:
                ranges = [(past, (runs.created_at, runs.run_id)), (later, (runs.created_at, runs.run_id))]
            for created, order in ranges:
                self._purge_range(job, created, order, window)
            self._purge_aux(job)

    def _purge_allowed(self, job: PurgeJob) -> bool:
        """Read the store's layout; report what is missing. False (a dry run) or StorageError (a purge) when
        a missing index would make the purge quadratic."""
        with self.read() as conn:
            layout = self.inspect_layout(conn)
        refused = [layout.index_note(need) for need in layout.missing_indexes if need.refuse]
        if refused and not job.dry_run:
            raise StorageError(f"purge refused on {self.url}: " + "; ".join(refused))
        for note in refused:
            job.report.warn(f"purge not previewed: {note}")
        for need in layout.missing_indexes:
            if not need.refuse:
                job.report.warn(layout.index_note(need))
        for name in layout.missing_tables:
            if name in PURGED_TABLES:
                job.report.warn(layout.table_note(name))
        for warning in job.report.warnings:
            log.warning("%s: %s", self.url, warning)
        return not refused

    def _purge_range(self, job: PurgeJob, created: Any, order: tuple[Any, ...], window: int) -> None:
        """Keyset pages (in ``order``) of ``window`` candidates whose created_at is in ``created``, each
        planned and purged."""
        cursor: tuple[Any, ...] | None = None
        while True:
            with self.read() as conn:
                rows = conn.execute(self._candidates(job, created, order, cursor, window)).all()
                plan = self._plan(conn, job, rows) if rows else None
                weights = self._weights(conn, plan, job.batch_size) if plan is not None else Weights(0)
            if not rows:
                return
            cursor = tuple(getattr(rows[-1], column.name) for column in order)
            for batch in split_plan(plan, job.batch_size) if plan is not None else ():
                self._purge_batch(job, batch, weights)
            if len(rows) < window:
                return

    # -- selection (read transaction) -----------------------------------------------

    def _candidates(self, job: PurgeJob, created: Any, order: tuple[Any, ...], cursor: tuple[Any, ...] | None,
                    limit: int) -> Any:
        runs = self.table("workflow_runs")
        parent = runs.alias("parent")
        r, p = runs.c, parent.c
        stmt = select(r.run_id, r.status, r.updated_at, r.parent_run_id, r.created_at, p.run_id.label("p_run_id"),
                      p.status.label("p_status"), p.updated_at.label("p_updated_at"),
                      p.parent_run_id.label("p_parent_run_id"), p.created_at.label("p_created_at"))
        stmt = stmt.select_from(runs.outerjoin(parent, p.run_id == r.parent_run_id)).where(
            created, self.exact(r.status).not_in(sorted(LIVE_STATUSES)))
        if self.exact_time:  # typed columns: NULL and values Python cannot load are candidates (reported)
            stmt = stmt.where((r.updated_at < self.db_time(job.cutoff)) | r.updated_at.is_(None)
                              | (r.updated_at >= self.db_time(LAST_LOADABLE)))
        if cursor is not None:
            stmt = stmt.where(self.after(order, cursor))
        return self.candidate_hint(stmt).order_by(*order).limit(limit)

    def candidate_hint(self, stmt: Any) -> Any:
        return stmt

    def _ref(self, run_id: str, status: Any, updated_at: Any, parent_run_id: str | None, created_at: Any) -> RunRef:
        """A run as plans see it: one whose created_at cannot be read is, like one whose updated_at
        cannot, never eligible (``data`` says which)."""
        ref = RunRef.parse(run_id, status, updated_at, parent_run_id)
        if not _readable(created_at):
            ref.updated_at, ref.data = None, UNREADABLE_CREATED_AT
        return ref

    def _plan(self, conn: Connection, job: PurgeJob, rows: Sequence[Any]) -> Plan | None:
        cutoff, report = job.cutoff, job.report
        page: list[RunRef] = []
        for row in rows:
            ref = self._ref(row.run_id, row.status, row.updated_at, row.parent_run_id, row.created_at)
            if ref.data is UNREADABLE_CREATED_AT and ref.status in TERMINAL_STATUSES:
                report.skipped += 1
                report.warn(f"run {ref.run_id!r}: its created_at cannot be read; run left alone")
            elif ref.candidate(cutoff):
                page.append(ref)
        parents = {row.p_run_id: self._ref(row.p_run_id, row.p_status, row.p_updated_at, row.p_parent_run_id,
                                           row.p_created_at) for row in rows if row.p_run_id is not None}
        loops = self._loops(conn, page, parents, cutoff)
        for ref in page:
            if ref.run_id in loops:
                report.skipped += 1
                report.warn(f"run {ref.run_id!r}: its parent_run_id links loop, so no root run reaches it; "
                            "run left alone")
        return plan_page([r for r in page if r.run_id not in loops], cutoff, report, lambda ids: parents,
                         lambda ids: self._children(conn, ids))

    def _loops(self, conn: Connection, page: Sequence[RunRef], parents: dict[str, RunRef],
               cutoff: datetime) -> set[str]:
        """The eligible runs of ``page`` that no plan would reach.

        A plan starts at a root (an eligible run whose parent is not eligible) and descends; a
        run whose eligible ancestors loop (A's parent is B and B's is A; a run that is its own
        parent) has no root above it, and would otherwise be kept without a word. The missing
        ancestors are read a generation per query; the walk is linear (each run resolved once).
        """
        nodes = {**parents, **{r.run_id: r for r in page}}

        def parent_of(ref: RunRef) -> RunRef | None:
            above = nodes.get(ref.parent_run_id) if ref.parent_run_id else None
            return above if above is not None and above.eligible(cutoff) else None

        starts = [r for r in page if r.eligible(cutoff) and parent_of(r) is not None]
        todo = {above.run_id for r in starts if (above := parent_of(r)) is not None}
        asked: set[str] = set()
        while todo:
            need = {p for i in todo if (p := nodes[i].parent_run_id) is not None} - nodes.keys() - asked
            asked |= need
            found = self._refs(conn, sorted(need)) if need else {}
            nodes.update(found)
            todo = {i for i, ref in found.items() if ref.eligible(cutoff)}
        rooted: dict[str, bool] = {}
        for start in starts:
            line: list[str] = []
            node: RunRef | None = start
            while True:
                if node is None or node.run_id in rooted:
                    verdict = node is None or rooted[node.run_id]
                    break
                if node.run_id in line:
                    verdict = False
                    break
                line.append(node.run_id)
                node = parent_of(node)
            for run_id in line:
                rooted[run_id] = verdict
        return {r.run_id for r in starts if not rooted[r.run_id]}

    def _refs(self, conn: Connection, run_ids: Sequence[str], lock: bool = False) -> dict[str, RunRef]:
        r = self.table("workflow_runs").c
        found: dict[str, RunRef] = {}
        for chunk in chunked(sorted(run_ids), self.id_chunk):
            stmt = select(r.run_id, r.status, r.updated_at, r.parent_run_id, r.created_at).where(
                self.among(r.run_id, chunk))
            if lock:
                stmt = self.lock(stmt.order_by(r.run_id))
            for row in conn.execute(stmt):
                found[row.run_id] = self._ref(row.run_id, row.status, row.updated_at, row.parent_run_id,
                                              row.created_at)
        return found

    def _children(self, conn: Connection, parent_ids: Iterable[str]) -> dict[str, list[RunRef]]:
        r = self.table("workflow_runs").c
        found: dict[str, list[RunRef]] = {}
        for chunk in chunked(sorted(parent_ids), self.id_chunk):
            stmt = select(r.run_id, r.status, r.updated_at, r.parent_run_id, r.created_at).where(
                self.among(r.parent_run_id, chunk))
            for row in conn.execute(stmt):
                ref = self._ref(row.run_id, row.status, row.updated_at, row.parent_run_id, row.created_at)
                found.setdefault(row.parent_run_id, []).append(ref)
        return found

    # -- one batch ---------------------------------------------------------------------

    def _purge_batch(self, job: PurgeJob, plan: Plan, weights: Weights) -> None:
        deletable, held = plan.order()
        if not deletable:
            job.report.held += len(held)
            return
        budget = self._row_budget  # the transactions adapt it; this batch is cut with one value
        for part, heavy in self._parts(plan, deletable, weights, budget):
            self._purge_part(job, part, heavy, budget)

    def _parts(self, plan: Plan, deletable: list[RunRef], weights: Weights,
               budget: int) -> list[tuple[Plan, bool]]:
        """The batch cut so that no write transaction deletes more than the row budget.

        Families (a root and its planned descendants) stay whole; a family over the budget on
        its own is flagged heavy (deleted in steps, see :meth:`_delete_in_steps`).
        """
        def rows(runs: Iterable[RunRef]) -> int:  # + the run record and its cancellation flag (at most one)
            total = 0
            for ref in runs:
                total += weights.of(self.id_fold(ref.run_id)) + 2
            return total

        if rows(deletable) <= budget:
            return [(plan, False)]
        parts: list[tuple[Plan, bool]] = []
        group: list[str] = []
        size = 0
        for root in sorted(plan.roots):
            family = Plan(plan.cutoff, plan.nodes, plan.children, [root])
            weight = rows(family.order()[0])
            if weight > budget:
                parts.append((family, True))
                continue
            if group and size + weight > budget:
                parts.append((Plan(plan.cutoff, plan.nodes, plan.children, group), False))
                group, size = [], 0
            group.append(root)
            size += weight
        if group:
            parts.append((Plan(plan.cutoff, plan.nodes, plan.children, group), False))
        return parts

    def _weights(self, conn: Connection, plan: Plan, batch_size: int) -> Weights:
        """How many rows the eligible runs of a window's plan hold in events, steps and hooks.

        Counted in the window's read through the run_id indexes, before any write transaction.
        Only the runs over half an even share of the budget (``share``) come back, with their
        count; the others are taken to hold ``share`` (at most half the budget for a whole batch
        of them), so a batch is cut only when its runs may really be heavy, and the common case
        costs one small answer per window. A run has at most one cancellation flag (its primary
        key); step checkpoints are counted where they are read, inside the write transaction
        (:meth:`_cascade`).
        """
        share = max(0, self._row_budget // (2 * max(1, batch_size)) - 2)
        weights = Weights(share)
        ids = sorted(run_id for run_id, ref in plan.nodes.items() if ref.eligible(plan.cutoff))
        for chunk in chunked(ids, self.id_chunk):
            for run_id, n in self.child_rows(conn, chunk, over=share):
                weights[self.id_fold(run_id)] += n
        return weights

    def child_rows(self, conn: Connection, run_ids: Sequence[str], over: int) -> Iterable[tuple[str, int]]:
        """(run_id, rows) of the runs that hold more than ``over`` rows in events, steps and hooks."""
        counts = []
        for name in COUNTED_CHILDREN:
            column = self.table(name).c.run_id
            counts.append(select(column.label("run_id"), func.count().label("n"))
                          .where(self.among(column, run_ids)).group_by(column))
        both = union_all(*counts).subquery()
        total = func.sum(both.c.n)
        return conn.execute(select(both.c.run_id, total).group_by(both.c.run_id).having(total > over)).all()

    def _purge_part(self, job: PurgeJob, plan: Plan, heavy: bool, budget: int) -> None:
        deletable, held = plan.order()
        if not deletable:
            job.report.held += len(held)
            return
        ids = [r.run_id for r in deletable]
        if job.dry_run:
            job.boundary(ids)
            with self.read() as conn:
                counts = self._cascade(conn, plan, deletable, dry_run=True)
            job.report.held += len(held)
            job.report.merge(counts)
            return
        if heavy:
            self._delete_in_steps(job, plan, ids)
            return
        job.boundary(ids)
        try:
            changed, held_now, counts = self._write_batch(plan, ids, budget)
        except TooHeavy:  # its step checkpoints would take it over the budget: rolled back, go in steps
            self._delete_in_steps(job, plan, ids, announced=True)
            return
        job.report.changed += changed
        job.report.held += held_now
        job.report.merge(counts)

    def _write_batch(self, plan: Plan, ids: list[str], budget: int | None) -> tuple[int, int, Counter]:
        """The one write transaction of a batch that fits ``budget`` (:class:`TooHeavy`: it rolled back)."""
        self._transaction_budget = budget
        try:
            try:
                return self._timed_write(lambda conn: self._delete_batch(conn, plan.copy(), ids))
            except NotOwned:  # a ':' id: the one-statement cascade met another run's checkpoint; redo
                self._checkpoints_first = True
                try:
                    return self._timed_write(lambda conn: self._delete_batch(conn, plan.copy(), ids))
                finally:
                    self._checkpoints_first = False
        finally:
            self._transaction_budget = None

    def _recheck(self, conn: Connection, plan: Plan, ids: list[str]) -> tuple[set[str], list[RunRef], list[RunRef]]:
        """Lock the runs and read them again: (changed, deletable, held) as of now.

        A run whose status or updated_at moved, or that is gone, has changed; it survives, and
        so does a child created since planning; their ancestors are held.
        """
        fresh = self._refs(conn, ids, lock=True)
        changed = {i for i in ids if i not in fresh or not plan.nodes[i].same_version(fresh[i])}
        survivors = set(changed)
        for parent, kids in self._children(conn, ids).items():
            for kid in kids:
                if kid.run_id not in plan.nodes:  # a child created since planning holds its parent
                    survivors.add(kid.run_id)
                    plan.nodes[kid.run_id] = kid
                    plan.children.setdefault(parent, []).append(kid.run_id)
        deletable, held = plan.order(survivors=frozenset(survivors))
        return changed, deletable, held

    def _delete_batch(self, conn: Connection, plan: Plan, ids: list[str]) -> tuple[int, int, Counter]:
        """Lock, re-check, delete. Returns (changed, held, counts); retried as a whole on deadlock."""
        changed, deletable, held = self._recheck(conn, plan, ids)
        return len(changed), len(held), self._cascade(conn, plan, deletable, dry_run=False)

    def _delete_in_steps(self, job: PurgeJob, plan: Plan, ids: list[str], announced: bool = False) -> None:
        """A family with more rows than one transaction may delete: its records first, then its rows.

        Where the dialect can delete run records without the engine's ON DELETE CASCADE firing
        (:attr:`can_defer_cascade`), one short transaction locks and re-checks the runs, marks the
        deletable ones in :data:`MARKERS` and deletes their records, leaves first: the commit point,
        after which the engine can no longer revive them (its UPDATE matches nothing, its inserts
        fail the foreign key). Bounded transactions then delete the marked runs' child rows
        (:meth:`_finish_marked`); a purge stopped in between is finished by the next one
        (:meth:`_resume`). Elsewhere (PostgreSQL) the family goes in one transaction.
        """
        if not self.can_defer_cascade:
            self._delete_whole(job, plan, ids, announced)
            return
        if not announced:
            job.boundary(ids)
        self._ensure_markers()
        changed, held, marked, counts = self._timed_write(
            lambda conn: self._commit_family(conn, plan.copy(), ids), cascade=False)
        job.report.changed += len(changed)
        job.report.held += held
        job.report.merge(counts)
        if marked:
            self._finish_marked(job, marked)

    def _delete_whole(self, job: PurgeJob, plan: Plan, ids: list[str], announced: bool) -> None:
        """A heavy family in one transaction (the dialect cannot hold back the cascade); reported when it
        took longer than ``transaction_target``."""
        if not announced:
            job.boundary(ids)
        started = time.perf_counter()
        changed, held, counts = self._write_batch(plan, ids, None)
        seconds = time.perf_counter() - started
        job.report.changed += changed
        job.report.held += held
        job.report.merge(counts)
        if seconds > self.transaction_target:
            job.report.warn(f"run {ids[0]!r}{f' and {len(ids) - 1} more' if len(ids) > 1 else ''}: "
                            f"{sum(counts.values())} rows deleted in one transaction of {seconds:.2f} s "
                            f"(target {self.transaction_target} s); this dialect cannot split a run's "
                            "deletion safely (see docs/backends/sql.md)")

    def _commit_family(self, conn: Connection, plan: Plan, ids: list[str]) -> tuple[set[str], int, list[str],
                                                                                   Counter]:
        """The commit point of a heavy family: (changed, held, marked run ids, counts).

        Runs in a transaction opened without the engine's cascade (:meth:`without_cascade`): the
        runs are locked and re-checked, each deletable one gets a marker row and loses its record,
        leaves first; its child rows stay for :meth:`_finish_marked`.
        """
        changed, deletable, held = self._recheck(conn, plan, ids)
        runs = [r.run_id for r in deletable]
        if not runs:
            return changed, len(held), [], Counter()
        now = self.db_time(utcnow())
        markers = self.markers_table
        for chunk in chunked(runs, self.id_chunk):
            conn.execute(insert(markers), [{"run_id": r, "purge_id": self._purge_id, "created_at": now}
                                           for r in chunk])
        return changed, len(held), runs, self._delete_runs(conn, plan, deletable, dry_run=False)

    def _finish_marked(self, job: PurgeJob | OrphanJob, run_ids: list[str]) -> None:
        """Delete the child rows of marked runs (records gone) in transactions of the row budget, then
        their markers. A marked run whose record exists again keeps everything: its marker is dropped
        and it is reported."""
        ids = list(run_ids)
        while ids:
            job.boundary(ids)
            counts, done, back = self._timed_write(lambda conn, part=ids: self._finish_step(conn, part))
            job.report.merge(counts)
            for run_id in back:
                job.report.skipped += 1
                job.report.warn(f"run {run_id!r}: marked for deletion by an interrupted purge, but its record "
                                "exists again; its marker was dropped and the run left alone")
            ids = [i for i in ids if i not in back]
            if done:
                return

    def _finish_step(self, conn: Connection, run_ids: list[str]) -> tuple[Counter, bool, set[str]]:
        """One bounded transaction of :meth:`_finish_marked`: (counts, done, run ids whose record exists)."""
        markers = self.markers_table
        back = self._records(conn, run_ids)  # checked under the write transaction: never delete a live run's rows
        for chunk in chunked(sorted(back), self.id_chunk):
            conn.execute(delete(markers).where(self.among(markers.c.run_id, chunk)))
        runs = [i for i in run_ids if i not in back]
        counts: Counter = Counter()
        left = self._row_budget
        for name, kind in RUN_CHILDREN if runs else ():
            if not self.has(name):
                continue
            table = self.table(name)
            for chunk in chunked(runs, self.id_chunk):
                n = conn.execute(self.delete_some(table, self.among(table.c.run_id, chunk), left)).rowcount
                counts[kind] += n
                left -= n
                if left <= 0:
                    return +counts, False, back
        keys = self._owned_checkpoints(conn, runs) if runs else []
        step_run_id = self.table("checkpoints").c.step_run_id
        for chunk in chunked(keys[:left], self.id_chunk):
            counts[Kind.CHECKPOINTS] += self._apply(conn, "checkpoints", self.among(step_run_id, chunk), False)
        if len(keys) > left:
            return +counts, False, back
        for chunk in chunked(runs, self.id_chunk):
            conn.execute(delete(markers).where(self.among(markers.c.run_id, chunk)))
        return +counts, True, back

    # -- markers of runs whose records are gone and whose rows are not yet --------------------

    @cached_property
    def markers_table(self) -> Table:
        """:data:`MARKERS`: one row per run whose record a purge deleted before its child rows."""
        return Table(MARKERS, MetaData(), Column("run_id", self.types.id, primary_key=True, autoincrement=False),
                     Column("purge_id", self.types.name, nullable=False),
                     Column("created_at", self.types.ts, nullable=False), **MYSQL_OPTIONS)

    def _ensure_markers(self) -> None:
        """Create :data:`MARKERS` in the store's schema if it is not there (never in a dry run)."""
        if self.has(MARKERS):
            return
        self.write(lambda conn: conn.execute(CreateTable(self.markers_table, if_not_exists=True)))
        self.layout = replace(self.layout, tables=self.layout.tables | {MARKERS})

    def _resume(self, job: PurgeJob | OrphanJob) -> None:
        """Finish the runs an interrupted purge marked (their records gone, their rows not yet).

        A dry run only says how many there are. Read in pages of ``batch_size`` marker rows.
        """
        if not self.has(MARKERS):
            return
        markers = self.markers_table
        if job.dry_run:
            with self.read() as conn:
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
            with self.read() as conn:
                ids = list(conn.execute(stmt).scalars())
            if not ids:
                break
            cursor = ids[-1]
            skipped = job.report.skipped
            self._finish_marked(job, ids)
            finished += len(ids) - (job.report.skipped - skipped)
            if len(ids) < job.batch_size:
                break
        if finished:
            job.report.warn(f"{finished} runs of an interrupted purge (records already deleted) had rows left; "
                            "they were deleted now")

    def _cascade(self, conn: Connection, plan: Plan, runs: list[RunRef], dry_run: bool) -> Counter:
        """Delete (or count) the runs' child rows, checkpoints, then the runs, leaves first."""
        counts: Counter = Counter()
        ids = [r.run_id for r in runs]
        if not ids:
            return counts
        for name, kind in RUN_CHILDREN:
            column = self.table(name).c.run_id
            for chunk in chunked(ids, self.id_chunk):
                counts[kind] += self._apply(conn, name, self.among(column, chunk), dry_run)
        owned = self._owned_checkpoints(conn, ids)
        if not dry_run:
            self._within_budget(sum(counts.values()) + len(owned) + len(ids))
        step_run_id = self.table("checkpoints").c.step_run_id
        for chunk in chunked(owned, self.id_chunk) if not dry_run else ():
            counts[Kind.CHECKPOINTS] += self._apply(conn, "checkpoints", self.among(step_run_id, chunk), dry_run)
        if dry_run:
            counts[Kind.CHECKPOINTS] += len(owned)
        counts.update(self._delete_runs(conn, plan, runs, dry_run))
        return +counts

    def _delete_runs(self, conn: Connection, plan: Plan, runs: list[RunRef], dry_run: bool) -> Counter:
        """Delete (or count) the run records, a level at a time, leaves first (MySQL checks the parent row by row)."""
        counts: Counter = Counter()
        run_id = self.table("workflow_runs").c.run_id
        for level in heights(plan, runs):
            for chunk in chunked([r.run_id for r in level], self.id_chunk):
                counts[Kind.RUNS] += self._apply(conn, "workflow_runs", self.among(run_id, chunk), dry_run)
        return counts

    def _checkpoint_owners(self, conn: Connection, run_ids: Sequence[str]) -> dict[str, str]:
        """Each step checkpoint that belongs to one of ``run_ids`` (all existing runs), with that run.

        The checkpoints whose key starts with ``<run_id>:`` are read (a primary-key range or
        an escaped LIKE per run); each belongs to its longest prefix that names an existing run
        (:func:`key_owners`), which is one of ``run_ids`` only if no longer prefix is a run: the
        checkpoint ``a:b:s`` of a run ``a:b`` is not ``a``'s. Only keys with more than one ``:``
        cost an existence lookup.
        """
        if not self.has("checkpoints"):
            return {}
        keys: set[str] = set()
        for chunk in chunked(run_ids, self.checkpoint_chunk):
            keys.update(conn.execute(*self.checkpoint_keys(chunk)).scalars())
        return self._owners_of(conn, keys, run_ids) if keys else {}

    def _owners_of(self, conn: Connection, keys: Iterable[str], run_ids: Sequence[str]) -> dict[str, str]:
        """Those of ``keys`` that belong to one of ``run_ids`` (which exist), with that run (:func:`key_owners`)."""
        batch = set(run_ids)

        def existing(prefixes: set[str]) -> set[str]:
            return (prefixes & batch) | self._existing(conn, prefixes - batch)

        mine = {self.id_fold(r): r for r in run_ids}
        owners = key_owners(keys, existing)
        return {k: mine[self.id_fold(o)] for k, o in owners.items() if o is not None and self.id_fold(o) in mine}

    def _owned_checkpoints(self, conn: Connection, run_ids: Sequence[str]) -> list[str]:
        """The keys of the step checkpoints that belong to ``run_ids`` (see :meth:`_checkpoint_owners`)."""
        return sorted(self._checkpoint_owners(conn, run_ids))

    def _within_budget(self, rows: int) -> None:
        """Raise :class:`TooHeavy` (the transaction rolls back) when a batch's transaction would delete more
        rows than its budget: only its step checkpoints, counted where they are read, can take it there."""
        if self._transaction_budget is not None and rows > self._transaction_budget:
            raise TooHeavy(rows)

    def _existing(self, conn: Connection, run_ids: Collection[str]) -> set[str]:
        """Those of ``run_ids`` that name a run record, whatever its status, or a marked run (whose rows are
        still its own, see :data:`MARKERS`); ids compared as the store does."""
        found = self._records(conn, run_ids)
        if self.has(MARKERS) and len(found) < len(run_ids):
            found |= self._records(conn, [i for i in run_ids if i not in found], self.markers_table)
        return found

    def _records(self, conn: Connection, run_ids: Collection[str], table: Any = None) -> set[str]:
        """Those of ``run_ids`` that name a row of ``table`` (the run records by default)."""
        if not run_ids:
            return set()
        column = (table if table is not None else self.table("workflow_runs")).c.run_id
        stored: set[str] = set()
        for chunk in chunked(sorted(run_ids), self.id_chunk):
            stored.update(self.id_fold(v) for v in conn.execute(select(column).where(self.among(column, chunk)))
                          .scalars())
        return {i for i in run_ids if self.id_fold(i) in stored}

    def _apply(self, conn: Connection, name: str, where: Any, dry_run: bool, params: Any = None) -> int:
        table = self.table(name)
        if dry_run:
            return conn.execute(select(func.count()).select_from(table).where(where), params).scalar_one()
        return conn.execute(delete(table).where(where), params).rowcount

    # -- the baseline's other sweeps ------------------------------------------------------

    def _purge_aux(self, job: PurgeJob) -> None:
        for sweep in self.aux_sweeps(job.cutoff):
            if not self.has(sweep.table.name):
                continue  # reported by _purge_allowed
            self.run_sweep(job, sweep)
            job.report.skipped += sweep.skipped
