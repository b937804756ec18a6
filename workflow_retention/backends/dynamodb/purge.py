"""One purge of a pyworkflow DynamoDB table: selection, commit, cascade, and the one Scan's checkpoints.

The design (discovery on GSI1 and its gaps, markers and the conditional delete that commits a run, the
cascade, the one Scan, ghosts) is in docs/backends/dynamodb.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any
from uuid import uuid4

from workflow_retention.archiving import record_value
from workflow_retention.base import PurgeJob
from workflow_retention.planning import (
    TERMINAL_STATUSES,
    Plan,
    Reporter,
    RunRef,
    chunked,
    heights,
    key_owners,
    key_prefixes,
    plan_deletion,
    plan_page,
)
from workflow_retention.policy import cutoff_text
from workflow_retention.report import Kind

from . import expr, segments
from .archive import ITEMS, archive_checkpoints, item_key
from .client import IN_VALUES, SCAN_PAGE, Table
from .layout import (
    COUNTER_SK,
    RUN_SK,
    SCANNED_PREFIXES,
    Item,
    checkpoint_key,
    flag_key,
    gsi1_gaps,
    in_status_range,
    key,
    key_of,
    leave,
    run_key,
    s,
    text,
)
from .markers import Marker, Markers, Segments, outdated, seen_of
from .runs import RUN_FIELDS, children_of, get_runs, run_ref, version
from .streams import STREAM_FIELDS, ScheduleSweep, old_stream_items

log = logging.getLogger("workflow_retention.dynamodb")

HOOK_FIELDS = ("PK", "SK", "token", "run_id")
COMMITTED = ("deleted", "gone")  # outcomes after which the run item is gone
TIME_SLACK = timedelta(hours=14)  # the largest UTC offset a GSI1SK timestamp can carry
PARTITION_PAGE = 1000  # items per page of a partition read (50 runs)
OWN_IDS = 50_000  # run ids of its own markers a purge keeps in memory (about 5 MB) for the Scan's join
WAITING = 10_000  # other purges' markers a purge notes to re-check at its end (their keys only)
SCAN_FIELDS = ("PK", "SK", *STREAM_FIELDS)
JOIN_ITEMS = 600  # Scan items joined at once (several pages; memory: these and one page per segment)


class Ghosts:
    """Run records found again in a run's partition after its commit, collected on the worker threads.

    pyworkflow's ``update_item`` calls upsert: an engine write that lands on a
    run after its conditional delete re-creates a partial record (no
    ``workflow_name``: pyworkflow's ``get_run`` cannot read it). It is kept and
    reported, never deleted: retention cannot tell what the engine meant.
    """

    def __init__(self) -> None:
        self.found: list[Item] = []
        self.lock = threading.Lock()

    def add(self, item: Item) -> None:
        with self.lock:
            self.found.append(item)

    def report(self, report: Reporter) -> None:
        with self.lock:
            found, self.found = self.found, []
        for item in found:
            leave(report, item, "the engine wrote this run's record again after this purge deleted it (a "
                                "partial 'ghost' record pyworkflow cannot read); what the cascade had not "
                                "reached stays with it")


class Purge:
    """One purge: resume unfinished cascades, then batches (plan, commit, cascade), the one Scan, schedules."""

    def __init__(self, table: Table, job: PurgeJob) -> None:
        self.table, self.job, self.report = table, job, job.report
        self.cutoff, self.dry = job.cutoff, job.dry_run
        self.purge_id = uuid4().hex
        self.markers = Markers(table, self.purge_id, job.batch_size)
        self.page = max(job.batch_size, SCAN_PAGE)
        self.cascaded = 0  # runs whose cascade this purge ran (or, in a dry run, would run)
        self.ghosts = Ghosts()
        # The live-engine windows of the batch being committed: (longest read to commit, first commit, runs).
        self.committing: tuple[float, float, int] | None = None
        # Runs this purge committed or claimed (their markers are its own; a dry run: those it would claim), for
        # the Scan's join, up to OWN_IDS; past that (``spilled``) its markers are per-run, read by the join.
        self.own: set[str] = set()
        self.spilled = False
        # Other purges' markers naming runs that awaited a commit when resume read them, re-checked at the end.
        self.waiting: list[Item] = []
        # The bulk delete running behind the purge (defer/settle), with the live-engine window it closes.
        self.background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dynamodb-retention-bulk")
        self.pending: tuple[Future[None], tuple[float, float, int] | None] | None = None
        # Archive writes of the cascade's worker threads, one at a time (archive_unarchived).
        self.archiving = threading.Lock()
        # A sharded purge (docs/backends/dynamodb.md, "Shards"): a shard's runs found gone at their commit (another
        # purge's to cascade); the final pass's view of the finished shards' segments, whether they cover the
        # table's checkpoints under its cutoff, the finished shards' markers it drops, and the runs they name.
        self.gone_at_commit: set[str] = set()
        self.segments = Segments()
        self.finished: list[Marker] = []
        self.known = 0

    def run(self) -> None:
        """The purge: a shard's (:meth:`run_shard`), or the whole store's with its Scan and schedule sweep."""
        if self.job.partial:
            self.run_shard()
            return
        if not self.dry and self.job.only is None:
            self.segments = self.markers.segments()
        try:
            if self.job.only is None:
                self.resume()
            for page in chunked(self.candidates(), self.job.batch_size):
                self.batch(page)
            self.settle()
            self.scan()  # the whole table, after every commit: see segment_pass
            self.settle()
        except BaseException:
            self.settle(quiet=True)  # nothing keeps writing after the error is raised
            raise
        finally:
            self.background.shutdown(wait=True)
        if not self.dry:
            self.finish_waiting()
            self.markers.drop_own()
            self.drop_finished()
        if self.job.sweeps:
            ScheduleSweep(self.table, self.job).run()

    def candidates(self) -> Iterator[RunRef]:
        """:meth:`expired_runs`, or for explain (``job.only``) exactly those runs, read by id."""
        if self.job.only is None:
            return self.expired_runs()
        found = get_runs(self.table, self.job.only)
        return (ref for ref in found.values() if ref.candidate(self.cutoff))

    def run_shard(self) -> None:
        """A shard of several: its Scan segment of GSI1, one batch per page, the cursor after each.

        Each page (``Limit`` = the batch size) is screened, planned, committed and cascaded by the same code as
        a whole-store purge's batch; its bulk deletes are waited for, then ``job.finished`` gets the page's
        ``LastEvaluatedKey``. What a shard leaves to the final pass (a whole-store purge run after every shard):
        the markers of its committed runs, whose checkpoints only a Scan of the whole table can find (the final
        pass's :meth:`resume` claims them, finds their cascade done, and its one Scan deletes their checkpoints),
        the schedule and stream sweeps, and every parent it kept. No marker is claimed or dropped here: other
        shards of the plan may be between their commits and their cascades.
        """
        try:
            for page, cursor in self.segment_pages():
                self.batch(page)
                self.settle()
                self.markers.own.clear()  # a shard's markers stay (for the final pass): forget their keys
                self.job.finished(cursor)
            if not self.dry:
                self.segment_pass()
        except BaseException:
            self.settle(quiet=True)
            raise
        finally:
            self.background.shutdown(wait=True)

    def segment_pages(self) -> Iterator[tuple[list[RunRef], str]]:
        """The shard's candidates, one Scan page of GSI1 (``GSI1PK = RUNS``) at a time, with the cursor after it.

        Every run record in the segment is read (the Scan cannot range on GSI1SK); ``RunRef.candidate`` keeps the
        expired ones and those to report, as the status ranges and gaps of :meth:`expired_runs` do together.
        """
        shard = self.job.shard
        number, total = segments.segment_of(shard)
        done, start = segments.start_of(shard, self.job.resume_after)
        if done:
            return
        params = expr.scan_equal("GSI1PK", "RUNS", index=segments.INDEX, fields=RUN_FIELDS,
                                 limit=self.job.batch_size)
        params.update(Segment=number, TotalSegments=total)
        while True:
            if start:
                params["ExclusiveStartKey"] = start
            response = self.table.call("scan", **params)
            start = response.get("LastEvaluatedKey") or None
            refs = [ref for ref in map(run_ref, response.get("Items", [])) if ref.candidate(self.cutoff)]
            yield refs, segments.cursor(shard, start)
            if start is None:
                return

    # -- the bulk deletes of committed runs, one step behind ---------------------------

    def defer(self, keys: list[Item], window: tuple[float, float, int] | None = None) -> None:
        """Delete ``keys`` (items of committed runs only) in the background while the purge reads on.

        At most one such step is pending: the previous one is waited for first, so memory holds two
        batches' keys. ``settle`` waits for it before the Scan and before markers are dropped.
        """
        self.settle()
        self.pending = (self.background.submit(self.table.delete_many, keys), window)

    def settle(self, *, quiet: bool = False) -> None:
        """Wait for the pending bulk delete; raise its error (``quiet``: the purge is failing already)."""
        if self.pending is None:
            return
        future, window = self.pending
        self.pending = None
        try:
            future.result()
        except BaseException:
            if not quiet:
                raise
            log.debug("dynamodb purge: a pending bulk delete failed too", exc_info=True)
            return
        if window is not None:  # how long the batch left a live engine to write to its runs
            read_to_commit, first_commit, deleted = window
            log.debug("dynamodb purge batch: %d runs committed; read to commit <= %.3fs, first commit to "
                      "cascade end %.3fs", deleted, read_to_commit, time.monotonic() - first_commit)

    # -- selection ------------------------------------------------------------------

    def expired_runs(self) -> Iterator[RunRef]:
        """Candidates (``RunRef.candidate``) streamed from GSI1: the status ranges, then the gaps between them.

        GSI1SK holds ``<status>#<timestamp>`` with the writer's UTC offset, and
        that timestamp is never later than ``updated_at``; so every expired run
        sorts below ``<status>#<cutoff + 14 h>``. ``updated_at`` decides. The
        gaps hold what pyworkflow never writes (``COMPLETED``, ``done``, a tail
        that is no timestamp): one Query each, a single request when empty;
        their runs are screened by the shared rule like any other.
        """
        high = (self.cutoff + TIME_SLACK + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S")
        for status in sorted(TERMINAL_STATUSES):
            yield from self.gsi1(RUN_FIELDS, sk_between=("GSI1SK", f"{status}#", f"{status}#{high}"))
        for gap in gsi1_gaps():
            yield from self.gsi1((*RUN_FIELDS, "GSI1SK"), lambda item: not in_status_range(text(item, "GSI1SK")),
                                 **gap)

    def gsi1(self, fields: tuple[str, ...], keep: Callable[[Item], bool] = lambda item: True,
             **key_range: Any) -> Iterator[RunRef]:
        """The candidates among the run records of one GSI1SK range (``keep``: which items to look at)."""
        params = expr.query("GSI1PK", "RUNS", index="GSI1", fields=fields, limit=self.job.batch_size, **key_range)
        for page in self.table.pages("query", **params):
            yield from (ref for ref in map(run_ref, filter(keep, page)) if ref.candidate(self.cutoff))

    def batch(self, page: list[RunRef]) -> None:
        plan = plan_page(page, self.cutoff, self.report, lambda ids: get_runs(self.table, ids),
                         lambda ids: children_of(self.table, ids))
        if plan is None:
            return
        deletable, held = plan.order()
        if not deletable:
            self.report.held += len(held)
            return
        self.job.boundary([r.run_id for r in deletable])
        if self.dry:
            done = [r.run_id for r in deletable]
            self.report.add(Kind.RUNS, len(done))
        else:
            done, held = self.commit(plan)
        self.report.held += len(held)
        self.cascade(done)

    # -- commit: markers first, then each run item's conditional delete, children first ------

    def commit(self, plan: Plan) -> tuple[list[str], list[RunRef]]:
        """Commit the plan's runs; return (ids to cascade, held runs).

        The batch's marker is written first (one item naming every run and the version about to be
        committed); each run item's conditional delete is then the commit. A run that changed keeps its
        item, and with it every other item, and the marker is rewritten without it; its ancestors are not
        attempted. A run already gone (deleted by someone else) is cascaded but not counted (by a shard:
        not cascaded; the marker stays for the final pass).
        """
        survivors: set[str] = set()
        planned, _ = plan.order()
        per_run = self.per_run_markers(len(planned))
        marks = [] if per_run else self.markers.mark(planned)
        if per_run:
            self.markers.write(planned)
        outcome: dict[str, str] = {}
        for level in heights(plan, planned):
            allowed = {r.run_id for r in plan.order(survivors=survivors)[0]}
            attempt = [r for r in level if r.run_id in allowed]
            for ref, (result, _) in zip(attempt, self.delete_runs(attempt)):
                outcome[ref.run_id] = result
                if result == "changed":
                    survivors.add(ref.run_id)
            now = time.monotonic()
            waits = [now - version(r).read_at for r in attempt if outcome[r.run_id] == "deleted"]
            if waits:
                longest, first, count = self.committing or (0.0, now, 0)
                self.committing = (max(longest, *waits), first, count + len(waits))
        kept = [r.run_id for r in planned if outcome.get(r.run_id) not in COMMITTED]
        if self.job.partial:
            self.gone_at_commit.update(i for i, result in outcome.items() if result == "gone")
        if kept and per_run:
            self.table.map(self.markers.unmark, kept)
        elif kept:  # the marker names only committed runs again (a shard's stay for the final pass)
            self.markers.narrow(marks, {r.run_id: seen_of(r) for r in planned if outcome.get(r.run_id) in COMMITTED})
        self.remember([i for i, result in outcome.items() if result in COMMITTED])
        _, held = plan.order(survivors=survivors)
        self.report.changed += len(survivors)
        self.report.add(Kind.RUNS, sum(1 for result in outcome.values() if result == "deleted"))
        # A run gone before its commit was deleted by someone else. A shard leaves its cascade to that purge and,
        # through the marker it wrote (never dropped by a shard), to the final pass: two shards of one plan
        # cascading the same run would count its items twice.
        cascade = [i for i, result in outcome.items()
                   if result == "deleted" or (result == "gone" and not self.job.partial)]
        return cascade, held

    def per_run_markers(self, runs: int) -> bool:
        """Whether the next ``runs`` are marked one item each: once this purge's own runs would pass ``OWN_IDS``
        (the Scan's join then reads its markers by run id). A shard, which makes no Scan, never does."""
        if self.job.partial:
            return False
        if not self.spilled and len(self.own) + runs > OWN_IDS:
            self.spilled = True
        return self.spilled

    def remember(self, run_ids: list[str]) -> None:
        """Note runs whose markers this purge now owns, for the Scan's join (not past ``OWN_IDS``: see
        :meth:`per_run_markers`)."""
        if self.job.partial:
            return
        if not self.spilled and len(self.own) + len(run_ids) > OWN_IDS:
            self.spilled = True  # (a dry run's resume; a purge's commits and claims checked before marking)
        if not self.spilled:
            self.own.update(run_ids)

    def delete_runs(self, refs: list[RunRef]) -> list[tuple[str, Item | None]]:
        """Each run item's conditional delete on the version read (25 per TransactWriteItems, on the
        threads): ``deleted``, ``changed`` (status or updated_at differ) or ``gone`` (no item)."""
        return self.table.delete_if_many([(run_key(r.run_id), {"status": version(r).status or "",
                                                                "updated_at": version(r).updated_at or ""})
                                          for r in refs])

    # -- cascade: everything else of committed runs -----------------------------------

    def cascade(self, run_ids: list[str]) -> None:
        """Token items and flags first (tokens are found through the hooks), then hooks and the partitions.

        Hooks and partitions are read 50 runs per PartiQL ``IN`` (one paged ExecuteStatement each).
        """
        if not run_ids:
            return
        self.cascaded += len(run_ids)
        chunks = list(chunked(run_ids, IN_VALUES))
        hooks = [h for part in self.table.map(self.hooks_of, chunks) for h in part]
        derived = [key(f"TOKEN#{text(h, 'token')}", h["PK"]["S"]) for h in hooks if text(h, "token")]
        found = self.table.get_many(derived + [flag_key(r) for r in run_ids], expr.projection("PK", "SK"))
        owners = {f"TOKEN#{text(h, 'token')}": text(h, "run_id") for h in hooks if text(h, "token")}
        self.archive_unarchived(found + hooks, lambda i: owners.get(i["PK"]["S"]) if i["PK"]["S"].startswith(
            "TOKEN#") else i["PK"]["S"][len("CANCEL#"):] if i["PK"]["S"].startswith("CANCEL#") else text(i, "run_id"))
        tokens = [k for k in found if k["PK"]["S"].startswith("TOKEN#")]
        self.report.add(Kind.HOOK_TOKENS, len(tokens))
        self.report.add(Kind.CANCELLATION_FLAGS, len(found) - len(tokens))
        self.report.add(Kind.HOOKS, len(hooks))
        if not self.dry:
            self.table.delete_many(found)
        rest = expr.keys_only(hooks)
        for counts, keys in self.table.map(self.clear_partitions, chunks):
            self.report.merge(counts)
            rest += keys
        window, self.committing = self.committing, None
        if not self.dry:
            self.defer(rest, window)
        self.ghosts.report(self.report)

    def archive_unarchived(self, items: list[Item], owner_of: Callable[[Item], str | None]) -> None:
        """With an archive: the items of committed runs that a cascade is about to delete and that are not, value
        for value, among those archived at the runs' boundary (the engine wrote them since: an event, a hook, a
        flag, the event counter it moved) are archived first, verified, as part lines
        (:meth:`Archiving.unarchived`; restore puts the newest version of each key). Each item is read whole
        again for the comparison: one BatchGetItem per 100, only with an archive. Called on worker threads."""
        archive = self.job.archive
        if archive is None or self.dry or not items:
            return
        owners = {item_key(i): owner for i in items
                  if i["SK"]["S"] != RUN_SK and (owner := owner_of(i)) is not None and owner in archive.gathered}
        if not owners:
            return
        by_owner: dict[str, list[Item]] = {}
        for item in self.table.get_many([key(pk, sk) for pk, sk in owners]):
            by_owner.setdefault(owners[item_key(item)], []).append(item)
        with self.archiving:
            late = {owner: {ITEMS: extra} for owner, found in by_owner.items()
                    if (extra := archive.unarchived(owner, ITEMS, found, record_value))}
            if late:
                self.job.archive_records(late)

    def hooks_of(self, run_ids: list[str]) -> list[Item]:
        """The hooks of up to 50 runs, from GSI1 (``RUN_HOOKS#<run_id>``), each naming its run."""
        wanted = {f"RUN_HOOKS#{r}" for r in run_ids}
        statement = expr.select_in(self.table.name, "GSI1PK", len(run_ids), fields=(*HOOK_FIELDS, "GSI1PK"),
                                   index="GSI1")
        return [h for page in self.table.select(statement, [s(f"RUN_HOOKS#{r}") for r in run_ids], limit=SCAN_PAGE)
                for h in page if text(h, "GSI1PK") in wanted and text(h, "GSI1PK") == f"RUN_HOOKS#{text(h, 'run_id')}"]

    def clear_partitions(self, run_ids: list[str]) -> tuple[Counter[str], list[Item]]:
        """Count events, event counters and steps under ``RUN#<id>`` of up to 50 runs (on a worker thread).

        One consistent PartiQL ``IN`` over the partitions, paged. Returns the keys of the last page for
        the caller to delete with the batch's other keys (fewer, fuller requests); earlier pages are
        deleted here, so memory stays bounded.
        """
        counts: Counter[str] = Counter()
        pending: list[Item] = []
        statement = expr.select_in(self.table.name, "PK", len(run_ids), fields=("PK", "SK"))
        pages = self.table.select(statement, [s(f"RUN#{r}") for r in run_ids], consistent=True,
                                  limit=PARTITION_PAGE)
        for page in pages:
            if pending and not self.dry:
                self.table.delete_many(pending, parallel=False)
            pending = []
            self.archive_unarchived(page, lambda i: i["PK"]["S"][len("RUN#"):])
            for item in page:
                sk = item["SK"]["S"]
                if sk == RUN_SK:  # the live record (dry run), or one written after the commit: keep it
                    if not self.dry:
                        self.ghosts.add(item)
                    continue
                counts[Kind.EVENTS if sk.startswith("EVENT#") else Kind.STEPS if sk.startswith("STEP#")
                       else Kind.EVENT_COUNTERS if sk == COUNTER_SK else Kind.INDEX_ENTRIES] += 1
                pending.append(key_of(item))
        return counts, pending

    def resume(self) -> None:
        """Finish the cascades of runs a marker names though their record is gone.

        Such a run was committed by a purge that died, or by one still running
        (the CLI takes no lock). Either way its cascade is re-run here, after
        this purge has marked it as its own (a claim), so that it is finished
        even if this purge dies too; the claim is dropped once the cascade,
        checkpoints included, is complete. A run a marker names that exists at
        the version the marker records awaits another purge's commit: that
        marker stays. Once none of a marker's runs awaits a commit (each is gone,
        now claimed, or exists at another version, which no commit can match),
        the marker is deleted; otherwise the entries of those runs are removed
        from it, and it is checked again at the end of this purge.
        """
        for partition in self.markers.occupied():
            for page in self.markers.pages(partition):
                # (a per-run marker naming no safe run id is left alone; a claim of this purge may be on the page)
                self.resume_page(self.take_finished([m for m in page if m.purge_id != self.purge_id
                                                     and (m.batch or m.runs)]))

    def take_finished(self, page: list[Marker]) -> list[Marker]:
        """The markers of ``page`` to resume: those of finished shard purges are not, but for the runs they found
        gone at their commit (another purge's cascade: done here); their other runs, committed and cascaded by
        their shard, are only noted for the checkpoints, and the markers are dropped at the end."""
        rest = []
        for m in page:
            if m.purge_id not in self.segments.records:
                rest.append(m)
                continue
            gone = self.segments.gone.get(m.purge_id, set()) & m.runs.keys()
            done = [r for r in m.runs if r not in gone]
            if self.spilled or len(self.own) + len(done) > OWN_IDS:
                rest.append(m)  # too many to note in memory: resumed (claimed) as before
                continue
            self.remember(done)
            self.known += len(done)
            self.finished.append(m)
            if gone:
                rest.append(Marker(m.key, m.purge_id, m.units, {r: m.runs[r] for r in gone}, m.batch))
        return rest

    def drop_finished(self) -> None:
        """Delete the finished shard purges' markers, then their segment items (last: until then a rerun
        finds the shards finished)."""
        if self.finished:
            self.table.delete_many([m.key for m in self.finished], units=[m.units for m in self.finished])
            self.finished = []
        if self.segments.keys:
            self.table.delete_many(self.segments.keys)
            self.segments = Segments()

    def resume_page(self, page: list[Marker]) -> None:
        alive = get_runs(self.table, {r for m in page for r in m.runs})
        gone = sorted({r for m in page for r in m.runs if r not in alive})
        claims = [r for r in gone if r not in self.own]  # not resumed already (through another marker)
        dead = sorted({r for m in page for r, seen in m.runs.items() if r in alive and outdated(seen, alive[r])})
        waiting = {id(m): {r for r, seen in m.runs.items() if r in alive and not outdated(seen, alive[r])}
                   for m in page}
        done = [m for m in page if len(waiting[id(m)]) < len(m.runs) or not m.runs]
        if not claims and not done:
            self.wait_for([m for m in page if waiting[id(m)]])
            return
        self.job.boundary(claims + dead)
        if not self.dry:
            if claims and self.per_run_markers(len(claims)):
                self.settle()  # a run two markers name is cascaded twice: the second cascade must find it empty
                self.markers.claim(claims)
            else:
                self.markers.claim_batch(claims)
            for m in done:  # after the claims: a committed run is never left unmarked
                if m.purge_id in self.segments.records:
                    continue  # a finished shard's marker names its other runs too: dropped last (drop_finished)
                self.markers.take_over(m, set(m.runs) - waiting[id(m)], whole=not waiting[id(m)])
            self.wait_for([m for m in page if waiting[id(m)]])
        self.remember(claims)
        self.cascade(claims)

    def wait_for(self, markers: list[Marker]) -> None:
        """Note other purges' markers naming runs that await a commit, to re-check them at the end."""
        room = WAITING - len(self.waiting)
        self.waiting += [m.key for m in markers[:max(room, 0)]]

    def finish_waiting(self) -> None:
        """Delete the noted markers of other purges whose runs this purge has since committed itself (their
        cascades and checkpoints are done) or that changed: none of their runs awaits a commit any more.

        Runs committed past ``OWN_IDS`` are not known here: such a marker stays for the next purge."""
        if not self.waiting or self.spilled:
            return
        for chunk in chunked(self.waiting, 100):
            markers = self.markers.reread(chunk)
            alive = get_runs(self.table, {r for m in markers for r in m.runs})
            for m in markers:
                if all(r in self.own if r not in alive else outdated(seen, alive[r]) for r, seen in m.runs.items()):
                    self.markers.take_over(m, set(m.runs), whole=True)
        self.waiting = []

    # -- the one Scan: checkpoints of committed runs, and stream data (streams.py) -----

    def scan(self) -> None:
        """One paged Scan after the batches, its items joined ``JOIN_ITEMS`` at a time against the purge's
        committed runs (a Scan page of 1,000 items evaluated returns ~160 checkpoints: joined alone, its run
        records would take a BatchGetItem of a few dozen keys)."""
        params = expr.scan_prefixes(SCANNED_PREFIXES, SCAN_FIELDS, limit=self.page)
        held: list[Item] = []
        for page in self.table.scan(**params):
            held += page
            if len(held) >= JOIN_ITEMS:
                self.sweep(held)
                held = []
        if held:
            self.sweep(held)

    def sweep(self, page: list[Item]) -> None:
        """The checkpoints and stream items of some Scan pages: count them and delete them (in the background)."""
        doomed = self.doomed_checkpoints([i for i in page if i["PK"]["S"].startswith("CHECKPOINT#")]) \
            if self.cascaded or self.known else []
        stream = old_stream_items(page, self.job.sweep_cutoff, self.report) if self.job.sweeps else []
        if not doomed and not stream:
            return
        self.job.boundary(sorted({owner for owner, _ in doomed}) + [i["PK"]["S"] for _, i in stream])
        archive_checkpoints(self.table, self.job, doomed)  # with an archive: verified before they are deleted
        self.report.add(Kind.CHECKPOINTS, len(doomed))
        for kind, _ in stream:
            self.report.add(kind)
        if not self.dry:
            self.defer([key_of(i) for _, i in doomed + stream])

    # -- a sharded purge: each shard's Scan segment of the table, the final pass's leftovers --------

    def segment_pass(self) -> None:
        """A shard's Scan segment of the table (``Segment=i, TotalSegments=n``: the shards' segments cover it once),
        for checkpoints, joined against the runs any purge has committed so far (named by a marker, record gone).

        A checkpoint's key names its run, but its segment is not its run's: a shard deletes those of its segment
        whose owner is committed, side by side with the other shards. What it cannot see (a key of a run another
        shard commits later, or one the engine writes after this read) the final pass's Scan of the whole table,
        after every commit, deletes. The markers are read whole (every partition) when a page names a run gone
        and not yet known to be marked; past ``OWN_IDS`` named runs the shard gives up its segment (its record,
        of segment -1, still tells the final pass that its runs are cascaded). The segment record is written last.
        """
        number, total = segments.segment_of(self.job.shard)
        params = expr.scan_prefixes(("CHECKPOINT#",), ("PK", "SK"), limit=self.page)
        params.update(Segment=number, TotalSegments=total)
        known: set[str] = set()
        for page in self.table.pages("scan", **params):
            keys = {k: item for item in page if (k := checkpoint_key(item)) is not None}
            prefixes = {p for k in keys for p in key_prefixes(k)}
            if not prefixes:
                continue
            alive = get_runs(self.table, prefixes)
            gone = prefixes - set(alive)
            if gone - known:  # read after the runs: a run gone by then was marked before
                named = self.markers.named(OWN_IDS)
                if named is None:  # its runs are cascaded, its segment is not read: a record that covers nothing
                    self.markers.write_segment(-1, total, cutoff_text(self.cutoff), self.gone_at_commit)
                    return
                known = named
            committed = (gone & known) | self.markers.marked(gone - known)
            named_now = set(alive) | committed
            owners = key_owners(keys, named_now.intersection)
            doomed = sorted(((o, keys[k]) for k, o in owners.items() if o is not None and o in committed),
                            key=lambda pair: pair[0])
            if doomed:  # named by the items' keys: the owners are runs other batches, and other shards, counted
                self.job.boundary(sorted(i["PK"]["S"] for _, i in doomed))
                archive_checkpoints(self.table, self.job, doomed)
                self.report.add(Kind.CHECKPOINTS, len(doomed))
                self.table.delete_many([key_of(i) for _, i in doomed])
        self.markers.write_segment(number, total, cutoff_text(self.cutoff), self.gone_at_commit)

    def doomed_checkpoints(self, items: list[Item]) -> list[tuple[str, Item]]:
        """Checkpoints whose owner (``planning.key_owners``) is a committed run: marked, its record gone.

        Ownership is decided on the store as it was before the commits: the
        existing runs and the committed ones. Only prefixes at least as long
        as a key's shortest marked prefix can own it, so only those are read.
        The marked prefixes are this purge's own (committed or claimed runs,
        held in memory up to ``OWN_IDS``; past that, its runs get per-run
        markers and every per-run marker is read: one BatchGetItem per join).
        A dry run writes no markers: its marked prefixes are the runs its
        resume would claim, and it asks the planner about each other owner.
        """
        keys = {key: item for item in items if (key := checkpoint_key(item)) is not None}
        prefixes = {p for key in keys for p in key_prefixes(key)}
        if not prefixes:
            return []
        # This purge's own runs (a dry run: those its resume would claim): another purge's committed runs are
        # that purge's to finish. Past OWN_IDS, its per-run markers too (whoever's).
        marked = prefixes & self.own
        if self.spilled:
            marked |= self.markers.marked(prefixes)
        if self.dry:
            wanted = prefixes
        else:
            wanted = {p for key in keys for p in from_shortest_marked(key, marked)}
        alive = get_runs(self.table, wanted)
        committed = marked - set(alive)
        owners = key_owners(keys, lambda ids: {i for i in ids if i in alive or i in committed})
        doomed = set(committed)
        if self.dry:
            doomed |= self.would_delete({o for o in owners.values() if o in alive})
        doomed = self.job.within(doomed)
        return sorted(((o, keys[k]) for k, o in owners.items() if o is not None and o in doomed),
                      key=lambda pair: pair[0])

    def would_delete(self, ids: set[str]) -> set[str]:
        """Those of ``ids`` (existing runs) that the planner deletes: a dry run's committed runs."""
        roots = [r for r in get_runs(self.table, ids).values() if r.eligible(self.cutoff)]
        if not roots:
            return set()
        plan = plan_deletion(roots, lambda parents: children_of(self.table, parents), self.cutoff)
        return {r.run_id for r in plan.order()[0]} & ids


def from_shortest_marked(key: str, marked: set[str]) -> list[str]:
    """The prefixes of ``key`` from its shortest marked one on: the only runs that can own it after a commit."""
    prefixes = key_prefixes(key)
    for n, prefix in enumerate(prefixes):
        if prefix in marked:
            return prefixes[n:]
    return []
