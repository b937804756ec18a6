"""The purge of runs: discovery, markers, commits, cascades, step checkpoints (the design: docs/backends/cassandra.md).

Soft-deleted schedules and stream data are :mod:`.streams`'s; the backend runs it after this.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from functools import partial

from workflow_retention.base import PurgeJob
from workflow_retention.planning import (
    Plan,
    RunRef,
    heights,
    is_safe_run_id,
    key_owners,
    key_prefixes,
    left_alone,
    plan_page,
)
from workflow_retention.policy import cutoff_text
from workflow_retention.report import Kind

from .archive import archive_checkpoints, archive_late_rows
from .cascade import Cascade
from .client import Cql, packed
from .layout import RECORD_COLUMNS, Row
from .markers import Markers
from .ring import resume_token, shard_range
from .runs import RunReader, run_ref
from .versioned import Versioned, stamp

#: Checkpoint deletes per UNLOGGED batch (one partition each).
CHECKPOINTS_PER_BATCH = 20
#: Run ids this purge committed (or finished for an earlier purge) kept in memory for the checkpoint pass
#: (about 5 MB); past that, the pass reads the markers instead.
OWN_IDS = 50_000


class Purge:
    """One purge of expired runs; :meth:`run` does it all."""

    def __init__(self, cql: Cql, job: PurgeJob) -> None:
        self.cql, self.job, self.report = cql, job, job.report
        self.reader = RunReader(cql, job.cutoff)
        self.markers = Markers(cql)
        self.cascade = Cascade(cql, job.report, job.dry_run,
                               partial(archive_late_rows, cql, job) if job.archive is not None else None)
        self.records = Versioned(cql, "records_in", "delete_run", "restore_run", RECORD_COLUMNS)
        self.cascaded = 0  # runs this purge cascaded (in a dry run: would cascade)
        self.known = 0  # runs of finished shard purges' markers (committed and cascaded by their shard)
        #: The runs this purge committed and cascaded (and those it finished for earlier purges), while at
        #: most OWN_IDS; None past that (the checkpoint pass then reads the markers).
        self.own: set[str] | None = set()

    def run(self) -> None:
        self.markers.open(create=not self.job.dry_run)
        if self.job.only is not None:  # explain: exactly these runs, read by id; their checkpoints counted
            self._batch(list(self.reader.refs(sorted(self.job.only)).values()))
            self.purge_checkpoints()
            return
        if self.job.partial:
            # A shard of several: its token range only. The other shards of its plan write their markers
            # meanwhile, so earlier markers (resume, drop) are the final pass's. The shard finishes its own
            # runs, and scans its token range of the checkpoints table once, against the runs any purge has
            # committed (what it cannot see, the final pass's scan of the whole table deletes); its segment
            # record, written last, tells the final pass that its markers need no re-cascade
            # (docs/backends/cassandra.md, "Shards").
            self.purge_runs()
            if not self.job.dry_run:
                self.segment_pass()
            return
        finished = self.markers.segments() if not self.job.dry_run else {}
        self.resume(finished)
        self.purge_runs()
        # Always the whole table, after every commit of the plan: a key the engine wrote for a run after that
        # run's segment was scanned, before another shard committed the run, is in no shard's scan.
        self.purge_checkpoints()
        if not self.job.dry_run:
            self.markers.drop_earlier()
            self.markers.drop_segments(finished)

    # -- runs committed by earlier purges: finish (or re-check) their cascades ------------------

    def resume(self, finished: Collection[str] = ()) -> None:
        """Cascade every run an earlier purge marked and committed (its record is gone).

        An interrupted purge leaves its committed runs' cascades unfinished; a
        finished one leaves nothing, unless the engine wrote to a run after its
        commit: either way this deletes what is left. A marked run whose record
        exists was never committed and is left alone. The runs of ``finished``
        shard purges (a segment record: every cascade of theirs is complete) are
        not cascaded again, only noted for the checkpoints.
        """
        for keys, done in self.markers.earlier_pages(self.job.batch_size, finished):
            self.known += len(done)
            self._own(done)
            for k in keys:
                if not is_safe_run_id(k.run_id):
                    left_alone(self.report, "purge marker", f"it names the run id {k.run_id!r}, not a safe identifier")
            keys = [k for k in keys if is_safe_run_id(k.run_id)]
            present = self.reader.present(k.run_id for k in keys)
            committed = [k for k in keys if k.run_id not in present]
            if committed:
                self.job.boundary([k.run_id for k in committed])
                self.cascade.run(committed)
                self.cascaded += len(committed)
                self._own(k.run_id for k in committed)

    # -- runs: a paged token scan of workflow_runs, then one plan per batch ------------------

    def purge_runs(self) -> None:
        """Page the shard's token range (the whole ring for the whole store) in token order, after the cursor.

        After each finished batch the token of its last candidate is the cursor (``job.finished``): a purge
        given it as ``resume_after`` scans ``token(run_id) > cursor`` and redoes none of those batches.
        """
        size = self.job.batch_size
        low, high = self.cql.token_space
        first, last = shard_range(self.job.shard, low, high)
        start = resume_token(self.job.resume_after, first, last)
        pending: list[tuple[RunRef, int]] = []
        for page in self.cql.pages("scan_runs_range", (start, last), size):
            pending += [(ref, row.run_token) for ref, row in ((run_ref(row), row) for row in page)
                        if ref.candidate(self.job.cutoff)]
            while len(pending) >= size:
                self._finish(pending[:size])
                pending = pending[size:]
        if pending:
            self._finish(pending)

    def _finish(self, batch: list[tuple[RunRef, int]]) -> None:
        self._batch([ref for ref, _ in batch])
        self.job.finished(str(batch[-1][1]))

    def _batch(self, candidates: list[RunRef]) -> None:
        # Pages are read ahead of the batches: a candidate may have gone since (with its parent's plan).
        current = self.reader.refs(r.run_id for r in candidates)
        page = []
        for ref in (current[r.run_id] for r in candidates if r.run_id in current):
            if ref.data.unreadable and ref.candidate(self.job.cutoff):
                left_alone(self.report, f"run {ref.run_id!r}", f"its {' and '.join(ref.data.unreadable)} cannot be "
                                                               "read (outside the datetime range)")
            else:
                page.append(ref)
        parents: dict[str, RunRef] = {}

        def parents_of(ids: set[str]) -> dict[str, RunRef]:
            parents.update(found := self.reader.refs(ids))
            return found

        plan = plan_page(page, self.job.cutoff, self.report, parents_of, self.reader.children_of)
        if plan is not None and self.job.partial:
            plan = self._own_families(plan, parents)
        if plan is not None:
            self._delete_plan(plan)

    def _own_families(self, plan: Plan, parents: dict[str, RunRef]) -> Plan | None:
        """A shard's plan without the roots whose (not eligible) parent lies in another shard's range.

        Those are the final pass's. Were this shard to plan such a run, and the other shard had read the
        parent eligible just before an engine write changed it, both would plan and count the run; the
        final pass plans it alone. A root with no parent, or a parent in this shard, is this shard's.
        """
        first, last = shard_range(self.job.shard, *self.cql.token_space)
        foreign = set()
        for root in plan.roots:
            parent = plan.nodes[root].parent_run_id
            if parent and parent in parents and not first < self.cql.token_of(parent) <= last:
                foreign.add(root)
        plan.forget(foreign)
        return plan if plan.roots else None

    def _delete_plan(self, plan: Plan) -> None:
        """Mark the deletable runs, then commit them children first, each wave's cascade right after it."""
        deletable, held = plan.order()
        if deletable:
            self.job.boundary([r.run_id for r in deletable])
        if self.job.dry_run or not deletable:
            self.report.add(Kind.RUNS, len(deletable))
            self.report.held += len(held)
            self.cascade.run([r.data for r in deletable])
            self.cascaded += len(deletable)
            return
        self.markers.write([r.data for r in deletable])
        survivors: set[str] = set()
        for wave in heights(plan, deletable):
            still = {r.run_id for r in plan.order(survivors)[0]}
            runs = [r for r in wave if r.run_id in still]
            if runs:
                survivors |= self._commit_wave(runs)
        _, held = plan.order(survivors)
        self.report.changed += len(survivors)
        self.report.held += len(held)

    def _commit_wave(self, runs: list[RunRef]) -> set[str]:
        """Commit one wave, cascade what was committed; return the runs left in place (their ancestors stay).

        Those are the runs that changed before their commit (they keep
        everything) and the runs written again after it (their record is put
        back, see :meth:`_delete_records`). A record written again only during
        the cascade is put back too, but the cascade has deleted what it read.
        """
        gone, kept, deleted = self._delete_records(runs)
        self.cascade.run([r.data for r in gone])
        self.cascaded += len(gone)
        late = self._put_back(deleted, "the data its purge had read was deleted")
        self.report.add(Kind.RUNS, len(set(deleted) - late))
        self._own(r.run_id for r in gone if r.run_id not in late)
        return kept | late

    def _own(self, run_ids: Iterable[str]) -> None:
        if self.own is not None:
            self.own.update(run_ids)
            if len(self.own) > OWN_IDS:
                self.own = None

    def _delete_records(self, runs: list[RunRef]) -> tuple[list[RunRef], set[str], dict[str, tuple[Row, int]]]:
        """The commit point: delete each record only in the version that was planned (:mod:`.versioned`).

        A record whose status or ``updated_at`` differs from the plan changed:
        it is kept whole. The others are deleted in the version re-read here, so
        an engine write landing after this check survives; a record written
        again meanwhile is put back as it was, beneath the engine's write, and
        keeps everything. Returns the runs whose record is gone (to cascade;
        one someone else deleted is cascaded, not counted), the runs left in
        place, and the records deleted (run_id -> (record, delete timestamp)).
        """
        records = self.records.read(r.run_id for r in runs)
        changed = {r.run_id for r in runs if r.run_id in records
                   and (records[r.run_id].status, records[r.run_id].updated_at) != (r.data.status, r.data.updated_ms)}
        for run_id in sorted(changed):
            self.report.warn(f"run {run_id!r} changed before its purge committed: all its data was kept")
        deleted = self.records.delete({k: row for k, row in records.items() if k not in changed})
        kept = self._put_back(deleted, "all its data was kept")
        return [r for r in runs if r.run_id not in changed | kept], changed | kept, deleted

    def _put_back(self, deleted: dict[str, tuple[Row, int]], outcome: str) -> set[str]:
        """Put back the deleted records the engine wrote again (a partial "ghost" record otherwise)."""
        rewritten = self.records.put_back(deleted)
        for run_id in sorted(rewritten):
            self.report.warn(f"run {run_id!r} was written by the engine while its purge committed: its record "
                             f"was put back as it was, under the engine's write; {outcome}")
            del deleted[run_id]
        return rewritten

    # -- step checkpoints: keyed <run_id>:<step_id>, so found by one scan per purge -----------

    def purge_checkpoints(self) -> None:
        """Delete the checkpoints of the runs this purge cascaded (in a dry run: would cascade), only those.

        A key ``<run_id>:<rest>`` belongs to the longest prefix that names a
        run, an existing one or one this purge committed (planning.key_owners);
        a checkpoint whose owner is neither is the orphan sweep's, with its grace.
        """
        if not self.cascaded and not self.known:
            return
        for page in self.cql.scan("scan_checkpoint_keys", self.job.batch_size):
            self._checkpoints({row.step_run_id: row for row in page if key_prefixes(row.step_run_id)})

    def _checkpoints(self, rows: dict[str, Row], marked: set[str] | None = None, by_key: bool = False) -> None:
        """Delete (count) those of ``rows`` whose owner this purge committed (``marked``: the marked runs among
        their prefixes, if known). The batch is named by its owners, or ``by_key`` by ``CHECKPOINT#<key>`` (a
        shard's segment: the owners are runs other batches, and other shards, committed and counted)."""
        doomed, marked = self._doomed_checkpoints(rows, marked) if rows else ({}, set())
        if not doomed:
            return
        self.job.boundary(sorted(f"CHECKPOINT#{k}" for k in doomed) if by_key else sorted(set(doomed.values())))
        if not self.job.dry_run:  # re-checked after on_batch (a marker, once read, stays until the end)
            doomed, _ = self._doomed_checkpoints({key: rows[key] for key in doomed}, marked)
            archive_checkpoints(self.cql, self.job, doomed)  # with an archive: verified before the delete
            self.cql.unlogged_batches(packed(([("delete_checkpoint", (stamp([rows[key]]), key))]
                                              for key in sorted(doomed)), CHECKPOINTS_PER_BATCH))
        self.report.add(Kind.CHECKPOINTS, len(doomed))

    # -- a sharded purge: each shard's part of the checkpoints table, the final pass's leftovers ---------

    def segment_pass(self) -> None:
        """A shard's scan of its token range of the checkpoints table (the shards' ranges cover the ring once).

        A checkpoint's key is ``<run_id>:<step_id>``, so its token is not its run's: the shard judges every key
        of its range against the runs any purge has committed so far (marked, record gone: their markers stay
        until the final pass) and deletes those, side by side with the other shards. What it cannot see (a key
        of a run another shard commits later, or one the engine writes after this scan) the final pass's scan
        of the whole table, after every commit, deletes. The segment record is written last: the final pass
        never cascades again the runs of a shard purge that wrote one.
        """
        first, last = shard_range(self.job.shard, *self.cql.token_space)
        for page in self.cql.pages("scan_checkpoint_range", (first, last), self.job.batch_size):
            rows = {row.step_run_id: row for row in page if key_prefixes(row.step_run_id)}
            if not rows:
                continue
            prefixes = {p for key in rows for p in key_prefixes(key)}
            gone = prefixes - set(self.reader.refs(prefixes))
            marked: set[str] = set()
            if gone:  # read after the runs: a run gone by then was marked before, by a purge learnt now
                self.markers.learn()
                marked = self.markers.marked(gone)
            if marked:
                self._checkpoints(rows, marked, by_key=True)
        self.markers.write_segment(self.job.shard.index, self.job.shard.count, cutoff_text(self.job.cutoff))

    def _doomed_checkpoints(self, rows: dict[str, Row], marked: set[str] | None = None
                            ) -> tuple[dict[str, str], set[str]]:
        """Checkpoint key -> owner for the keys whose owner this purge committed (or, dry, would delete).

        Also returns the marked runs among the keys' prefixes (``marked``: already known). The committed
        runs are this purge's own (held in memory up to OWN_IDS) or, past that, those its markers (and
        those of the earlier purges it finished) name; either way a committed owner's record must be
        gone when this reads it. Only prefixes at least as long as a key's shortest marked one can own
        it, so only those are read.
        """
        prefixes = {p for key in rows for p in key_prefixes(key)}
        if self.job.dry_run:
            refs = self.reader.refs(prefixes)
            if marked is None:
                marked = self.markers.marked(prefixes - set(refs))
        else:
            if marked is None:
                marked = prefixes & self.own if self.own is not None else self.markers.marked(prefixes)
            rows = {key: row for key, row in rows.items() if any(p in marked for p in key_prefixes(key))}
            refs = self.reader.refs({p for key in rows for p in _from_shortest_marked(key, marked)})
        committed = marked - set(refs)  # marked and gone
        named = set(refs) | committed
        owners = key_owners(rows, lambda ids: named & ids)
        goes = set(committed)
        if self.job.dry_run:
            goes |= self.reader.deletable(refs[o] for o in set(owners.values()) if o in refs)
        goes = self.job.within(goes)
        return {key: owner for key, owner in owners.items() if owner in goes}, marked


def _from_shortest_marked(key: str, marked: set[str]) -> list[str]:
    """The prefixes of ``key`` that can own it once one is committed: from its shortest marked prefix on."""
    prefixes = key_prefixes(key)
    first = next((n for n, p in enumerate(prefixes) if p in marked), len(prefixes))
    return prefixes[first:]
