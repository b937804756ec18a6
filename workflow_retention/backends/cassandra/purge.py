"""The purge on Cassandra: discovery, the per-run cascade, step checkpoints, schedules and streams."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from workflow_retention.backends.cassandra.cql import SCHEDULE_STATUSES
from workflow_retention.backends.cassandra.runs import RunReader, checkpoint_owner, date_buckets, hour_buckets, run_ref
from workflow_retention.backends.cassandra.session import Cql
from workflow_retention.base import PurgeJob
from workflow_retention.planning import (
    RUN_STATUSES,
    TERMINAL_SUBSCRIPTIONS,
    Plan,
    RunRef,
    heights,
    key_prefixes,
    plan_page,
)
from workflow_retention.report import Kind
from workflow_retention.timeutil import older


class Purger:
    def __init__(self, cql: Cql, job: PurgeJob) -> None:
        self.cql, self.job, self.report = cql, job, job.report
        self.reader = RunReader(cql, job.cutoff)

    def run(self) -> None:
        self.purge_runs()
        self.purge_checkpoints()
        self.purge_schedules()
        self.purge_streams()

    # -- runs: a paged token scan of workflow_runs, then one plan per batch ------------------

    def purge_runs(self) -> None:
        size, pending = self.job.batch_size, []
        for page in self.cql.scan("scan_runs", size):
            pending += [ref for ref in map(run_ref, page) if ref.candidate(self.job.cutoff)]
            while len(pending) >= size:
                self._batch(pending[:size])
                pending = pending[size:]
        if pending:
            self._batch(pending)

    def _batch(self, candidates: list[RunRef]) -> None:
        # Pages are read ahead of the batches: a candidate may have gone since (with its parent's plan).
        current = self.reader.refs(r.run_id for r in candidates)
        self.reader.parents_with_rows = set()
        plan = plan_page([current[r.run_id] for r in candidates if r.run_id in current], self.job.cutoff,
                         self.report, self.reader.refs, self.reader.children_of)
        if plan is not None:
            self._delete_plan(plan)

    def _delete_plan(self, plan: Plan) -> None:
        deletable, held = plan.order()
        if not deletable:
            self.report.held += len(held)
            return
        self.job.boundary([r.run_id for r in deletable])
        fresh = self.reader.refs(r.run_id for r in deletable)
        plan.forget({r.run_id for r in deletable} - set(fresh))  # deleted meanwhile: nothing left to do
        survivors = {r.run_id for r in deletable if r.run_id in fresh and not r.same_version(fresh[r.run_id])}
        for wave in heights(plan, [r for r in deletable if r.run_id in fresh]):
            still = {r.run_id for r in plan.order(survivors)[0]}
            runs = [fresh[r.run_id] for r in wave if r.run_id in still]
            if runs:
                self._cascade(runs)
                survivors |= self._delete_records(runs)
        _, held = plan.order(survivors)
        self.report.changed += len(survivors)
        self.report.held += len(held)

    def _cascade(self, runs: list[RunRef]) -> None:
        """Count, then delete, everything of ``runs`` but their records: lookup and index rows first."""
        cql, ids = self.cql, {r.run_id for r in runs}
        own = cql.reads_in({"events_in": ids, "steps_in": ids, "hooks_in": ids, "flags_in": ids,
                            "idempotency_in": [r.data.idempotency_key for r in runs if r.data.idempotency_key]})
        events, steps, hooks, flags = (own[n] for n in ("events_in", "steps_in", "hooks_in", "flags_in"))
        lookups = cql.reads_in({"steps_by_id_in": {s.step_id for s in steps},
                                "hooks_by_id_in": {h.hook_id for h in hooks},
                                "tokens_in": {h.token for h in hooks if h.token}})
        pointers = [("delete_idempotency_if", Kind.IDEMPOTENCY_KEYS, own["idempotency_in"]),
                    ("delete_step_by_id_if", Kind.INDEX_ENTRIES, lookups["steps_by_id_in"]),
                    ("delete_hook_by_id_if", Kind.INDEX_ENTRIES, lookups["hooks_by_id_in"])]
        tokens = [t.token for t in lookups["tokens_in"] if t.run_id in ids]
        for kind, rows in ((Kind.EVENTS, events), (Kind.STEPS, steps), (Kind.HOOKS, hooks),
                           (Kind.CANCELLATION_FLAGS, flags), (Kind.HOOK_TOKENS, tokens)):
            self.report.add(kind, len(rows))
        conditional = [(name, kind, (row[0], row.run_id)) for name, kind, rows in pointers
                       for row in rows if row.run_id in ids]
        if self.job.dry_run:
            self.report.merge(Counter(kind for _, kind, _ in conditional))
            return
        results = cql.concurrent([(name, params) for name, _, params in conditional])
        self.report.merge(Counter(kind for (_, kind, _), res in zip(conditional, results) if res.was_applied))
        cql.delete_in("delete_tokens_in", tokens)
        cql.unlogged_batches([_index_deletes(r.data) for r in runs])
        ordered = sorted(ids)
        cql.deletes_in({"delete_events_in": ordered, "delete_steps_in": ordered, "delete_hooks_in": ordered,
                        "delete_flags_in": ordered,
                        "delete_children_in": sorted(ids & self.reader.parents_with_rows)})

    def _delete_records(self, runs: list[RunRef]) -> set[str]:
        """The commit point: each run record goes only if still as selected (a lightweight transaction)."""
        if self.job.dry_run:
            self.report.add(Kind.RUNS, len(runs))
            return set()
        applied = self.cql.conditional("delete_run_if", [(r.run_id, r.data.status, r.data.updated_at) for r in runs])
        failed = {r.run_id for r, ok in zip(runs, applied) if not ok}
        for run_id in sorted(failed):
            self.report.warn(f"run {run_id!r} changed while its data was being deleted: its record was kept")
        self.report.add(Kind.RUNS, len(runs) - len(failed))
        return failed

    # -- step checkpoints: keyed <run_id>:<step_id>, so found by one scan per purge -----------

    def purge_checkpoints(self) -> None:
        """Delete checkpoints whose run is gone (a dry run: gone or about to go)."""
        for page in self.cql.scan("scan_checkpoint_keys", self.job.batch_size):
            owners = {row.step_run_id: owner for row in page if (owner := checkpoint_owner(row.step_run_id))}
            if not owners:
                continue
            refs = self.reader.refs({p for key in owners for p in key_prefixes(key)})
            doomed_runs = self.reader.deletable(refs.values()) if self.job.dry_run else set()
            doomed = [key for key, owner in owners.items() if (owner not in refs or owner in doomed_runs)
                      and not any(p in refs for p in key_prefixes(key)[1:])]
            if not doomed:
                continue
            self.job.boundary(sorted({owners[key] for key in doomed}))
            if not self.job.dry_run:
                present = self.reader.present({p for key in doomed for p in key_prefixes(key)})
                doomed = [key for key in doomed if not any(p in present for p in key_prefixes(key))]
                self.cql.delete_in("delete_checkpoints_in", doomed)
            self.report.add(Kind.CHECKPOINTS, len(doomed))

    # -- the baseline's other sweeps --------------------------------------------------------

    def purge_schedules(self) -> None:
        """Soft-deleted schedules (partition ``deleted`` of schedules_by_status) not updated since the cutoff."""
        for page in self.cql.pages("schedules_by_status", ("deleted",), self.job.batch_size):
            ids = [row.schedule_id for row in page]
            rows = {row.schedule_id: row for row in self.cql.rows_in("schedules_in", ids)}
            expired = [rows[i] for i in ids if i in rows and rows[i].status == "deleted"
                       and older(rows[i].updated_at, self.job.cutoff)]
            dangling = [i for i in ids if i not in rows]  # left by an interrupted purge
            if not expired and not dangling:
                continue
            self.job.boundary([s.schedule_id for s in expired] + dangling)
            self.report.add(Kind.INDEX_ENTRIES, len(dangling))
            if self.job.dry_run:
                self.report.add(Kind.SCHEDULES, len(expired))
                continue
            self.cql.concurrent(
                [("delete_due_schedule", (hour_buckets(s.next_run_time), s.next_run_time, s.schedule_id))
                 for s in expired if s.next_run_time]
                + [("delete_schedule_by_workflow", (s.workflow_name, s.schedule_id))
                   for s in expired if s.workflow_name])
            applied = self.cql.conditional("delete_schedule_if",
                                           [(s.schedule_id, s.status, s.updated_at) for s in expired])
            gone = [s.schedule_id for s, ok in zip(expired, applied) if ok]
            self.report.add(Kind.SCHEDULES, len(gone))
            self.cql.concurrent([("delete_schedule_by_status", (list(SCHEDULE_STATUSES), sid))
                                 for sid in gone + dangling])

    def purge_streams(self) -> None:
        """Signals published before the cutoff (with their acknowledgments), old terminal subscriptions."""
        size, cutoff = self.job.batch_size, self.job.cutoff
        for page in self.cql.scan("scan_signals", size):
            old = [r for r in page if older(r.published_at, cutoff)]
            if old:
                self.job.boundary([r.signal_id or f"{r.stream_id}:{r.sequence}" for r in old])
                signal_ids = [r.signal_id for r in old if r.signal_id]
                self.report.add(Kind.ACKNOWLEDGMENTS, len(self.cql.rows_in("acks_in", signal_ids)))
                self.report.add(Kind.SIGNALS, len(old))
                if not self.job.dry_run:
                    self.cql.delete_in("delete_acks_in", signal_ids)
                    self.cql.concurrent([("delete_signal", (r.stream_id, r.stream_run_id, r.sequence)) for r in old])
        for page in self.cql.scan("scan_subscriptions", size):
            old = [r for r in page if r.status in TERMINAL_SUBSCRIPTIONS and older(r.created_at, cutoff)]
            if old:
                self.job.boundary([f"{r.stream_id}:{r.step_run_id}" for r in old])
                self.report.add(Kind.SUBSCRIPTIONS, len(old))
                if not self.job.dry_run:
                    self.cql.concurrent([("delete_subscription", (r.stream_id, r.step_run_id)) for r in old])


def _index_deletes(row: Any) -> list[tuple[str, tuple[Any, ...]]]:
    """The run's listing-index rows, under every status and date bucket it may have been filed under."""
    if row.created_at is None:  # a clustering column: no index row can exist without it
        return []
    buckets = date_buckets(row.created_at)
    statuses = dict.fromkeys([*sorted(RUN_STATUSES), *([row.status] if row.status else [])])
    items: list[tuple[str, tuple[Any, ...]]] = [
        ("delete_status_rows", (status, buckets, row.created_at, row.run_id)) for status in statuses]
    if row.workflow_name:
        items.append(("delete_workflow_rows", (row.workflow_name, buckets, row.created_at, row.run_id)))
    if row.parent_run_id:
        items.append(("delete_parent_row", (row.parent_run_id, row.created_at, row.run_id)))
    return items
