"""The purge of runs: selection (holds), the commit passes, the re-check, then the cascade.

:func:`purge_runs` is the whole of it. :class:`Selection` finds the held set in one pass over ``runs/``
(there is no parent index: walking up from every surviving run), commits batches one nesting depth at a
time, deepest first (re-read under the engine's ``.locks/<run_id>.lock``, renamed to the purge marker),
and after the commits re-reads the run files written meanwhile, bringing back any committed parent they
name. Unreadable run files hold every parent they may name, or invoke the conservative rule. Then
:class:`~.cascade.Cascade` deletes the files of the committed runs. Why and what is guaranteed:
docs/backends/file.md, sections 2 and 3.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterator
from functools import lru_cache

from workflow_retention.backends.file.cascade import Cascade, Verdict
from workflow_retention.backends.file.client import LockTimeout, NotRegular, Store
from workflow_retention.backends.file.layout import (
    JSON,
    MARKER_SUFFIX,
    MAX_NESTING_DEPTH,
    PURGE_DIRECTORIES,
    RUNS,
    Corrupt,
    can_have_children,
    depth,
    level,
    marker_file,
    parse_json,
    parse_run,
    possible_parents,
    run_file,
    run_lock,
    stem,
)
from workflow_retention.base import PurgeJob
from workflow_retention.exceptions import PurgeStopped
from workflow_retention.planning import RunRef, chunked, is_safe_run_id, left_alone, screen
from workflow_retention.report import Kind
from workflow_retention.shards import in_hash_shard

# Run ids whose record/marker state a purge's cascade remembers (a run's files are found in every directory).
STATE_CACHE = 4096
# Run files changed this long before the purge began are read again after the commits
# (file-system timestamps are coarser than the clock).
CTIME_SLACK = 2.0
# A shard purge takes the next batch_size * SHARD_WINDOW run names of its shard (in name order, after its
# cursor) from one listing of runs/: memory O(batch), one listing per window.
SHARD_WINDOW = 20


def purge_runs(store: Store, job: PurgeJob, lock_timeout: float) -> None:
    """Select, commit and re-check the expired runs, then delete their files (the cascade)."""
    if not job.dry_run:
        store.preflight(PURGE_DIRECTORIES)
    selection = Selection(store, job, lock_timeout)
    selection.plan()
    cascade = Cascade(store, job.report, purge_verdict(store, selection, job.dry_run), dry_run=job.dry_run,
                      batch_size=job.batch_size, lock_timeout=lock_timeout)
    try:
        selection.commit()
    except PurgeStopped:
        if not job.dry_run:  # finish the runs already committed; decide nothing new
            selection.recheck()
            cascade.run()
        raise
    if not job.dry_run:
        selection.recheck()
    cascade.run()


def read_run(store: Store, run_id: str) -> RunRef | None:
    """The run file of ``run_id`` as plans see it, read without a lock; None if there is none.

    A file that exists but cannot be used (not regular, not JSON, another run's record) comes back with
    ``unreadable`` saying why (possible parents are not guessed here: :meth:`Selection._unusable` does that).
    """
    if (name := run_file(run_id)) is None:  # an unsafe id that is one file name is read (and judged unsafe)
        return None
    try:
        return parse_run(store.read_json(RUNS, name), run_id)
    except FileNotFoundError:
        return None
    except Corrupt as exc:
        return RunRef(run_id, "", None, unreadable=f"runs/{name}: {exc}")


def purge_verdict(store: Store, selection: Selection, dry_run: bool) -> Verdict:
    """Real purge: runs with a regular marker and no record. Dry run: those plus the runs the commits would mark."""

    @lru_cache(STATE_CACHE)
    def state(run_id: str) -> tuple[bool, bool]:
        """(its record exists, a regular purge marker exists): one or two stats, shared by both questions."""
        name, marker = run_file(run_id), marker_file(run_id)
        if name is None or marker is None:
            return False, False
        return store.exists(RUNS, name), store.is_regular(RUNS, marker)

    def exists(run_id: str) -> bool:
        return any(state(run_id))

    def committed(run_id: str) -> bool:
        record, marker = state(run_id)
        return marker and not record and is_safe_run_id(run_id) and selection.mine(run_id)

    if not dry_run:
        return Verdict.cached(exists, committed, orphans=False, recheck=False)
    return Verdict.cached(exists, lambda r: committed(r) or selection.planned(r), orphans=False, recheck=False)


class Selection:
    """The held set and the depth levels of one purge, and the commit passes."""

    def __init__(self, store: Store, job: PurgeJob, lock_timeout: float) -> None:
        self.store, self.job, self.lock_timeout = store, job, lock_timeout
        self.cutoff = job.cutoff
        self.held: set[str] = set()
        self.levels: set[int] = set()
        # Unusable run files whose parent cannot be told (each forces the conservative rule).
        self.unknown_parents: list[str] = []
        self.lockdown_held: set[str] = set()  # eligible runs kept by that rule (O(them), only then)
        self.reported: set[str] = set()  # unusable run files already counted in skipped
        # name -> (stat signature, possible parents, parent known, why) of files unusable even under the lock
        self.damaged: dict[str, tuple[tuple[int, int, int, int], set[str], bool, str]] = {}
        self.stale_markers: set[str] = set()  # markers present when the purge began: not ours to revive
        self.committing = False
        self.shallow_committed_unsafe = False  # a parent became unknown after commits began
        self.started = time.time()
        # A shard of several (job.partial): only runs of the shard go, and none that has a child run file
        # (in any shard) when the plan pass looks: those are left to the final pass (memory O(them)).
        self.shard = job.shard
        self.partial = job.partial
        self.has_children: set[str] = set()
        # explain's dry run (job.only): every run file is read (holds), only these runs are judged and counted.
        self.only = job.only

    def mine(self, run_id: str) -> bool:
        """The run belongs to this purge's shard (always, for a whole-store purge), or to ``job.only``."""
        if self.only is not None:
            return run_id in self.only
        return not self.partial or in_hash_shard(self.shard, run_id)

    @property
    def lockdown(self) -> bool:
        return bool(self.unknown_parents)

    # -- reading runs ---------------------------------------------------------------

    def _read(self, run_id: str | None) -> RunRef | None:
        """A run by id (no lock), or None if the id is unsafe or the file is absent or unusable."""
        if not run_id or not is_safe_run_id(run_id):
            return None
        ref = read_run(self.store, run_id)
        return None if ref is None or ref.unreadable is not None else ref

    def _runs(self) -> Iterator[RunRef]:
        """Stream a RunRef per run file; unusable ones are handled by :meth:`_unusable` (holds, report)."""
        for entry in self.store.entries(RUNS, regular=False):
            name = entry.name
            if name.endswith(MARKER_SUFFIX):
                if not self.committing and (run_id := stem(name, MARKER_SUFFIX)):
                    self.stale_markers.add(run_id)
                continue
            if not name.endswith(JSON):
                continue
            ref = self._inspect(name, name[: -len(JSON)], hold=True)  # (even ".json": the engine's glob sees it)
            if ref is not None:
                yield ref

    def _inspect(self, name: str, run_id: str, *, hold: bool) -> RunRef | None:
        """Parse ``runs/<name>``; if unusable, read it again under the engine's lock, then give up safely."""
        try:
            return parse_run(self.store.read_json(RUNS, name), run_id)
        except FileNotFoundError:
            return None
        except NotRegular as exc:
            self._unusable(name, None, str(exc), hold=hold)
            return None
        except Corrupt:
            pass
        signature = self._signature(name)
        if signature is not None and self.damaged.get(name, (None,))[0] == signature:
            _sig, parents, known, known_why = self.damaged[name]  # unchanged since found unusable under the lock
            self._unusable(name, None, known_why, hold=hold, found=(parents, known))
            return None
        raw, locked_why = self._read_locked(name, run_id)
        if raw is None:
            return None
        try:
            return parse_run(parse_json(raw), run_id)
        except Corrupt as exc:
            why = locked_why or str(exc)
            parents, known = possible_parents(raw)
            if signature is not None and signature == self._signature(name):
                self.damaged[name] = (signature, parents, known, why)
            self._unusable(name, raw, why, hold=hold, found=(parents, known))
            return None

    def _signature(self, name: str) -> tuple[int, int, int, int] | None:
        st = self.store.lstat(RUNS, name)
        return None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _read_locked(self, name: str, run_id: str) -> tuple[bytes | None, str | None]:
        """The file's bytes read under ``.locks/<run_id>.lock`` (bounded wait), or unlocked if that fails."""
        why = None
        try:
            with self.store.lock(run_lock(run_id), self.lock_timeout, create=not self.job.dry_run) as held:
                try:
                    return self.store.read(RUNS, name), None
                except FileNotFoundError:
                    return None, None
                finally:
                    if held.created:
                        held.unlink()
        except LockTimeout:
            why = f"it stayed unreadable while .locks/{run_lock(run_id)} was held for {self.lock_timeout}s"
        except (FileNotFoundError, NotRegular):
            pass  # no usable lock file: the engine is not writing it through one
        try:
            return self.store.read(RUNS, name), why
        except FileNotFoundError:
            return None, None
        except NotRegular as exc:
            return None, str(exc)

    def _unusable(self, name: str, raw: bytes | None, why: str, *, hold: bool,
                  found: tuple[set[str], bool] | None = None) -> None:
        """An unusable run file: hold (or, after the commits, bring back) every parent it may have."""
        parents, known = found if found is not None else possible_parents(raw) if raw is not None else (set(), False)
        for parent in sorted(parents):
            if hold:
                self.hold_ancestors(parent)
            else:
                self.revive(parent)
        if not known and name not in self.unknown_parents:
            self.unknown_parents.append(name)
            self.shallow_committed_unsafe |= self.committing
        if name in self.reported:
            return
        self.reported.add(name)
        if known:
            named = f"; the parents it may name are kept ({', '.join(sorted(parents))[:300]})" if parents else ""
            left_alone(self.job.report, f"run file runs/{name}", f"unusable ({why}){named}")
        else:
            left_alone(self.job.report, f"run file runs/{name}",
                       f"unusable ({why}) and names no parent that can be read: every expired run that could be "
                       f"a parent is kept this time (only runs at nesting depth {MAX_NESTING_DEPTH}, which can have "
                       "no children, go); repair or remove the file")

    def planned(self, run_id: str) -> bool:
        """Would the commit passes delete this run (dry run: they only count)?"""
        if run_id in self.held or run_id in self.lockdown_held or (marker := marker_file(run_id)) is None:
            return False
        if not self.mine(run_id) or (self.partial and run_id in self.has_children):
            return False
        ref = self._read(run_id)
        return (ref is not None and ref.eligible(self.cutoff) and (self.partial or level(ref) in self.levels)
                and not self._blocked(ref) and not self.store.exists(RUNS, marker))

    def _blocked(self, ref: RunRef) -> bool:
        """Held, or kept by the conservative rule while a run file names no readable parent."""
        return ref.run_id in self.held or (self.lockdown and can_have_children(ref))

    # -- holds ----------------------------------------------------------------------

    def hold_ancestors(self, start: str | None) -> int:
        """Hold every expired ancestor from ``start`` up; return how many were newly held."""
        added, seen, run_id = 0, set(), start
        while run_id and run_id not in self.held and run_id not in seen:
            seen.add(run_id)
            ref = self._read(run_id)
            if ref is None or not ref.eligible(self.cutoff):
                break  # a surviving ancestor walks up on its own
            self.held.add(run_id)
            added += 1
            run_id = ref.parent_run_id
        return added

    def plan(self) -> None:
        """Pass 1: held set, depth levels, and skipped runs (reported once); a shard: which of its runs have a child."""
        for ref in self._runs():
            if self.partial:
                if ref.parent_run_id and self.mine(ref.parent_run_id):
                    self.has_children.add(ref.parent_run_id)
                if not self.mine(ref.run_id):
                    continue
            elif not self.mine(ref.run_id):  # explain: not judged, but a run that stays still holds its parent
                if not ref.eligible(self.cutoff):
                    self.hold_ancestors(ref.parent_run_id)
                continue
            if ref.candidate(self.cutoff) and screen([ref], self.cutoff, self.job.report):
                self.levels.add(level(ref))
                self._check_depth(ref)
            else:
                self.hold_ancestors(ref.parent_run_id)
        self._set_held()

    def _set_held(self) -> None:
        self.job.report.held = len(self.held | self.lockdown_held)

    def _check_depth(self, ref: RunRef) -> None:
        parent = self._read(ref.parent_run_id)
        if parent is None or not parent.eligible(self.cutoff):
            return
        mine, theirs = depth(ref), depth(parent)
        if mine is None or theirs is None or mine <= theirs:
            if self.hold_ancestors(parent.run_id):
                self.job.report.warn(f"run {ref.run_id!r} has a nesting_depth that is not below its parent's "
                                     f"({mine!r} vs {theirs!r}); parent {parent.run_id!r} kept")

    # -- commit passes --------------------------------------------------------------

    def commit(self) -> None:
        """One pass per depth level, deepest first, committing batches of deletable runs."""
        self.committing = True
        if self.partial:
            self._commit_shard()
            self._set_held()
            return
        for lvl in sorted(self.levels, reverse=True):
            deletable = (ref for ref in self._runs() if self._deletable(ref, lvl))
            for batch in chunked(deletable, self.job.batch_size):
                self._commit_batch(batch)
        self._set_held()

    def _commit_shard(self) -> None:
        """A shard's commits: its run files in name order after the cursor, in batches, each followed by its cursor.

        Only runs with no child run file go (see :meth:`plan`), so the order of depths does not matter here.
        """
        cursor = self.job.resume_after
        window = self.job.batch_size * SHARD_WINDOW
        while True:
            names = heapq.nsmallest(window, (
                run_id for entry in self.store.entries(RUNS, regular=False)
                if entry.name.endswith(JSON) and (run_id := entry.name[: -len(JSON)])
                and (cursor is None or run_id > cursor) and self.mine(run_id)))
            if not names:
                return
            for chunk in chunked(names, self.job.batch_size):
                refs = [ref for run_id in chunk
                        if (ref := self._inspect(run_id + JSON, run_id, hold=True)) is not None
                        and ref.run_id not in self.has_children and self._deletable(ref, level(ref))]
                if refs:
                    self._commit_batch(refs)
                self.job.finished(chunk[-1])
            cursor = names[-1]

    def _deletable(self, ref: RunRef, lvl: int) -> bool:
        if not self.mine(ref.run_id):
            return False
        if not ref.eligible(self.cutoff):
            # A survivor whose expired parent is not held changed since the plan pass.
            if ref.parent_run_id and ref.parent_run_id not in self.held and self.hold_ancestors(ref.parent_run_id):
                self.job.report.changed += 1
            return False
        if level(ref) != lvl:
            return False
        if self._blocked(ref):
            if ref.run_id not in self.held:
                self.lockdown_held.add(ref.run_id)
            return False
        return True

    def _commit_batch(self, batch: list[RunRef]) -> None:
        self.job.boundary([ref.run_id for ref in batch])
        for ref in batch:
            if self._blocked(ref):  # held by a run read after this one joined the batch
                if ref.run_id not in self.held:
                    self.lockdown_held.add(ref.run_id)
            elif self.job.dry_run:
                if self.store.exists(RUNS, marker_file(ref.run_id) or ""):
                    self.hold_ancestors(ref.parent_run_id)  # a stray marker: the run stays (see the sweep)
                else:
                    self.job.report.add(Kind.RUNS)
            else:
                self._commit(ref)

    def _commit(self, ref: RunRef) -> None:
        """Under the engine's run lock: re-read, and rename to the purge marker if unchanged and not held."""
        report, run_id = self.job.report, ref.run_id
        name, marker = run_file(run_id), marker_file(run_id)
        assert name is not None and marker is not None  # eligible ids are safe
        outcome = "changed"
        try:
            with self.store.lock(run_lock(run_id), self.lock_timeout) as lock:
                try:
                    fresh = self._read(run_id)
                    if self._blocked(ref):
                        outcome = "held"
                    elif self.store.exists(RUNS, marker):
                        outcome = "stray"  # a marker beside the record: never ours to overwrite
                    elif fresh is not None and ref.same_version(fresh) and fresh.eligible(self.cutoff):
                        self.store.replace(RUNS, name, marker)
                        outcome = "committed"
                finally:
                    if lock.created:
                        lock.unlink()  # we created it: the dry run never saw it
        except (LockTimeout, NotRegular) as exc:
            why = f"stayed held for {self.lock_timeout}s" if isinstance(exc, LockTimeout) else f"is unusable ({exc})"
            left_alone(report, f"run {run_id!r}", f"its lock .locks/{run_lock(run_id)} {why}")
            self.hold_ancestors(ref.parent_run_id)
            return
        if outcome == "committed":
            report.add(Kind.RUNS)
            return
        if outcome == "changed":
            report.changed += 1
        elif outcome == "held" and run_id not in self.held:
            self.lockdown_held.add(run_id)
        self.hold_ancestors(ref.parent_run_id)

    # -- runs written during the purge ------------------------------------------------

    def recheck(self) -> None:
        """Bring back every run this purge committed that a run file written meanwhile names as its parent."""
        since = self.started - CTIME_SLACK
        for entry in self.store.entries(RUNS, regular=False):
            if not entry.name.endswith(JSON):
                continue
            run_id = entry.name[: -len(JSON)]
            try:
                if entry.stat(follow_symlinks=False).st_ctime < since:
                    continue
            except FileNotFoundError:
                continue
            ref = self._inspect(entry.name, run_id, hold=False)
            if ref is not None and ref.parent_run_id:
                self.revive(ref.parent_run_id)
        if self.shallow_committed_unsafe:
            self._revive_shallow()
        self._set_held()

    def revive(self, run_id: str | None) -> None:
        """Rename back the markers of ``run_id`` and its ancestors that this purge committed."""
        seen: set[str] = set()
        while run_id and run_id not in seen and run_id not in self.stale_markers:
            seen.add(run_id)
            ref = self._revive_one(run_id)
            if ref is None:
                return
            run_id = ref.parent_run_id

    def _revive_one(self, run_id: str) -> RunRef | None:
        """Rename one marker of this purge back to its run file; the run as read back (None: not revived)."""
        name, marker = run_file(run_id), marker_file(run_id)
        if name is None or marker is None or not is_safe_run_id(run_id) or not self.store.is_regular(RUNS, marker):
            return None
        try:
            with self.store.lock(run_lock(run_id), self.lock_timeout) as lock:
                try:
                    renamed = self._rename_back(name, marker)
                finally:
                    if lock.created:
                        lock.unlink()
        except (LockTimeout, NotRegular) as exc:
            # Keeping data is the safe direction: the engine never creates a run under an existing id.
            self.job.report.warn(f"run {run_id!r}: brought back without its lock .locks/{run_lock(run_id)} ({exc})")
            renamed = self._rename_back(name, marker)
        if not renamed:
            return None
        counts = self.job.report.counts
        counts[Kind.RUNS] -= 1
        if not counts[Kind.RUNS]:
            del counts[Kind.RUNS]
        self.held.add(run_id)
        return self._inspect(name, run_id, hold=False)  # unreadable: its own possible parents come back

    def _rename_back(self, name: str, marker: str) -> bool:
        if self.store.exists(RUNS, name) or not self.store.is_regular(RUNS, marker):
            return False
        self.store.replace(RUNS, marker, name)
        return True

    def _revive_shallow(self) -> None:
        """A parent became unknown after commits began: bring back every committed run that could have children."""
        for entry in self.store.entries(RUNS):
            run_id = stem(entry.name, MARKER_SUFFIX)
            if run_id is None or run_id in self.stale_markers:
                continue
            try:
                ref = parse_run(self.store.read_json(RUNS, entry.name), run_id)
            except (FileNotFoundError, Corrupt):
                continue
            if can_have_children(ref):
                self.revive(run_id)

