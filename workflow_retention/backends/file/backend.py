"""File backend: pyworkflow-engine 0.4.0's ``FileStorageBackend`` directory layout.

**Live-engine safety.** The engine changes a run only under
``.locks/<run_id>.lock`` (filelock). A purge commits each expired run by
re-reading it under that same lock and, if its status and ``updated_at`` are
unchanged and it is not held, atomically renaming ``runs/<run_id>.json`` to
the purge marker ``runs/<run_id>.json.purging``. The engine never reads
markers (it opens ``runs/<run_id>.json`` and globs ``runs/*.json``), so a
committed run cannot be revived; a run that changed keeps everything and
holds its ancestors. A marker condemns a run only while the run's own record
is absent: a marker beside a record (a restore from backup) is reported and
left.

**Unreadable runs never let a parent go.** A run file read without the lock
may be caught mid-rewrite: it is read again under the lock. One that stays
unusable holds every parent it may name; if it names none that can be read,
every expired run that could have children is kept for that purge (see
:mod:`.select`). Run files written during the purge are read again after the
commits, and a parent committed meanwhile is brought back before any of its
data is touched.

**Discovery, linear cost.** There is no index on disk, so work is organised
as a fixed number of streaming passes (``os.scandir``; no list of names):
``runs/`` once to find holds (walking up from every surviving run, memory
O(held)), once per nesting depth present to commit batches deepest first, and
once to re-check the run files written meanwhile (a ``stat`` each); then
every other directory exactly once to delete the files of marked runs, the
token index rewritten once, and ``runs/`` again for flags and, last, the
markers (see :mod:`.sweep`). Memory is bounded by the batch, the held set and
the single ``_token_index.json`` document, which the engine itself keeps as
one JSON object (it is loaded whole, as the engine does).

**Crash safety.** Markers are deleted last, and only once everything of their
run is gone, so a crash, an interruption or a file left behind (a lock someone
holds, a token index that cannot be read) leaves markers; the next purge (or
orphan sweep) deletes what they name before removing them. A purge stopped on
purpose (``PurgeStopped``, a lost lease) first finishes the runs it already
committed, deciding nothing new. The token index and signal arrays are
rewritten under the engine's lock via a temp file and rename, keeping their
owner, group and mode. Lock files are deleted while their flock is held
(filelock waiters then retry on a fresh file) and skipped if someone holds them.

**Nothing outside the store, nothing blocks, nothing silent.** Every open,
rename and unlink goes through directory descriptors opened once per
operation with ``O_NOFOLLOW`` (see :mod:`.fs`); records are read only if they
are regular files (``O_NONBLOCK``, then ``fstat``). Before the first commit a
purge proves it can write every directory it will delete from or rename in
(a temp file created and deleted in each): a store it cannot write fails
loudly with nothing changed. Permission and I/O errors are failures
(``StorageError``), never skipped records.

**Dry run.** Nothing is renamed, and no lock file is created: the sweep counts
the files of runs that the commit passes would mark (re-reading the run file
per lookup) plus runs already marked.

**Orphans.** Data whose run has no ``runs/<run_id>.json`` (markers included)
and whose mtime is older than the grace period; the run file's absence and
the mtime are re-checked right before each delete. Token-index entries carry
no time of their own, so the grace period does not apply to them (the engine
only creates them for a run that exists). Lock files of schedules and
subscriptions whose record is gone are orphans too.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from workflow_retention.backends.file.aux import AuxSweep
from workflow_retention.backends.file.census import take_census
from workflow_retention.backends.file.fs import (
    ACKS,
    BASE,
    CHECKPOINTS,
    EVENTS,
    HOOKS,
    LOCKS,
    RUNS,
    SCHEDULES,
    SIGNALS,
    STEPS,
    SUBSCRIPTIONS,
    TOKEN_INDEX,
    TOKEN_INDEX_LOCK,
    Corrupt,
    LockBusy,
    LockTimeout,
    Store,
)
from workflow_retention.backends.file.layout import MARKER_SUFFIX, marker_file, run_file
from workflow_retention.backends.file.seeding import SeedWriter, prepare
from workflow_retention.backends.file.select import Selection
from workflow_retention.backends.file.sweep import Sweep, Verdict
from workflow_retention.base import CensusJob, OrphanJob, PurgeJob, StorageBackend
from workflow_retention.exceptions import ConfigurationError, PurgeStopped, StorageError
from workflow_retention.planning import is_safe_run_id
from workflow_retention.report import Kind, printable
from workflow_retention.seed import SeedRun
from workflow_retention.urls import query_params, redact_url, split_url

DEFAULT_LOCK_TIMEOUT = 10.0
# Run ids whose record/marker state a purge's cascade remembers (a run's files are found in every directory).
STATE_CACHE = 4096
# The directories a purge deletes from or renames in (the base: the token index); the orphan sweep's.
PURGE_DIRECTORIES = (BASE, RUNS, EVENTS, STEPS, HOOKS, CHECKPOINTS, LOCKS, SCHEDULES, SIGNALS, SUBSCRIPTIONS, ACKS)
ORPHAN_DIRECTORIES = (BASE, RUNS, EVENTS, STEPS, HOOKS, CHECKPOINTS, LOCKS)


class FileBackend(StorageBackend):
    name = "file"
    capabilities = frozenset({"schedules", "streams"})

    def __init__(self, base_path: str | os.PathLike[str], *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
                 **options: Any) -> None:
        path = Path(os.path.abspath(os.fspath(base_path)))
        super().__init__(url=options.pop("url", None) or f"file://{quote(str(path))}", **options)
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) or not lock_timeout > 0:
            raise ConfigurationError(
                f"lock_timeout must be a positive number of seconds, e.g. 10; got {lock_timeout!r}")
        self._base = path
        self.lock_timeout = float(lock_timeout)
        self._seeder: SeedWriter | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> FileBackend:
        parts = split_url(url)
        query_params(parts, set(), url)
        if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost") \
                or not parts.path.startswith("/") or parts.fragment:
            raise ConfigurationError("file storage URL must be file:///absolute/path/to/store (the engine's "
                                     f"base_path); got {redact_url(url)!r}")
        return cls(unquote(parts.path), url=url, **options)

    @property
    def base_path(self) -> Path:
        return self._base

    def _check(self) -> dict[str, object]:
        with _errors(self._base), Store.open(self._base) as store:
            names = [e.name for e in store.entries(RUNS, regular=False)]
        return {"path": str(self._base),
                "run_files": sum(1 for n in names if n.endswith(".json")),
                "pending_purge_markers": sum(1 for n in names if n.endswith(MARKER_SUFFIX))}

    # -- purge ------------------------------------------------------------------

    def _purge(self, job: PurgeJob) -> None:
        with _errors(self._base), Store.open(self._base) as store:
            if not job.dry_run:
                _preflight(store, PURGE_DIRECTORIES)
            selection = Selection(store, job, self.lock_timeout)
            selection.plan()
            sweep = Sweep(store, job.report, _purge_verdict(store, selection, job.dry_run),
                          dry_run=job.dry_run, batch_size=job.batch_size, lock_timeout=self.lock_timeout)
            try:
                selection.commit()
            except PurgeStopped:
                if not job.dry_run:  # finish the runs already committed; decide nothing new
                    selection.recheck()
                    sweep.run()
                raise
            if not job.dry_run:
                selection.recheck()
            sweep.run()
            AuxSweep(store, job, self.lock_timeout).run()

    # -- orphans ----------------------------------------------------------------

    def _sweep_orphans(self, job: OrphanJob) -> None:
        report = job.report
        report.bytes_estimated = False
        with _errors(self._base), Store.open(self._base) as store:
            if not job.dry_run:
                _preflight(store, ORPHAN_DIRECTORIES)

            def exists(run_id: str) -> bool:
                name = run_file(run_id)
                return name is not None and store.exists(RUNS, name)

            verdict = Verdict.cached(exists, lambda r: is_safe_run_id(r) and not exists(r), orphans=True,
                                     recheck=True)
            sweep = Sweep(store, report, verdict, dry_run=job.dry_run, batch_size=job.batch_size,
                          lock_timeout=self.lock_timeout, not_after=job.not_after, boundary=job.boundary,
                          marker_kind=Kind.RUNS)
            try:
                sweep.run()
            finally:
                report.bytes += sweep.bytes

    # -- census and seed --------------------------------------------------------

    def _census(self, job: CensusJob) -> None:
        with _errors(self._base), Store.open(self._base) as store:
            take_census(store, job)

    def _prepare_seed(self) -> None:
        with _errors(self._base):
            prepare(self._base)
            with Store.open(self._base) as store:
                self._seeder = SeedWriter(store)

    def _write_seed(self, runs: list[SeedRun]) -> None:
        assert self._seeder is not None, "_prepare_seed first"
        with _errors(self._base), Store.open(self._base) as store:
            self._seeder.write(store, runs)


def _purge_verdict(store: Store, selection: Selection, dry_run: bool) -> Verdict:
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
        return marker and not record and is_safe_run_id(run_id)

    if not dry_run:
        return Verdict.cached(exists, committed, orphans=False, recheck=False)
    return Verdict.cached(exists, lambda r: committed(r) or selection.planned(r), orphans=False, recheck=False)


def _preflight(store: Store, directories: tuple[str, ...]) -> None:
    """Before anything changes: every directory can be written, and the shared lock and index can be used."""
    if not store.has(LOCKS):
        raise StorageError(f"file store {store.base} has no .locks/ directory (the engine creates it); "
                           "nothing was changed")
    for directory in directories:
        store.probe(directory)
    lock = store.lstat(LOCKS, TOKEN_INDEX_LOCK)
    if lock is not None and not stat.S_ISREG(lock.st_mode):
        raise StorageError(f"file store {store.base}: .locks/{TOKEN_INDEX_LOCK} is not a regular file; the engine "
                           "cannot use it either (repair it); nothing was changed")
    index = store.lstat(BASE, TOKEN_INDEX)
    if index is not None and os.geteuid() != 0 and (
            index.st_uid != os.geteuid() or index.st_gid not in {os.getegid(), *os.getgroups()}):
        raise StorageError(f"file store {store.base}: {TOKEN_INDEX} belongs to uid {index.st_uid}, gid "
                           f"{index.st_gid}; run the purge as that user (or root) so that the rewritten index keeps "
                           "its owner; nothing was changed")


@contextlib.contextmanager
def _errors(base: Path) -> Iterator[None]:
    """Translate file-system errors into StorageError (the OSError chained)."""
    try:
        yield
    except StorageError:
        raise
    except (OSError, Corrupt, LockTimeout, LockBusy) as exc:  # what no caller could handle on its own
        raise StorageError(f"file store {base}: {printable(str(exc))}") from exc
