"""The cascade: each directory of the store streamed once, deleting the files of condemned runs.

A purge condemns the runs it has committed (their purge marker exists); the
orphan sweep condemns run ids that have no run file. Either way the sweep
streams ``steps/``, ``hooks/``, ``checkpoints/``, the token index, ``events/``,
``.locks/`` and then ``runs/`` (flags, then purge markers last), so a crash
at any point leaves markers or orphans that the next pass finds again.
Deletions go in pages of ``batch_size``; with a ``boundary`` (the orphan
sweep) each page is announced first and re-checked right before deleting.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from filelock import FileLock, Timeout

from workflow_retention.backends.file.layout import (
    CHECKPOINTS,
    EVENTS,
    HOOKS,
    LOCKS,
    MARKER_SUFFIX,
    RUNS,
    STEPS,
    TOKEN_INDEX_LOCK,
    Corrupt,
    Layout,
    atomic_write,
    checkpoint_owner,
    count_lines,
    hook_owner,
    load_json,
    lock_owners,
    step_owner,
    token_owner,
    unlink,
    unlink_lock,
)
from workflow_retention.exceptions import StorageError
from workflow_retention.planning import is_safe_run_id
from workflow_retention.report import Kind

CACHE_SIZE = 1024


@dataclass(frozen=True)
class Verdict:
    """Whose files go. ``doomed``/``alive`` may be cached; ``fresh`` is the uncached re-check."""

    doomed: Callable[[str], bool]
    alive: Callable[[str], bool]
    fresh: Callable[[str], bool] | None = None

    @classmethod
    def cached(cls, doomed: Callable[[str], bool], alive: Callable[[str], bool], *,
               recheck: bool) -> Verdict:
        return cls(lru_cache(CACHE_SIZE)(doomed), lru_cache(CACHE_SIZE)(alive), doomed if recheck else None)


@dataclass
class _Victim:
    kind: str
    path: str
    owners: tuple[str, ...]


def condemned(owners: Sequence[str], doomed: Callable[[str], bool], alive: Callable[[str], bool]) -> bool:
    """A file goes when one of the runs it may belong to is doomed and none of them is alive."""
    if len(owners) == 1:
        return doomed(owners[0])
    return bool(owners) and any(doomed(o) for o in owners) and not any(alive(o) for o in owners)


class Sweep:
    def __init__(self, layout: Layout, report: Any, verdict: Verdict, *, dry_run: bool, batch_size: int,
                 lock_timeout: float, not_after: datetime | None = None,
                 boundary: Callable[[Sequence[str]], None] | None = None,
                 marker_kind: str | None = None) -> None:
        self.layout, self.report, self.verdict = layout, report, verdict
        self.dry_run, self.batch_size, self.lock_timeout = dry_run, batch_size, lock_timeout
        self.not_after = not_after.timestamp() if not_after is not None else None
        self.boundary = boundary
        self.marker_kind = marker_kind  # count purge markers under this kind (orphan sweep) or not at all
        self.bytes = 0

    def run(self) -> None:
        self._directory(STEPS, Kind.STEPS, self._step)
        self._directory(HOOKS, Kind.HOOKS, self._hook)
        self._directory(CHECKPOINTS, Kind.CHECKPOINTS, lambda e: _one(checkpoint_owner(e.name)))
        self._token_index()
        self._directory(EVENTS, Kind.EVENTS, lambda e: _one(_stem(e.name, ".jsonl")))
        self._directory(LOCKS, Kind.LOCK_FILES, lambda e: lock_owners(e.name))
        self._directory(RUNS, Kind.CANCELLATION_FLAGS, lambda e: _one(_stem(e.name, ".cancel")))
        self._directory(RUNS, self.marker_kind or Kind.RUNS, lambda e: _one(_stem(e.name, MARKER_SUFFIX)))

    # -- one directory ------------------------------------------------------------

    def _directory(self, directory: str, kind: str, owners_of: Callable[[os.DirEntry[str]], tuple[str, ...]]) -> None:
        page: list[_Victim] = []
        v = self.verdict
        for entry in self.layout.entries(directory):
            owners = owners_of(entry)
            if owners and condemned(owners, v.doomed, v.alive) and self._old_enough(entry.path):
                page.append(_Victim(kind, entry.path, owners))
                if len(page) >= self.batch_size:
                    self._flush(page)
                    page = []
        if page:
            self._flush(page)

    def _flush(self, page: list[_Victim]) -> None:
        if self.boundary is not None:
            self.boundary(list(dict.fromkeys(o for victim in page for o in victim.owners)))
        for victim in page:
            if self.verdict.fresh is not None and not (
                    condemned(victim.owners, self.verdict.fresh, _not(self.verdict.fresh))
                    and self._old_enough(victim.path)):
                continue
            self._delete(victim)

    def _delete(self, victim: _Victim) -> None:
        try:
            count = count_lines(victim.path) if victim.kind == Kind.EVENTS else 1
            if self.dry_run:
                size: int | None = os.lstat(victim.path).st_size
            elif victim.kind == Kind.LOCK_FILES:
                size = unlink_lock(victim.path)
            else:
                size = unlink(victim.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            if victim.kind != Kind.LOCK_FILES:
                raise
            self.report.skipped += 1  # a lock file we cannot open (and so cannot lock) stays
            self.report.warn(f".locks/{os.path.basename(victim.path)}: {exc}; left alone")
            return
        if size is None:
            return
        self.bytes += size
        if victim.kind != Kind.RUNS or self.marker_kind is not None:
            self.report.add(victim.kind, count)

    def _old_enough(self, path: str) -> bool:
        if self.not_after is None:
            return True
        try:
            return os.lstat(path).st_mtime < self.not_after
        except FileNotFoundError:
            return False

    # -- owners read from content -------------------------------------------------------

    def _step(self, entry: os.DirEntry[str]) -> tuple[str, ...]:
        if not entry.name.endswith(".json"):
            return ()
        return self._owner_from_content(entry, step_owner)

    def _hook(self, entry: os.DirEntry[str]) -> tuple[str, ...]:
        if not entry.name.endswith(".json"):
            return ()
        return self._owner_from_content(entry, lambda data: hook_owner(entry.name, data))

    def _owner_from_content(self, entry: os.DirEntry[str], owner: Callable[[Any], str]) -> tuple[str, ...]:
        try:
            return (owner(load_json(entry.path)),)
        except FileNotFoundError:
            return ()
        except (Corrupt, OSError) as exc:
            self.report.skipped += 1
            self.report.warn(f"{os.path.basename(os.path.dirname(entry.path))}/{entry.name}: {exc}; left alone")
            return ()

    # -- the token index ---------------------------------------------------------------

    def _token_index(self) -> None:
        """Drop the entries of condemned runs: one atomic rewrite under the engine's token_index.lock."""
        if not os.path.lexists(self.layout.token_index):
            return
        index = self._load_index()
        if index is None:
            return
        v = self.verdict
        drops = {token: value for token, value in index.items()
                 if (owner := token_owner(value)) is not None and v.doomed(owner)}
        del index
        if not drops:
            return
        if self.boundary is not None:
            self.boundary(list(dict.fromkeys(token_owner(value) for value in drops.values())))
        if self.dry_run:
            self._rewrite_index(drops, write=False)
            return
        lock = FileLock(self.layout.lock(TOKEN_INDEX_LOCK), timeout=self.lock_timeout)
        try:
            with lock:
                self._rewrite_index(drops, write=True)
        except Timeout as exc:
            raise StorageError(f"{TOKEN_INDEX_LOCK} stayed locked for {self.lock_timeout}s; "
                               "the token index was not rewritten (the next purge retries)") from exc

    def _rewrite_index(self, drops: dict[str, Any], *, write: bool) -> None:
        index = self._load_index()
        if index is None:
            return
        fresh = self.verdict.fresh
        removed = [token for token, value in drops.items() if token in index and index[token] == value
                   and (fresh is None or fresh(token_owner(value)))]  # type: ignore[arg-type]
        if not removed:
            return
        before = os.lstat(self.layout.token_index).st_size
        for token in removed:
            del index[token]
        data = json.dumps(index, indent=2).encode()
        if write:
            atomic_write(self.layout.token_index, data)
        self.bytes += max(before - len(data), 0)
        self.report.add(Kind.HOOK_TOKENS, len(removed))

    def _load_index(self) -> dict[str, Any] | None:
        try:
            index = load_json(self.layout.token_index)
        except FileNotFoundError:
            return None
        except (Corrupt, OSError) as exc:
            index = exc
        if not isinstance(index, dict):
            self.report.skipped += 1
            self.report.warn(f"_token_index.json is unusable ({index!r:.200}); left alone")
            return None
        return index


def _one(owner: str | None) -> tuple[str, ...]:
    return (owner,) if owner is not None and is_safe_run_id(owner) else ()


def _stem(name: str, suffix: str) -> str | None:
    return name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else None


def _not(predicate: Callable[[str], bool]) -> Callable[[str], bool]:
    return lambda run_id: not predicate(run_id)
