"""Selecting and committing expired runs of a file store, with bounded memory.

There is no parent index on disk, so holds are found bottom-up: one pass over
``runs/`` walks up from every surviving run (not expired, corrupt, unsafe)
and marks its expired ancestors held. Memory is O(held). An expired child is
also checked against its parent's ``nesting_depth``: if the depth does not
grow down the tree, the parent is held (warned), so that ordering by depth is
always children-first.

Then one pass per nesting depth present, deepest first, collects batches of
deletable runs. Each batch goes through ``job.boundary`` (no lock held), then
each run is re-read under the engine's own ``.locks/<run_id>.lock`` and, if
unchanged, renamed to its purge marker. A run that changed keeps everything
and its ancestors become held; they are in later (shallower) passes, so they
are never committed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from filelock import FileLock, Timeout

from workflow_retention.backends.file.layout import RUNS, Corrupt, Layout, load_json, parse_run, unlink_lock
from workflow_retention.base import PurgeJob
from workflow_retention.planning import RunRef, is_safe_run_id, screen
from workflow_retention.report import Kind


def _level(ref: RunRef) -> int:
    return ref.data if ref.data is not None else 0


class Selection:
    """The held set and the depth levels of one purge, and the commit passes."""

    def __init__(self, layout: Layout, job: PurgeJob, lock_timeout: float) -> None:
        self.layout, self.job, self.lock_timeout = layout, job, lock_timeout
        self.cutoff = job.cutoff
        self.held: set[str] = set()
        self.levels: set[int] = set()

    # -- reading runs ---------------------------------------------------------------

    def _read(self, run_id: str | None) -> RunRef | None:
        """A run by id, or None if the id is unsafe or the file is absent or unusable."""
        if not run_id or not is_safe_run_id(run_id):
            return None
        try:
            return self.layout.read_run(run_id)
        except (OSError, Corrupt):
            return None

    def _runs(self, *, report: bool) -> Iterator[RunRef]:
        """Stream a RunRef per run file; unusable files are reported when ``report`` (the first pass)."""
        for entry in self.layout.entries(RUNS):
            if not entry.name.endswith(".json"):
                continue
            run_id = entry.name[:-5]
            try:
                ref = self.layout.read_run(run_id) if is_safe_run_id(run_id) else _unsafe(entry.path, run_id)
            except FileNotFoundError:
                continue
            except (OSError, Corrupt) as exc:
                if report:
                    self.job.report.skipped += 1
                    self.job.report.warn(f"run file runs/{entry.name} is unusable ({exc}); left alone")
                continue
            yield ref

    def planned(self, run_id: str) -> bool:
        """Would the commit passes delete this run (dry run: they only count)?"""
        if run_id in self.held:
            return False
        ref = self._read(run_id)
        return ref is not None and ref.eligible(self.cutoff)

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
        """Pass 1: held set, depth levels, and skipped runs (reported once)."""
        for ref in self._runs(report=True):
            if ref.candidate(self.cutoff) and screen([ref], self.cutoff, self.job.report):
                self.levels.add(_level(ref))
                self._check_depth(ref)
            else:
                self.hold_ancestors(ref.parent_run_id)
        self.job.report.held = len(self.held)

    def _check_depth(self, ref: RunRef) -> None:
        parent = self._read(ref.parent_run_id)
        if parent is None or not parent.eligible(self.cutoff):
            return
        if ref.data is None or parent.data is None or ref.data <= parent.data:
            if self.hold_ancestors(parent.run_id):
                self.job.report.warn(f"run {ref.run_id!r} has a nesting_depth that is not below its parent's "
                                     f"({ref.data!r} vs {parent.data!r}); parent {parent.run_id!r} kept")

    # -- commit passes --------------------------------------------------------------

    def commit(self) -> None:
        """One pass per depth level, deepest first, committing batches of deletable runs."""
        for level in sorted(self.levels, reverse=True):
            batch: list[RunRef] = []
            for ref in self._runs(report=False):
                if self._deletable(ref, level):
                    batch.append(ref)
                    if len(batch) >= self.job.batch_size:
                        self._commit_batch(batch)
                        batch = []
            if batch:
                self._commit_batch(batch)
        self.job.report.held = len(self.held)

    def _deletable(self, ref: RunRef, level: int) -> bool:
        if not ref.eligible(self.cutoff):
            # A survivor whose expired parent is not held changed since the plan pass.
            if ref.parent_run_id and ref.parent_run_id not in self.held and self.hold_ancestors(ref.parent_run_id):
                self.job.report.changed += 1
            return False
        return _level(ref) == level and ref.run_id not in self.held

    def _commit_batch(self, batch: list[RunRef]) -> None:
        self.job.boundary([ref.run_id for ref in batch])
        if self.job.dry_run:
            self.job.report.add(Kind.RUNS, len(batch))
            return
        for ref in batch:
            self._commit(ref)

    def _commit(self, ref: RunRef) -> None:
        """Under the engine's run lock: re-read, and rename to the purge marker if unchanged."""
        report = self.job.report
        lock_path = self.layout.lock(f"{ref.run_id}.lock")
        existed = os.path.lexists(lock_path)
        lock = FileLock(lock_path, timeout=self.lock_timeout)
        committed = False
        try:
            lock.acquire()
        except (Timeout, OSError) as exc:  # Timeout first: it is an OSError too
            why = f"stayed held for {self.lock_timeout}s" if isinstance(exc, Timeout) else f"is unusable ({exc})"
            report.skipped += 1
            report.warn(f"run {ref.run_id!r}: its lock .locks/{ref.run_id}.lock {why}; run left alone")
            self.hold_ancestors(ref.parent_run_id)
            return
        try:
            fresh = self._read(ref.run_id)
            if fresh is not None and ref.same_version(fresh) and fresh.eligible(self.cutoff):
                os.replace(self.layout.run_file(ref.run_id), self.layout.marker(ref.run_id))
                committed = True
        finally:
            lock.release()
            if not existed:
                unlink_lock(lock_path)  # we created it: the dry run never saw it
        if committed:
            report.add(Kind.RUNS)
        else:
            report.changed += 1
            self.hold_ancestors(ref.parent_run_id)


def _unsafe(path: str, run_id: str) -> RunRef:
    """Parse a run file whose name is not a safe id (never deleted; read only to report it)."""
    return parse_run(load_json(path), run_id)
