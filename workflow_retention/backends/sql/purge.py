"""One SQL purge: candidate windows, batches in run_id order, short locking transactions bounded by rows.

The design (discovery ranges, bounded transactions, the re-check under lock, heavy runs and their
commit point, what each dialect guarantees beside a live engine) is in docs/backends/sql.md.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, ClassVar

from sqlalchemy import and_, not_, or_, select, text
from sqlalchemy.engine import Connection

from workflow_retention.backends.sql import archive as sql_archive
from workflow_retention.backends.sql import runs, shards
from workflow_retention.backends.sql.client import Client
from workflow_retention.backends.sql.layout import COUNTED_CHILDREN, PURGED_TABLES, RUN_CHILDREN
from workflow_retention.backends.sql.markers import Markers
from workflow_retention.backends.sql.runs import UNREADABLE_CREATED_AT
from workflow_retention.backends.sql.streams import purge_streams
from workflow_retention.base import PurgeJob
from workflow_retention.exceptions import StorageError
from workflow_retention.planning import (
    LIVE_STATUSES,
    TERMINAL_STATUSES,
    Plan,
    RunRef,
    chunked,
    heights,
    left_alone,
    plan_page,
    split_plan,
)
from workflow_retention.report import Kind
from workflow_retention.timeutil import utcnow

log = logging.getLogger("workflow_retention.sql")

#: The second discovery range starts this far past now (or the cutoff, if later): see Purge.run.
FUTURE_MARGIN = timedelta(days=1)
#: Typed timestamp columns: values from here on may not load into a Python datetime (year 10000,
#: infinity); such a run is a candidate so that it is reported.
LAST_LOADABLE = datetime(9999, 12, 31, tzinfo=UTC)


class TooHeavy(Exception):
    """A batch's step checkpoints would take its transaction over the row budget: it rolls back."""


class NotOwned(Exception):
    """A cascade that deleted step checkpoints by key range met one that belongs to another run (a longer
    run id): it rolls back, and the batch is redone reading its checkpoints first."""


@dataclass
class Pending:
    """A batch handed to a writer thread: its plan and ids, and the future of its transaction."""

    plan: Plan
    ids: list[str]
    future: Future


def _deleted(result: tuple[int, int, Counter]) -> int:
    """The rows a batch transaction deleted, from its (changed, held, counts)."""
    return sum(result[2].values())


def compact(plan: Plan) -> Plan:
    """``plan`` (roots sharing a window's nodes) with only the nodes its roots reach: a batch's own plan, cheap
    to copy per transaction attempt and safe to hand to another thread."""
    nodes: dict[str, RunRef] = {}
    children: dict[str, list[str]] = {}
    stack = list(plan.roots)
    while stack:
        run_id = stack.pop()
        if run_id in nodes or run_id not in plan.nodes:
            continue
        nodes[run_id] = plan.nodes[run_id]
        if run_id in plan.children:
            kids = children[run_id] = list(plan.children[run_id])
            stack.extend(kids)
    return Plan(plan.cutoff, nodes, children, list(plan.roots))


class Weights(Counter):
    """Rows each run holds in its child tables, for the runs over ``share``; any other run holds at most that."""

    def __init__(self, share: int) -> None:
        super().__init__()
        self.share = share

    def of(self, run_id: str) -> int:
        return int(self[run_id]) if run_id in self else self.share


