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
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection

from workflow_retention.planning import (
    LIVE_STATUSES,
    Plan,
    RunRef,
    chunked,
    heights,
    key_owners,
    plan_page,
    split_plan,
)
from workflow_retention.report import Kind

if TYPE_CHECKING:
    from workflow_retention.base import PurgeJob

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
        with self.translated("purge"), self.session():
            cursor: tuple[Any, str] | None = None
            while True:
                with self.read() as conn:
                    rows = conn.execute(self._candidates(job, cursor, window)).all()
                    plan = self._plan(conn, job, rows) if rows else None
                if not rows:
                    break
                cursor = (rows[-1].created_at, rows[-1].run_id)
                for batch in split_plan(plan, job.batch_size) if plan is not None else ():
                    self._purge_batch(job, batch)
                if len(rows) < window:
                    break
            self._purge_aux(job)

    # -- selection (read transaction) -----------------------------------------------

    def _candidates(self, job: PurgeJob, cursor: tuple[Any, str] | None, limit: int) -> Any:
        runs = self.table("workflow_runs")
        parent = runs.alias("parent")
        r, p = runs.c, parent.c
        stmt = select(r.run_id, r.status, r.updated_at, r.parent_run_id, r.created_at, p.run_id.label("p_run_id"),
                      p.status.label("p_status"), p.updated_at.label("p_updated_at"))
        stmt = stmt.select_from(runs.outerjoin(parent, p.run_id == r.parent_run_id)).where(
            self.before(r.created_at, job.cutoff), self.exact(r.status).not_in(sorted(LIVE_STATUSES)))
        if self.exact_time:  # unreadable values cannot exist in a typed column; NULL is reported
            stmt = stmt.where((r.updated_at < self.db_time(job.cutoff)) | r.updated_at.is_(None))
        if cursor is not None:
            stmt = stmt.where(self.after((r.created_at, r.run_id), cursor))
        return self.candidate_hint(stmt).order_by(r.created_at, r.run_id).limit(limit)

    def candidate_hint(self, stmt: Any) -> Any:
        return stmt

    def _plan(self, conn: Connection, job: PurgeJob, rows: Sequence[Any]) -> Plan | None:
        cutoff = job.cutoff
        refs = [RunRef.parse(row.run_id, row.status, row.updated_at, row.parent_run_id) for row in rows]
        parents = {row.parent_run_id: RunRef.parse(row.p_run_id, row.p_status, row.p_updated_at)
                   for row in rows if row.p_run_id is not None}
        return plan_page([r for r in refs if r.candidate(cutoff)], cutoff, job.report,
                         lambda ids: parents, lambda ids: self._children(conn, ids))

    def _refs(self, conn: Connection, run_ids: Sequence[str], lock: bool = False) -> dict[str, RunRef]:
        r = self.table("workflow_runs").c
        found: dict[str, RunRef] = {}
        for chunk in chunked(sorted(run_ids), self.id_chunk):
            stmt = select(r.run_id, r.status, r.updated_at, r.parent_run_id).where(self.among(r.run_id, chunk))
            if lock:
                stmt = self.lock(stmt.order_by(r.run_id))
            for row in conn.execute(stmt):
                found[row.run_id] = RunRef.parse(row.run_id, row.status, row.updated_at, row.parent_run_id)
        return found

    def _children(self, conn: Connection, parent_ids: Iterable[str]) -> dict[str, list[RunRef]]:
        r = self.table("workflow_runs").c
        found: dict[str, list[RunRef]] = {}
        for chunk in chunked(sorted(parent_ids), self.id_chunk):
            stmt = select(r.run_id, r.status, r.updated_at, r.parent_run_id).where(self.among(r.parent_run_id, chunk))
            for row in conn.execute(stmt):
                ref = RunRef.parse(row.run_id, row.status, row.updated_at, row.parent_run_id)
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
