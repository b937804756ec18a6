"""The cascade: each directory of the store streamed once, deleting the files of condemned runs.

Shared by the purge (:mod:`.purge`: the runs it committed are condemned) and the orphan sweep
(:mod:`.orphans`: run ids with no run file are condemned); a :class:`Verdict` says which runs are.
The order of the passes, why markers go last and what keeps one: docs/backends/file.md, section 2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache

from workflow_retention.backends.file.client import LockBusy, LockTimeout, NotRegular, Store
from workflow_retention.backends.file.layout import (
    BASE,
    CHECKPOINT_LOCK,
    CHECKPOINTS,
    EVENTS,
    EVENTS_SUFFIX,
    FLAG_SUFFIX,
    HOOKS,
    JSON,
    LOCKS,
    MARKER_SUFFIX,
    RUN_LOCK,
    RUNS,
    SCHEDULE_LOCK,
    SCHEDULES,
    STEPS,
    SUBSCRIPTION_LOCK,
    SUBSCRIPTIONS,
    TOKEN_INDEX,
    TOKEN_INDEX_LOCK,
    Corrupt,
    events_file,
    flag_file,
    hook_owner,
    lock_kind,
    run_file,
    run_locks,
    stem,
    step_owner,
    subscription_files,
)
from workflow_retention.exceptions import StorageError
from workflow_retention.planning import chunked, is_safe_run_id, key_owner, key_owners, key_prefixes, left_alone
from workflow_retention.report import Kind, OrphanReport, PurgeReport

CACHE_SIZE = 1024
Owners = tuple[str, ...] | None  # the runs a condemned file is announced under; None: the file stays
Drops = dict[str, tuple[str, tuple[str, ...]]]  # token -> (its value, the runs it goes with)


# Module-level so that a test can make any of them fail (tests/file/test_crash.py).
def unlink(store: Store, directory: str, name: str, *, size: bool = True) -> int | None:
    return store.unlink(directory, name, size=size)


def unlink_lock(store: Store, name: str) -> int | None:
    return store.unlink_lock(name)


def atomic_write(store: Store, directory: str, name: str, data: bytes) -> None:
    store.rewrite(directory, name, data)


@dataclass(frozen=True)
class Verdict:
    """Whose files go.

    ``exists(run_id)``: a run record exists (any status, id or readability:
    the owner of a derived key is the longest prefix for which this holds).
    ``doomed(run_id)``: that run's data goes (cached; ``fresh`` is the
    uncached re-check made right before a delete, orphan sweep only).
    ``orphans``: a derived key no existing run owns goes too.
    """

    exists: Callable[[str], bool]
    doomed: Callable[[str], bool]
    orphans: bool = False
    reporting: bool = True
    fresh_doomed: Callable[[str], bool] | None = None

    @classmethod
    def cached(cls, exists: Callable[[str], bool], doomed: Callable[[str], bool], *, orphans: bool,
               recheck: bool) -> Verdict:
        return cls(exists, lru_cache(CACHE_SIZE)(doomed), orphans, True, doomed if recheck else None)

    def fresh(self) -> Verdict | None:
        """The same rules, uncached and silent, for the re-check right before a delete (or None: no re-check)."""
        if self.fresh_doomed is None:
            return None
        return replace(self, doomed=self.fresh_doomed, reporting=False, fresh_doomed=None)

    def alive(self, run_id: str) -> bool:
        return self.exists(run_id) and not self.doomed(run_id)

    def one(self, run_id: str | None) -> Owners:
        return (run_id,) if run_id and self.doomed(run_id) else None

    def any_of(self, owners: Sequence[str]) -> Owners:
        """A file that may belong to any of ``owners`` goes when one is doomed and none is alive."""
        if len(owners) == 1:
            return self.one(owners[0])
        if owners and any(self.doomed(o) for o in owners) and not any(self.alive(o) for o in owners):
            return tuple(owners)
        return None

    def key(self, key: str, owner: str | None = None, *, known: bool = False) -> Owners:
        """A derived key ``<run_id>:<rest>`` goes with its owner (planning.key_owner), or as an orphan."""
        prefixes = key_prefixes(key)
        if not prefixes:
            return None  # a stream-step checkpoint: no run in its name
        if not known:
            owner = key_owner(key, self.exists)
        if owner is None:
            return (prefixes[0],) if self.orphans and is_safe_run_id(prefixes[0]) else None
        return self.one(owner)

    def existing(self, ids: set[str]) -> set[str]:
        return {i for i in ids if self.exists(i)}


OwnersOf = Callable[[str, Verdict], Owners]


@dataclass
class _Victim:
    kind: str
    directory: str
    name: str
    owners: tuple[str, ...]
    owners_of: OwnersOf


class Cascade:
    """Deletes (or, in a dry run, counts) every file of the runs a :class:`Verdict` condemns, markers last.

    ``boundary`` (the orphan sweep's ``job.boundary``): each page is announced before it is deleted and
    re-checked right before each delete; without it (a purge) flags and stragglers go in the marker pass.
    ``not_after``: only files last modified before it go. ``marker_kind``: the kind purge markers are
    counted under (the orphan sweep's runs), or None (a purge counted its runs when it committed them).
    """

    def __init__(self, store: Store, report: PurgeReport | OrphanReport, verdict: Verdict, *, dry_run: bool,
                 batch_size: int, lock_timeout: float, not_after: datetime | None = None,
                 boundary: Callable[[Sequence[str]], None] | None = None,
                 marker_kind: str | None = None) -> None:
        self.store, self.report, self.verdict = store, report, verdict
        self.dry_run, self.batch_size, self.lock_timeout = dry_run, batch_size, lock_timeout
        self.not_after = not_after.timestamp() if not_after is not None else None
        self.boundary = boundary
        self.marker_kind = marker_kind
        self.bytes = 0
        self.incomplete: set[str] = set()  # runs with data left behind for now: their marker stays
        self.all_incomplete = False

    def run(self) -> None:
        self._directory(STEPS, Kind.STEPS, self._step)
        self._directory(HOOKS, Kind.HOOKS, self._hook)
        self._directory(CHECKPOINTS, Kind.CHECKPOINTS, self._checkpoint)
        self._token_index()
        self._directory(EVENTS, Kind.EVENTS, self._events)
        self._directory(LOCKS, Kind.LOCK_FILES, self._lock)
        if self.boundary is not None:
            self._directory(RUNS, Kind.CANCELLATION_FLAGS, self._flag)
        self._markers(flags=self.boundary is None)

    # -- one directory ------------------------------------------------------------

    def _directory(self, directory: str, kind: str, owners_of: OwnersOf) -> None:
        for page in chunked(self._victims(directory, kind, owners_of), self.batch_size):
            self._flush(page)

    def _victims(self, directory: str, kind: str, owners_of: OwnersOf) -> Iterator[_Victim]:
        for entry in self.store.entries(directory):
            owners = owners_of(entry.name, self.verdict)
            if owners is not None and self._old_enough(directory, entry.name):
                yield _Victim(kind, directory, entry.name, owners, owners_of)

    def _flush(self, page: list[_Victim]) -> None:
        if self.boundary is not None:
            self.boundary(list(dict.fromkeys(o for victim in page for o in victim.owners)))
        fresh = self.verdict.fresh()
        for victim in page:
            if fresh is not None and (victim.owners_of(victim.name, fresh) is None
                                      or not self._old_enough(victim.directory, victim.name)):
                continue
            self._delete(victim)

    def _delete(self, victim: _Victim) -> None:
        store, name = self.store, victim.name
        try:
            count = store.count_lines(EVENTS, name) if victim.kind == Kind.EVENTS else 1
            if self.dry_run:
                st = store.lstat(victim.directory, name)
                size = st.st_size if st is not None else None
            elif victim.directory == LOCKS:
                size = unlink_lock(store, name)
            else:
                size = unlink(store, victim.directory, name, size=self.marker_kind is not None)  # bytes: orphans
        except FileNotFoundError:
            return
        except LockBusy:
            self._left_behind(victim, "is held by another process")
            return
        except NotRegular as exc:
            left_alone(self.report, store.rel(victim.directory, name), f"is {exc}")
            self._left_behind(victim, None)
            return
        if size is None:
            return
        self.bytes += size
        if victim.kind != Kind.RUNS or self.marker_kind is not None:
            self.report.add(victim.kind, count)

    def _left_behind(self, victim: _Victim, why: str | None) -> None:
        """A file of a condemned run stays for now: its run's marker stays too, for the next run."""
        self.incomplete.update(victim.owners)
        if why is not None:
            self.report.warn(f"{self.store.rel(victim.directory, victim.name)} {why}; left for the next run")

    def _old_enough(self, directory: str, name: str) -> bool:
        if self.not_after is None:
            return True
        st = self.store.lstat(directory, name)
        return st is not None and st.st_mtime < self.not_after

    # -- owners from the name ------------------------------------------------------------

    def _checkpoint(self, name: str, v: Verdict) -> Owners:
        key = stem(name, JSON)
        return v.key(key) if key else None

    def _events(self, name: str, v: Verdict) -> Owners:
        return v.one(stem(name, EVENTS_SUFFIX))

    def _flag(self, name: str, v: Verdict) -> Owners:
        return v.one(stem(name, FLAG_SUFFIX))

    def _marker_owner(self, name: str, v: Verdict) -> Owners:
        return v.one(stem(name, MARKER_SUFFIX))

    def _lock(self, name: str, v: Verdict) -> Owners:
        lock = lock_kind(name)
        if lock.kind == RUN_LOCK:
            return v.any_of(lock.runs) if lock.runs else None
        if lock.kind == CHECKPOINT_LOCK:
            return v.key(lock.key)
        if not v.orphans:
            return None  # a purged schedule's or subscription's lock goes with it (the stream sweeps)
        if lock.kind == SCHEDULE_LOCK:
            return () if not self.store.exists(SCHEDULES, f"{lock.key}{JSON}") else None
        if lock.kind == SUBSCRIPTION_LOCK:
            return () if not any(self.store.exists(SUBSCRIPTIONS, n) for n in subscription_files(lock.key)) else None
        return None

    # -- owners read from content -------------------------------------------------------

    def _step(self, name: str, v: Verdict) -> Owners:
        if not name.endswith(JSON):
            return None
        return self._owner_from_content(STEPS, name, v, step_owner)

    def _hook(self, name: str, v: Verdict) -> Owners:
        if not name.endswith(JSON):
            return None
        return self._owner_from_content(HOOKS, name, v, lambda data: hook_owner(name, data, v.exists))

    def _owner_from_content(self, directory: str, name: str, v: Verdict,
                            owner: Callable[[object], str]) -> Owners:
        try:
            return v.one(owner(self.store.read_json(directory, name)))
        except FileNotFoundError:
            return None
        except Corrupt as exc:
            if v.reporting:
                left_alone(self.report, f"{directory}/{name}", str(exc))
            return None

    # -- purge markers (last) -------------------------------------------------------------

    def _markers(self, *, flags: bool) -> None:
        """Purge markers go last, each once its run is gone. With ``flags`` (a purge: no pages announced), the
        same pass deletes cancellation flags, and a marker's flag, events file and lock files (were one
        re-created by the engine since their own pass) always before the marker."""
        for page in chunked(self._condemned_markers(flags), self.batch_size):
            self._flush(page)

    def _condemned_markers(self, flags: bool) -> Iterator[_Victim]:
        for entry in self.store.entries(RUNS, regular=False):
            if flags and entry.name.endswith(FLAG_SUFFIX):
                if entry.is_file(follow_symlinks=False) and (owners := self._flag(entry.name, self.verdict)):
                    self._delete(_Victim(Kind.CANCELLATION_FLAGS, RUNS, entry.name, owners, self._flag))
                continue
            run_id = stem(entry.name, MARKER_SUFFIX)
            if run_id is None or not self._marker_condemns(entry, run_id):
                continue
            if not self.verdict.doomed(run_id):
                continue  # another shard's run: its own purge (the same plan's) finishes it
            if flags and not self.dry_run:
                self._stragglers(run_id)
            if self.all_incomplete or run_id in self.incomplete:
                continue  # something of the run is still there: the next purge finishes it
            if self._old_enough(RUNS, entry.name):
                yield _Victim(self.marker_kind or Kind.RUNS, RUNS, entry.name, (run_id,), self._marker_owner)

    def _stragglers(self, run_id: str) -> None:
        """Right before its marker: the run's files named by its id, had an engine re-created one meanwhile."""
        files: list[tuple[str, str, str, OwnersOf]] = [
            (RUNS, flag_file(run_id), Kind.CANCELLATION_FLAGS, self._flag),
            (EVENTS, events_file(run_id), Kind.EVENTS, self._events)]
        files += [(LOCKS, lock, Kind.LOCK_FILES, self._lock) for lock in run_locks(run_id)]
        for directory, name, kind, owners_of in files:
            if self.store.is_regular(directory, name) and (owners := owners_of(name, self.verdict)) is not None:
                self._delete(_Victim(kind, directory, name, owners, owners_of))

    def _marker_condemns(self, entry: os.DirEntry[str], run_id: str) -> bool:
        what = f"{RUNS}/{entry.name}"
        if (name := run_file(run_id)) is not None and self.store.exists(RUNS, name):
            left_alone(self.report, what, f"is a purge marker beside the run's own record {RUNS}/{name} (a "
                                          "restore from backup?); it condemns nothing")
            return False
        if not entry.is_file(follow_symlinks=False):
            left_alone(self.report, what, "is a purge marker that is not a regular file; it condemns nothing")
            return False
        if not is_safe_run_id(run_id):
            left_alone(self.report, what, "is a purge marker for an unsafe run id; it condemns nothing")
            return False
        return True

    # -- the token index ---------------------------------------------------------------

    def _token_index(self) -> None:
        """Drop the entries of condemned runs: one atomic rewrite under the engine's token_index.lock."""
        if not self.store.exists(BASE, TOKEN_INDEX):
            return
        index = self.store.read_token_index()
        if not isinstance(index, dict):
            index = self._read_index_locked()  # maybe caught mid-write by the engine: read it under its lock
        if not isinstance(index, dict):
            self._index_unusable(index)
            return
        drops = self._drops(index, self.verdict)
        del index
        if not drops:
            return
        if self.boundary is not None:
            self.boundary(list(dict.fromkeys(o for _value, who in drops.values() for o in who)))
        if self.dry_run:
            self.report.add(Kind.HOOK_TOKENS, len(drops))
            return
        try:
            with self.store.lock(TOKEN_INDEX_LOCK, self.lock_timeout):
                self._rewrite_index(drops)
        except LockTimeout as exc:
            raise StorageError(f"{TOKEN_INDEX_LOCK} stayed locked for {self.lock_timeout}s; "
                               "the token index was not rewritten (the next purge retries)") from exc
        except NotRegular as exc:
            raise StorageError(f"file store {self.store.base}: .locks/{TOKEN_INDEX_LOCK} is {exc}; "
                               "the token index was not rewritten") from exc

    def _drops(self, index: dict[str, object], v: Verdict) -> Drops:
        """token -> (value, owners) for the entries of condemned runs (ownership per planning.key_owners)."""
        values = {value for value in index.values() if isinstance(value, str)}
        owners = key_owners(values, v.existing)
        drops = {}
        for token, value in index.items():
            if isinstance(value, str) and (who := v.key(value, owners[value], known=True)) is not None:
                drops[token] = (value, who)
        return drops

    def _rewrite_index(self, drops: Drops) -> None:
        index = self.store.read_token_index()
        if not isinstance(index, dict):
            self._index_unusable(index)
            return
        fresh = self.verdict.fresh()
        still = self._drops({t: index[t] for t in drops if t in index}, fresh) if fresh is not None else None
        removed = [token for token, (value, _who) in drops.items()
                   if index.get(token) == value and (still is None or token in still)]
        if not removed:
            return
        st = self.store.lstat(BASE, TOKEN_INDEX)
        before = st.st_size if st is not None else 0
        for token in removed:
            del index[token]
        data = json.dumps(index, indent=2).encode()
        atomic_write(self.store, BASE, TOKEN_INDEX, data)
        self.bytes += max(before - len(data), 0)
        self.report.add(Kind.HOOK_TOKENS, len(removed))

    def _read_index_locked(self) -> dict[str, object] | str:
        try:
            with self.store.lock(TOKEN_INDEX_LOCK, self.lock_timeout, create=not self.dry_run):
                return self.store.read_token_index()
        except (FileNotFoundError, LockTimeout, NotRegular):
            return self.store.read_token_index()

    def _index_unusable(self, why: str) -> None:
        self.all_incomplete = True
        left_alone(self.report, TOKEN_INDEX, f"is unusable ({why[:200]}); the purge markers stay until it can be read")