class Purge:
    """The purge of ``job`` on the store of ``client``."""

    #: Candidates are read in windows of this many batches and each window is cut into batches
    #: in run_id order: every index the cascade deletes from leads with run_id, so a batch then
    #: rewrites a narrow slice of each index instead of pages spread over all of it.
    window_batches: ClassVar[int] = 8
    #: ... but a window holds at most this many candidates (or one batch, if larger): memory stays bounded
    #: by the batch with large batches too.
    window_rows: ClassVar[int] = 10_000
    #: A batch is cut into parts of at most this share of the row budget in events, steps, hooks, flags and
    #: records; its step checkpoints are counted in the transaction and fill the rest (:meth:`_parts`).
    cut_share: ClassVar[float] = 0.75

    def __init__(self, client: Client, job: PurgeJob) -> None:
        self.client = client
        self.dialect = client.dialect
        self.job = job
        #: Per writer thread: ``budget``, the rows the batch being deleted may delete in its one transaction
        #: (None: no limit), and ``checkpoints_first``, True while a batch is redone reading its step
        #: checkpoints before deleting (see NotOwned); see _write_batch.
        self._tx = threading.local()
        self.markers = Markers(client, job, uuid.uuid4().hex)
        #: Write batches run on this many connections at once (docs/backends/sql.md, "Parallel batches").
        self.parallel = 1 if job.dry_run else max(1, self.dialect.parallel_batches)
        #: ``submit(fn)`` of the writer threads while a purge runs with ``parallel`` > 1.
        self._submit: Callable[[Callable[[], Any]], Future] | None = None
        #: The next wave: batches planned, whose ``on_batch`` is still to be called (by :meth:`_flush`).
        self._wave: list[tuple[Plan, list[str], int]] = []
        #: The wave running on the writer threads.
        self._running: list[Pending] = []

    def run(self) -> None:
        """Purge: the marked runs of an interrupted purge, then both discovery ranges, then the sweeps."""
        job, client = self.job, self.client
        # A shard reports its cursor after every window: one batch's worth, so a stopped shard redoes no batch.
        window = job.batch_size if job.partial else max(job.batch_size, min(job.batch_size * self.window_batches,
                                                                             self.window_rows))
        client.row_budget = client.first_budget()
        r = client.table("workflow_runs").c
        # created_at < cutoff holds every expired run (updated_at >= created_at); created_at in the
        # future holds what sorts after every real timestamp (unreadable text, infinity), so that
        # such a run is reported instead of never being seen.
        future = max(job.report.started_at or utcnow(), job.cutoff) + FUTURE_MARGIN
        past, later = self.dialect.before(r.created_at, job.cutoff), self.dialect.not_before(r.created_at, future)
        with client.translated("purge"), client.session(), self._writers():
            if not self._allowed():
                return
            if job.sweeps:  # (explain reads its runs by id; a shard leaves other purges' markers to the final pass)
                self.markers.resume()
            ranges: list[tuple[Any, tuple[Any, ...]]]
            if job.only is not None:  # explain: these runs, by id, in the created_at ranges a purge selects from
                ranges = [(and_(self.dialect.among(r.run_id, sorted(job.only)), or_(past, later)), (r.run_id,))]
                self._not_selected(job.only, or_(past, later))
            elif any(need.columns == ("created_at", "run_id") for need in client.layout.missing_indexes):
                ranges = [(or_(past, later), (r.run_id,))]  # one linear scan of the primary key
            else:
                ranges = [(past, (r.created_at, r.run_id)), (later, (r.created_at, r.run_id))]
            start, after = shards.decode_cursor(job.resume_after) if job.resume_after is not None else (0, None)
            try:
                for index, (created, order) in enumerate(ranges):
                    if index >= start:
                        self._range(index, created, order, window, after if index == start else None)
                self._drain()
            except BaseException:
                self._abandon()
                raise
            if job.sweeps:
                purge_streams(client, job)

    def _allowed(self) -> bool:
        """Read the store's layout; report what is missing. False (a dry run) or StorageError (a purge) when
        a missing index would make the purge quadratic."""
        client, job = self.client, self.job
        with client.read() as conn:
            layout = client.inspect_layout(conn)
        refused = [layout.index_note(need) for need in layout.missing_indexes if need.refuse]
        if refused and not job.dry_run:
            raise StorageError(f"purge refused on {client.url}: " + "; ".join(refused))
        for note in refused:
            job.report.warn(f"purge not previewed: {note}")
        for need in layout.missing_indexes:
            if not need.refuse:
                job.report.warn(layout.index_note(need))
        for name in layout.missing_tables:
            if name in PURGED_TABLES:
                job.report.warn(layout.table_note(name))
        for warning in job.report.warnings:
            log.warning("%s: %s", client.url, warning)
        return not refused

    def _not_selected(self, run_ids: Collection[str], selected: Any) -> None:
        """explain: say which of ``run_ids`` no purge selects now (created_at after the cutoff, clock skew)."""
        r = self.client.table("workflow_runs").c
        with self.client.read() as conn:
            rows = conn.execute(select(r.run_id, r.status, r.updated_at, r.parent_run_id, r.created_at).where(
                self.dialect.among(r.run_id, sorted(run_ids)), not_(selected))).all()
        for row in rows:
            if not runs.ref_of(row.run_id, row.status, row.updated_at, row.parent_run_id,
                               row.created_at).is_expired(self.job.cutoff):
                continue  # not expired anyway: its own reason says why
            self.job.report.warn(f"run {row.run_id!r}: its created_at ({row.created_at}) is not before the cutoff: "
                                 "a purge finds expired runs by created_at (pyworkflow never updates a run before "
                                 "it is created), so it is selected once the cutoff passes its created_at")

    def _range(self, index: int, created: Any, order: tuple[Any, ...], window: int,
               cursor: tuple[Any, ...] | None) -> None:
        """Keyset pages (in ``order``, after ``cursor``) of ``window`` candidates whose created_at is in
        ``created``, each planned and purged; a shard then reports the cursor (``job.finished``) once the
        window's batches are done."""
        while True:
            with self.client.read() as conn:
                rows = conn.execute(self._candidates(created, order, cursor, window)).all()
                plan = self._plan(conn, rows) if rows else None
                weights = self._weights(conn, plan) if plan is not None else Weights(0)
            if not rows:
                return
            cursor = tuple(getattr(rows[-1], column.name) for column in order)
            for batch in split_plan(plan, self.job.batch_size) if plan is not None else ():
                self._batch(compact(batch), weights)
            if self.job.partial:
                self._drain()
                self.job.finished(shards.encode_cursor(index, cursor))
            if len(rows) < window:
                return

    # -- selection (read transaction) -----------------------------------------------

    def _candidates(self, created: Any, order: tuple[Any, ...], cursor: tuple[Any, ...] | None, limit: int) -> Any:
        d = self.dialect
        table = self.client.table("workflow_runs")
        parent = table.alias("parent")
        r, p = table.c, parent.c
        stmt = select(r.run_id, r.status, r.updated_at, r.parent_run_id, r.created_at, p.run_id.label("p_run_id"),
                      p.status.label("p_status"), p.updated_at.label("p_updated_at"),
                      p.parent_run_id.label("p_parent_run_id"), p.created_at.label("p_created_at"),
                      r.workflow_name, p.workflow_name.label("p_workflow_name"))
        stmt = stmt.select_from(table.outerjoin(parent, p.run_id == r.parent_run_id)).where(
            created, d.exact(r.status).not_in(sorted(LIVE_STATUSES)))
        if d.exact_time:  # typed columns: NULL and values Python cannot load are candidates (reported)
            stmt = stmt.where((r.updated_at < d.db_time(self.job.cutoff)) | r.updated_at.is_(None)
                              | (r.updated_at >= d.db_time(LAST_LOADABLE)))
        if cursor is not None:
            stmt = stmt.where(d.after(order, cursor))
        if (mine := shards.where(self.client, self.job.shard)) is not None:
            stmt = stmt.where(mine)
        return d.candidate_hint(stmt).order_by(*order).limit(limit)

    def _plan(self, conn: Connection, rows: Sequence[Any]) -> Plan | None:
        cutoff, report = self.job.cutoff, self.job.report
        page: list[RunRef] = []
        for row in rows:
            ref = runs.ref_of(row.run_id, row.status, row.updated_at, row.parent_run_id, row.created_at,
                              row.workflow_name)
            if ref.data is UNREADABLE_CREATED_AT and ref.status in TERMINAL_STATUSES:
                left_alone(report, f"run {ref.run_id!r}", "its created_at cannot be read")
            elif ref.candidate(cutoff):
                page.append(ref)
        parents = {row.p_run_id: runs.ref_of(row.p_run_id, row.p_status, row.p_updated_at, row.p_parent_run_id,
                                             row.p_created_at, row.p_workflow_name)
                   for row in rows if row.p_run_id is not None}
        loops = self._loops(conn, page, parents, cutoff)
        for ref in page:
            if ref.run_id in loops:
                left_alone(report, f"run {ref.run_id!r}", "its parent_run_id links loop, so no root run reaches it")
        if self.job.partial:  # a root whose parent lies in another shard is the final pass's (shards.py)
            foreign = shards.foreign_parents(self.client, conn, self.job.shard,
                                             {p for r in page if (p := r.parent_run_id) is not None and p in parents})
            page = [r for r in page if r.parent_run_id not in foreign]
        return plan_page([r for r in page if r.run_id not in loops], cutoff, report, lambda ids: parents,
                         lambda ids: runs.children(self.client, conn, ids))

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
            found = runs.refs(self.client, conn, sorted(need)) if need else {}
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

    # -- one batch ---------------------------------------------------------------------

    def _batch(self, plan: Plan, weights: Weights) -> None:
        deletable, held = plan.order()
        if not deletable:
            self.job.report.held += len(held)
            return
        budget = self.client.row_budget  # the transactions adapt it; each part is cut and checked with one value
        parts = self._parts(plan, deletable, weights, budget)
        while parts:
            part, heavy = parts.pop(0)
            self._part(part, heavy, budget, (deletable, held) if part is plan else None)
            if parts and self.client.row_budget < budget:
                # A part took longer than the target: the parts left were cut for a budget the store no longer
                # allows. Cut them again, before any of them starts (never rolled back: cut and checked alike).
                budget = self.client.row_budget
                rest = compact(Plan(plan.cutoff, plan.nodes, plan.children, [r for p, _ in parts for r in p.roots]))
                parts = self._parts(rest, rest.order()[0], weights, budget)

    def _parts(self, plan: Plan, deletable: list[RunRef], weights: Weights,
               budget: int) -> list[tuple[Plan, bool]]:
        """The batch cut so that no write transaction deletes more than the row budget.

        Families (a root and its planned descendants) stay whole; a family over the budget on
        its own is flagged heavy (deleted records first, see :meth:`_heavy`). Parts are filled to
        :attr:`cut_share` of the budget: the step checkpoints, counted only inside the transaction,
        take the rest (a part they take over the budget rolls back and goes records first).
        """
        fold = self.dialect.id_fold
        fill = max(1, int(budget * self.cut_share))

        def rows(refs: Iterable[RunRef]) -> int:  # + the run record and its cancellation flag (at most one)
            return sum(weights.of(fold(ref.run_id)) + 2 for ref in refs)

        if rows(deletable) <= fill:
            return [(plan, False)]
        doomed = {ref.run_id for ref in deletable}

        def family_rows(root: str) -> int:  # the deletable runs of one root's family (families are disjoint)
            total, stack, seen = 0, [root], set()
            while stack:
                run_id = stack.pop()
                if run_id in seen:
                    continue
                seen.add(run_id)
                if run_id in doomed:
                    total += weights.of(fold(run_id)) + 2
                stack.extend(plan.children.get(run_id, ()))
            return total

        def part(roots: list[str]) -> Plan:
            return compact(Plan(plan.cutoff, plan.nodes, plan.children, roots))

        parts: list[tuple[Plan, bool]] = []
        group: list[str] = []
        size = 0
        for root in sorted(plan.roots):
            weight = family_rows(root)
            if weight > budget:
                parts.append((part([root]), True))
                continue
            if group and size + weight > fill:
                parts.append((part(group), False))
                group, size = [], 0
            group.append(root)
            size += weight
        if group:
            parts.append((part(group), False))
        return parts

    def _weights(self, conn: Connection, plan: Plan) -> Weights:
        """How many rows the eligible runs of a window's plan hold in events, steps and hooks.

        Counted in the window's read through the run_id indexes, before any write transaction.
        Only the runs over half an even share of the budget (``share``) come back, with their
        count; the others are taken to hold ``share`` (at most half the budget for a whole batch
        of them), so a batch is cut only when its runs may really be heavy, and the common case
        costs one small answer per window. A run has at most one cancellation flag (its primary
        key); step checkpoints are counted where they are read, inside the write transaction
        (:meth:`_cascade`).
        """
        d = self.dialect
        share = max(0, self.client.row_budget // (2 * max(1, self.job.batch_size)) - 2)
        weights = Weights(share)
        ids = sorted(run_id for run_id, ref in plan.nodes.items() if ref.eligible(plan.cutoff))
        tables = [self.client.table(name) for name in COUNTED_CHILDREN]
        for chunk in chunked(ids, d.id_chunk):
            for run_id, n in d.child_rows(conn, tables, chunk, over=share):
                weights[d.id_fold(run_id)] += n
        return weights

    def _part(self, plan: Plan, heavy: bool, budget: int,
              order: tuple[list[RunRef], list[RunRef]] | None = None) -> None:
        job = self.job
        deletable, held = order if order is not None else plan.order()
        if not deletable:
            job.report.held += len(held)
            return
        ids = [r.run_id for r in deletable]
        if job.dry_run:
            job.boundary(ids)
            with self.client.read() as conn:
                counts = self._cascade(conn, plan, deletable, dry_run=True)
            job.report.held += len(held)
            job.report.merge(counts)
            return
        if heavy:
            self._drain()
            self._heavy(plan, ids)
            return
        if self._submit is not None:  # parallel batches: this one joins the next wave
            self._wave.append((plan, ids, budget))
            if len(self._wave) >= self.parallel:
                self._flush()
            return
        job.boundary(ids)
        try:
            result = self._write_batch(plan, ids, budget)
        except TooHeavy:  # its step checkpoints would take it over the budget: rolled back, records first
            self._heavy(plan, ids, announced=True)
            return
        self._merge(result)

    def _merge(self, result: tuple[int, int, Counter]) -> None:
        changed, held, counts = result
        self.job.report.changed += changed
        self.job.report.held += held
        self.job.report.merge(counts)

    # -- parallel batches (docs/backends/sql.md, "Parallel batches") ------------------------

    @contextmanager
    def _writers(self) -> Iterator[None]:
        """The writer threads of a purge with :attr:`parallel` > 1, each with its own connection."""
        if self.parallel <= 1:
            yield
            return
        with self.client.writers(self.parallel) as submit:
            self._submit = submit
            try:
                yield
            finally:
                self._submit = None

    def _flush(self) -> None:
        """Start the next wave: once the running wave has finished (so that no transaction of this purge is
        open), ``on_batch`` for each of its batches in turn, then every batch on a writer thread of its own.

        Whatever ``on_batch`` raises stops the purge before that batch; the batches approved before it
        still run (as they would have, one at a time), and are waited for.
        """
        self._collect()
        wave, self._wave = self._wave, []
        approved: list[tuple[Plan, list[str], int]] = []
        try:
            for plan, ids, budget in wave:
                self.job.boundary(ids)
                approved.append((plan, ids, budget))
        finally:
            assert self._submit is not None
            for plan, ids, budget in approved:
                future = self._submit(partial(self._write_batch, plan, ids, budget))
                self._running.append(Pending(plan, ids, future))

    def _collect(self) -> None:
        """Wait for the running wave; merge its results, in batch order. A batch over its row budget (its step
        checkpoints) then goes records first, as it would alone; the first error is raised, after the rest of
        the wave has finished."""
        running, self._running = self._running, []
        error: BaseException | None = None
        heavy: list[Pending] = []
        for pending in running:
            try:
                self._merge(pending.future.result())
            except TooHeavy:
                heavy.append(pending)
            except BaseException as exc:  # noqa: BLE001 - raised below, after every batch of the wave finished
                error = error or exc
        if error is not None:
            raise error
        for pending in heavy:
            self._heavy(pending.plan, pending.ids, announced=True)

    def _drain(self) -> None:
        """Run and wait for every batch not yet finished (before a heavy family, a dry run's count, the end)."""
        if self._wave:
            self._flush()
        self._collect()

    def _abandon(self) -> None:
        """The purge stops (an error, or ``on_batch`` raised): batches not yet approved are dropped (the next
        purge finds them); the running ones are waited for and counted, their errors logged."""
        self._wave = []
        running, self._running = self._running, []
        for pending in running:
            try:
                self._merge(pending.future.result())
            except TooHeavy:
                pass  # rolled back: left for the next purge
            except Exception as exc:  # noqa: BLE001 - the purge is already failing with the first error
                log.warning("%s: a parallel batch failed while the purge stopped: %s", self.client.url, exc)

    def _write_batch(self, plan: Plan, ids: list[str], budget: int | None) -> tuple[int, int, Counter]:
        """The one write transaction of a batch that fits ``budget`` (:class:`TooHeavy`: it rolled back).

        Runs in the calling thread (a writer thread, with parallel batches), on its session connection.
        """
        tx = self._tx
        tx.budget = budget
        try:
            cascade = not self.dialect.batches_without_cascade
            try:
                return self.client.timed_write(lambda conn: self._delete_batch(conn, plan.copy(), ids), cascade,
                                               _deleted)
            except NotOwned:  # a ':' id: the one-statement cascade met another run's checkpoint; redo
                tx.checkpoints_first = True
                try:
                    return self.client.timed_write(lambda conn: self._delete_batch(conn, plan.copy(), ids),
                                                   cascade, _deleted)
                finally:
                    tx.checkpoints_first = False
        finally:
            tx.budget = None

    def _recheck(self, conn: Connection, plan: Plan, ids: list[str]) -> tuple[set[str], list[RunRef], list[RunRef]]:
        """Lock the runs and read them again: (changed, deletable, held) as of now.

        A run whose status or updated_at moved, or that is gone, has changed (with an archive, also a run whose
        rows differ from those the archive gathered: the engine added some since); it survives, and
        so does a child created since planning; their ancestors are held.
        """
        same = runs.unchanged(self.client, conn, [plan.nodes[i] for i in ids])
        if self.job.archive is not None and same:  # rows added since the archive gathered them: kept
            same -= self.job.archive.rows_differ(sql_archive.count_rows(self.client, conn, sorted(same)))
        changed = {i for i in ids if i not in same}
        survivors = set(changed)
        for parent, kids in runs.children(self.client, conn, ids).items():
            for kid in kids:
                if kid.run_id not in plan.nodes:  # a child created since planning holds its parent
                    survivors.add(kid.run_id)
                    plan.nodes[kid.run_id] = kid
                    plan.children.setdefault(parent, []).append(kid.run_id)
        deletable, held = plan.order(survivors=frozenset(survivors))
        return changed, deletable, held

    def _delete_batch(self, conn: Connection, plan: Plan, ids: list[str]) -> tuple[int, int, Counter]:
        """Lock, re-check, delete. Returns (changed, held, counts); retried as a whole on deadlock."""
        self.dialect.pin_plans(conn)
        changed, deletable, held = self._recheck(conn, plan, ids)
        return len(changed), len(held), self._cascade(conn, plan, deletable, dry_run=False)

    # -- a family with more rows than one transaction may delete ----------------------------

    def _heavy(self, plan: Plan, ids: list[str], announced: bool = False) -> None:
        """A family with more rows than one transaction may delete: its records first, then its rows.

        Where the dialect can delete run records without the engine's ON DELETE CASCADE firing
        (:attr:`~.dialect.Dialect.can_defer_cascade`), one short transaction locks and re-checks the
        runs, marks the deletable ones and deletes their records, leaves first: the commit point,
        after which the engine can no longer revive them. Bounded transactions then delete the
        marked runs' rows (:meth:`Markers.finish`). Elsewhere (PostgreSQL) the family goes in one
        transaction, reported when it took longer than the target.
        """
        job, client = self.job, self.client
        if not announced:
            job.boundary(ids)
        if not self.dialect.can_defer_cascade:
            started = time.perf_counter()
            changed, held, counts = self._write_batch(plan, ids, None)
            seconds = time.perf_counter() - started
            job.report.changed += changed
            job.report.held += held
            job.report.merge(counts)
            if seconds > client.transaction_target:
                job.report.warn(f"run {ids[0]!r}{f' and {len(ids) - 1} more' if len(ids) > 1 else ''}: "
                                f"{sum(counts.values())} rows deleted in one transaction of {seconds:.2f} s "
                                f"(target {client.transaction_target} s); this dialect cannot split a run's "
                                "deletion safely (see docs/backends/sql.md)")
            return
        client.ensure_markers()
        changed_ids, held_n, marked, counts = client.timed_write(
            lambda conn: self._commit_family(conn, plan.copy(), ids), cascade=False)
        job.report.changed += len(changed_ids)
        job.report.held += held_n
        job.report.merge(counts)
        if marked:
            self.markers.finish(marked)

    def _commit_family(self, conn: Connection, plan: Plan, ids: list[str]) -> tuple[set[str], int, list[str],
                                                                                   Counter]:
        """The commit point of a heavy family: (changed, held, marked run ids, counts).

        Runs in a transaction opened without the engine's cascade: the runs are locked and
        re-checked, each deletable one gets a marker row and loses its record, leaves first;
        its child rows stay for :meth:`Markers.finish`.
        """
        changed, deletable, held = self._recheck(conn, plan, ids)
        marked = [r.run_id for r in deletable]
        if not marked:
            return changed, len(held), [], Counter()
        self.markers.mark(conn, marked)
        return changed, len(held), marked, self._delete_runs(conn, plan, deletable, dry_run=False)

    # -- the cascade -------------------------------------------------------------------

    def _cascade(self, conn: Connection, plan: Plan, refs: list[RunRef], dry_run: bool) -> Counter:
        """Delete (or count) the runs' child rows, checkpoints, then the runs, leaves first."""
        if self.dialect.one_statement_cascade:
            return self._one_statement(conn, refs, dry_run)
        client, d = self.client, self.dialect
        counts: Counter = Counter()
        ids = [r.run_id for r in refs]
        if not ids:
            return counts
        for name, kind in RUN_CHILDREN:
            column = client.table(name).c.run_id
            for chunk in chunked(ids, d.id_chunk):
                counts[kind] += runs.apply(client, conn, name, d.among(column, chunk), dry_run)
        owned = runs.owned_checkpoints(client, conn, ids)
        if not dry_run:
            self._within_budget(sum(counts.values()) + len(owned) + len(ids))
        step_run_id = client.table("checkpoints").c.step_run_id
        for chunk in chunked(owned, d.id_chunk) if not dry_run else ():
            counts[Kind.CHECKPOINTS] += runs.apply(client, conn, "checkpoints", d.among(step_run_id, chunk), dry_run)
        if dry_run:
            counts[Kind.CHECKPOINTS] += len(owned)
        counts.update(self._delete_runs(conn, plan, refs, dry_run))
        return +counts

    def _one_statement(self, conn: Connection, refs: list[RunRef], dry_run: bool) -> Counter:
        """The whole cascade in one statement (one round trip): data-modifying CTEs, counted.

        The step checkpoints go by key range and come back from the statement; inside the same
        transaction :func:`~workflow_retention.planning.key_owners` must give every one of them
        to a run of the batch, else (a ``:`` id: ``a:b:s`` is the live run ``a:b``'s) the
        statement is undone (:class:`NotOwned`) and the batch redone reading its checkpoints first
        and deleting them by exact key. The parent reference is checked at the end of the
        statement (PostgreSQL), so runs and their children can go together; the explicit child
        deletes leave the engine's ON DELETE CASCADE nothing to do.
        """
        client, d = self.client, self.dialect
        ids = [r.run_id for r in refs]
        if not ids:
            return Counter()
        ids_sql, ids_value = d.id_array("ids", ids)
        among = f"run_id IN {ids_sql}"
        # (kind, table, WHERE) of each delete; a delete given whole instead: (kind, None, DELETE ... RETURNING key)
        parts: list[tuple[str, str | None, str]] = [(kind, table, among) for table, kind in RUN_CHILDREN]
        params: dict[str, Any] = {"ids": ids_value}
        by_range = not dry_run and not getattr(self._tx, "checkpoints_first", False) and client.has("checkpoints")
        if by_range:
            cp_delete, cp_params = d.checkpoint_delete(ids)
            params.update(cp_params)
            parts.append((Kind.CHECKPOINTS, None, cp_delete))
        else:
            keys = runs.owned_checkpoints(client, conn, ids)  # ownership decided in Python first
            if keys:
                keys_sql, params["keys"] = d.id_array("keys", keys)
                parts.append((Kind.CHECKPOINTS, "checkpoints", f"step_run_id IN {keys_sql}"))
        parts.append((Kind.RUNS, "workflow_runs", among))
        if dry_run:
            sql = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t} WHERE {w})" for _, t, w in parts)
        else:
            ctes = ", ".join(f"d{i} AS ({w if t is None else f'DELETE FROM {t} WHERE {w} RETURNING 1'})"
                             for i, (_, t, w) in enumerate(parts))
            selects = [f"(SELECT count(*) FROM d{i})" for i in range(len(parts))]
            if by_range:  # only a key with two ':' or more can belong to a run other than its first prefix
                selects.append(f"(SELECT array_agg(step_run_id) FROM d{len(parts) - 2} "
                               "WHERE strpos(substr(step_run_id, strpos(step_run_id, ':') + 1), ':') > 0)")
            sql = f"WITH {ctes} SELECT " + ", ".join(selects)
        row = conn.execute(text(sql), params).one()
        counts = +Counter({kind: n for (kind, _, _), n in zip(parts, row)})
        if by_range:
            nested = row[-1] or []  # every other key is "<id>:<step>" of a run of the batch: its own
            if nested and len(runs.owners_of(client, conn, nested, ids)) < len(nested):
                raise NotOwned(len(nested))
        if not dry_run:
            self._within_budget(sum(counts.values()))  # over it (its checkpoints): rolled back, records first
        return counts

    def _delete_runs(self, conn: Connection, plan: Plan, refs: list[RunRef], dry_run: bool) -> Counter:
        """Delete (or count) the run records, a level at a time, leaves first (MySQL checks the parent row by row)."""
        d = self.dialect
        counts: Counter = Counter()
        run_id = self.client.table("workflow_runs").c.run_id
        for level in heights(plan, refs):
            for chunk in chunked([r.run_id for r in level], d.id_chunk):
                counts[Kind.RUNS] += runs.apply(self.client, conn, "workflow_runs", d.among(run_id, chunk), dry_run)
        return counts

    def _within_budget(self, rows: int) -> None:
        """Raise :class:`TooHeavy` (the transaction rolls back) when a batch's transaction would delete more
        rows than its budget: only its step checkpoints, counted where they are read, can take it there."""
        budget = getattr(self._tx, "budget", None)
        if budget is not None and rows > budget:
            raise TooHeavy(rows)
