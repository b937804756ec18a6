"""The SQL purge: candidate windows, batches in run_id order, one short locking transaction per batch.

Discovery: there is no index on ``updated_at``; since ``updated_at >=
created_at``, ``created_at < cutoff`` bounds the candidates and
``idx_runs_created_at_run_id`` serves a keyset scan on ``(created_at,
run_id)``. Each page (a window of ``window_batches`` batches) is read in
its own short read transaction; expiry is then decided exactly in Python
(:class:`RunRef`), which is what makes SQLite's offset-carrying text
timestamps safe. The window is planned as a whole and cut into batches in
run_id order (:func:`split_plan`), so each batch's deletes stay in a narrow
slice of the run_id-led indexes.

Live engine: after ``on_batch`` (called with no transaction open) the batch's
runs are locked (``SELECT ... FOR UPDATE``; SQLite: ``BEGIN IMMEDIATE``) and
re-read; a run whose status or ``updated_at`` moved, or that gained a child
meanwhile, survives with its ancestors. Within the same transaction the
child tables are deleted explicitly (so each kind is counted; SQLite only
cascades with its per-connection pragma anyway), then the runs level by
level, leaves first, because MySQL checks the parent reference row by row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection

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
    from workflow_retention.base import PurgeJob

#: The second discovery range starts this far past now (or the cutoff, if later): see _purge.
FUTURE_MARGIN = timedelta(days=1)
#: Typed timestamp columns: values from here on may not load into a Python datetime (year 10000,
#: infinity); such a run is a candidate so that it is reported.
LAST_LOADABLE = datetime(9999, 12, 31, tzinfo=UTC)
#: RunRef.data of a run whose created_at cannot be read.
UNREADABLE_CREATED_AT = "created_at"

#: Child tables of a run, keyed by ``run_id``, in deletion order, with their report kind.
RUN_CHILDREN = (("events", Kind.EVENTS), ("steps", Kind.STEPS), ("hooks", Kind.HOOKS),
                ("cancellation_flags", Kind.CANCELLATION_FLAGS))


class PurgeMixin:
    """``_purge`` for :class:`~workflow_retention.backends.sql.base.SQLBackend`."""

    #: Candidates are read in windows of this many batches and each window is cut into batches
    #: in run_id order: every index the cascade deletes from leads with run_id, so a batch then
    #: rewrites a narrow slice of each index instead of pages spread over all of it.
    window_batches: int = 8

    def _purge(self, job: PurgeJob) -> None:
        window = job.batch_size * self.window_batches
        # created_at < cutoff holds every expired run (updated_at >= created_at); created_at in the
        # future holds what sorts after every real timestamp (unreadable text, infinity), so that
        # such a run is reported instead of never being seen.
        future = max(job.report.started_at or utcnow(), job.cutoff) + FUTURE_MARGIN
        with self.translated("purge"), self.session():
            for created in (self.before(self.table("workflow_runs").c.created_at, job.cutoff),
                            self.not_before(self.table("workflow_runs").c.created_at, future)):
                self._purge_range(job, created, window)
            self._purge_aux(job)

    def _purge_range(self, job: PurgeJob, created: Any, window: int) -> None:
        """Keyset pages of ``window`` candidates whose created_at is in ``created``, each planned and purged."""
        cursor: tuple[Any, str] | None = None
        while True:
            with self.read() as conn:
                rows = conn.execute(self._candidates(job, created, cursor, window)).all()
                plan = self._plan(conn, job, rows) if rows else None
            if not rows:
                return
            cursor = (rows[-1].created_at, rows[-1].run_id)
            for batch in split_plan(plan, job.batch_size) if plan is not None else ():
                self._purge_batch(job, batch)
            if len(rows) < window:
                return

    # -- selection (read transaction) -----------------------------------------------

    def _candidates(self, job: PurgeJob, created: Any, cursor: tuple[Any, str] | None, limit: int) -> Any:
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
            stmt = stmt.where(self.after((r.created_at, r.run_id), cursor))
        return self.candidate_hint(stmt).order_by(r.created_at, r.run_id).limit(limit)

    def candidate_hint(self, stmt: Any) -> Any:
        return stmt

    def _ref(self, run_id: str, status: Any, updated_at: Any, parent_run_id: str | None, created_at: Any) -> RunRef:
        """A run as plans see it: one whose created_at cannot be read is, like one whose updated_at
        cannot, never eligible (``data`` says which)."""
        ref = RunRef.parse(run_id, status, updated_at, parent_run_id)
        try:
            parse_timestamp(created_at)
        except (TypeError, ValueError):
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
            need = {nodes[i].parent_run_id for i in todo} - nodes.keys() - asked - {None}
            asked |= need
            found = self._refs(conn, sorted(need)) if need else {}  # type: ignore[arg-type]
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

    def _purge_batch(self, job: PurgeJob, plan: Plan) -> None:
        deletable, held = plan.order()
        if not deletable:
            job.report.held += len(held)
            return
        job.boundary([r.run_id for r in deletable])
        if job.dry_run:
            with self.read() as conn:
                counts = self._cascade(conn, plan, deletable, dry_run=True)
            job.report.held += len(held)
            job.report.merge(counts)
            return
        ids = [r.run_id for r in deletable]
        changed, held_now, counts = self.write(lambda conn: self._delete_batch(conn, plan.copy(), ids))
        job.report.changed += changed
        job.report.held += held_now
        job.report.merge(counts)

    def _delete_batch(self, conn: Connection, plan: Plan, ids: list[str]) -> tuple[int, int, Counter]:
        """Lock, re-check, delete. Returns (changed, held, counts); retried as a whole on deadlock."""
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
        return len(changed), len(held), self._cascade(conn, plan, deletable, dry_run=False)

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
        step_run_id = self.table("checkpoints").c.step_run_id
        owned = self._owned_checkpoints(conn, ids)
        for chunk in chunked(owned, self.id_chunk) if not dry_run else ():
            counts[Kind.CHECKPOINTS] += self._apply(conn, "checkpoints", self.among(step_run_id, chunk), dry_run)
        if dry_run:
            counts[Kind.CHECKPOINTS] += len(owned)
        run_id = self.table("workflow_runs").c.run_id
        for level in heights(plan, runs):
            for chunk in chunked([r.run_id for r in level], self.id_chunk):
                counts[Kind.RUNS] += self._apply(conn, "workflow_runs", self.among(run_id, chunk), dry_run)
        return +counts

    def _owned_checkpoints(self, conn: Connection, run_ids: Sequence[str]) -> list[str]:
        """The keys of the step checkpoints that belong to ``run_ids`` (all existing runs).

        The checkpoints whose key starts with ``<run_id>:`` are read (a primary-key range or
        an escaped LIKE per run); each belongs to its longest prefix that names an existing run
        (:func:`key_owners`), which is one of ``run_ids`` only if no longer prefix is a run: the
        checkpoint ``a:b:s`` of a run ``a:b`` is not ``a``'s. Only keys with more than one ``:``
        cost an existence lookup.
        """
        cp = self.table("checkpoints").c
        keys: set[str] = set()
        for chunk in chunked(run_ids, self.checkpoint_chunk):
            where, params = self.checkpoint_match(chunk)
            keys.update(conn.execute(select(cp.step_run_id).where(where), params).scalars())
        if not keys:
            return []
        batch = set(run_ids)

        def existing(prefixes: set[str]) -> set[str]:
            return (prefixes & batch) | self._existing(conn, prefixes - batch)

        mine = {self.id_fold(r) for r in run_ids}
        return sorted(k for k, owner in key_owners(keys, existing).items()
                      if owner is not None and self.id_fold(owner) in mine)

    def _existing(self, conn: Connection, run_ids: Collection[str]) -> set[str]:
        """Those of ``run_ids`` that name a run record, whatever its status (ids compared as the store does)."""
        if not run_ids:
            return set()
        r = self.table("workflow_runs").c
        stored: set[str] = set()
        for chunk in chunked(sorted(run_ids), self.id_chunk):
            stored.update(self.id_fold(v) for v in conn.execute(select(r.run_id).where(self.among(r.run_id, chunk)))
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
            self.run_sweep(job, sweep)
            job.report.skipped += sweep.skipped
