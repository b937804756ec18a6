"""pyworkflow-engine 0.4.0's ``FileStorageBackend`` layout: paths, lock names, safe reads and writes.

Every path is built from the base directory plus either a name returned by
``os.scandir`` (one component, never ``..``) or an id that passed
:func:`~workflow_retention.planning.is_safe_run_id`. Files are opened with
``O_NOFOLLOW`` and symlinks are never followed, so nothing outside the base
directory is read or deleted, whatever the records contain.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workflow_retention.exceptions import StorageError
from workflow_retention.planning import RunRef, is_safe_run_id

RUNS, EVENTS, STEPS, HOOKS = "runs", "events", "steps", "hooks"
SCHEDULES, CHECKPOINTS, LOCKS = "schedules", "checkpoints", ".locks"
STREAMS, SIGNALS, SUBSCRIPTIONS, ACKS = "streams", "signals", "subscriptions", "acknowledgments"
DIRECTORIES = (RUNS, EVENTS, STEPS, HOOKS, SCHEDULES, CHECKPOINTS, LOCKS, STREAMS, SIGNALS, SUBSCRIPTIONS, ACKS)
TOKEN_INDEX = "_token_index.json"
TOKEN_INDEX_LOCK = "token_index.lock"
# runs/<run_id>.json is renamed to this once a purge has committed to deleting the run.
# The engine only globs runs/*.json and opens runs/<run_id>.json, so it never reads it.
MARKER_SUFFIX = ".json.purging"
# Lock files shared by many runs (or by no run): never treated as a run's.
SHARED_LOCK_PREFIXES = ("hook_", "schedule_", "stream_", "signals_", "sub_")
# nesting_depth values above this are treated as unreadable (pyworkflow's maximum is 3).
MAX_DEPTH = 32

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Corrupt(ValueError):
    """A record that cannot be used (bad JSON, wrong shape, mismatched id)."""


def is_component(name: object) -> bool:
    """True for a usable single path component (no separator, NUL, '.' or '..')."""
    return (isinstance(name, str) and bool(name) and name not in (".", "..")
            and os.sep not in name and "\0" not in name and (os.altsep is None or os.altsep not in name))


class Layout:
    """The directories and files of one store."""

    def __init__(self, base: Path) -> None:
        self.base = base
        # Plain strings: paths are built per file on hot paths.
        self.dirs = {name: os.path.join(base, name) for name in DIRECTORIES}
        self.token_index = os.path.join(base, TOKEN_INDEX)
        self._runs = self.dirs[RUNS] + os.sep
        self._locks = self.dirs[LOCKS] + os.sep

    def check(self) -> None:
        """Refuse a store that is missing or whose directories lead outside it."""
        if not os.path.isdir(self.base):
            raise StorageError(f"file store {self.base} does not exist or is not a directory")
        if not os.path.isdir(self.dirs[RUNS]):
            raise StorageError(f"{self.base} is not a PyWorkflow file store: it has no runs/ directory")
        real = os.path.realpath(self.base)
        for name, path in self.dirs.items():
            if os.path.islink(path) or (os.path.exists(path) and os.path.dirname(os.path.realpath(path)) != real):
                raise StorageError(f"file store {self.base}: {name}/ is a symlink or leads outside the store; "
                                   "refusing to read or delete through it")
        if os.path.islink(self.token_index):
            raise StorageError(f"file store {self.base}: {TOKEN_INDEX} is a symlink; refusing to rewrite it")

    # -- paths ------------------------------------------------------------------

    def run_file(self, run_id: str) -> str:
        return f"{self._runs}{_safe(run_id)}.json"

    def marker(self, run_id: str) -> str:
        return f"{self._runs}{_safe(run_id)}{MARKER_SUFFIX}"

    def lock(self, name: str) -> str:
        if not is_component(name):
            raise StorageError(f"refusing lock file name {name!r}")
        return self._locks + name

    def file(self, directory: str, name: str) -> str:
        if not is_component(name):
            raise StorageError(f"refusing file name {name!r}")
        return os.path.join(self.dirs[directory], name)

    def entries(self, directory: str) -> Iterator[os.DirEntry[str]]:
        """Stream the regular files of a layout directory (symlinks and subdirectories are skipped)."""
        try:
            with os.scandir(self.dirs[directory]) as it:
                for entry in it:
                    if entry.is_file(follow_symlinks=False):
                        yield entry
        except FileNotFoundError:
            return

    # -- runs -------------------------------------------------------------------

    def read_run(self, run_id: str) -> RunRef:
        """The run's decision fields; FileNotFoundError if absent, Corrupt/OSError if unusable."""
        return parse_run(load_json(self.run_file(run_id)), run_id)

    def run_exists(self, run_id: str) -> bool:
        return os.path.lexists(self.run_file(run_id))

    def marker_exists(self, run_id: str) -> bool:
        return os.path.lexists(self.marker(run_id))


def _safe(run_id: str) -> str:
    if not is_safe_run_id(run_id):
        raise StorageError(f"refusing to build a path from run_id {run_id!r}")
    return run_id


def parse_run(data: Any, run_id: str) -> RunRef:
    """RunRef from a run file's JSON; ``data`` of the ref is the valid nesting depth or None."""
    if not isinstance(data, dict):
        raise Corrupt("not a JSON object")
    if data.get("run_id") != run_id:
        raise Corrupt(f"its file name says {run_id!r} but it holds run_id {data.get('run_id')!r}")
    parent = data.get("parent_run_id")
    depth = data.get("nesting_depth")
    valid_depth = depth if type(depth) is int and 0 <= depth <= MAX_DEPTH else None
    return RunRef.parse(run_id, data.get("status"), data.get("updated_at"),
                        parent if isinstance(parent, str) else None, valid_depth)


def read_bytes(path: Path | str) -> bytes:
    """Read a file without following a symlink at its last component."""
    fd = os.open(path, _READ)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_json(path: Path | str) -> Any:
    """Parse a JSON file; Corrupt if it is not valid JSON."""
    raw = read_bytes(path)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Corrupt(f"not valid JSON ({exc})") from None


def count_lines(path: Path | str) -> int:
    """Non-blank lines of an events file (the engine's event count)."""
    fd = os.open(path, _READ)
    with os.fdopen(fd, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def atomic_write(path: str, data: bytes) -> None:
    """Replace ``path`` by a temp file in the same directory + ``os.replace`` (keeps the file's mode)."""
    try:
        mode = os.lstat(path).st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, _WRITE_NEW, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def unlink_lock(path: str) -> int | None:
    """Delete a lock file while holding its flock; return its size, or None if it is held or gone.

    filelock re-checks, after winning a flock, that the file is still linked,
    so a waiter on the deleted inode retries on a fresh file: exclusion holds.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        held = os.fstat(fd)
        try:
            current = os.lstat(path)
        except FileNotFoundError:
            return None
        if (current.st_dev, current.st_ino) != (held.st_dev, held.st_ino):
            return None
        os.unlink(path)
        return held.st_size
    finally:
        os.close(fd)


def unlink(path: Path | str) -> int | None:
    """Delete a file; return its size, or None if it was already gone."""
    try:
        size = os.lstat(path).st_size
        os.unlink(path)
    except FileNotFoundError:
        return None
    return size


# -- who owns a file ------------------------------------------------------------


def lock_owners(name: str) -> tuple[str, ...]:
    """The run ids a ``.locks/`` file may be the per-run lock of (empty for shared locks).

    Per run the engine creates ``<run_id>.lock``, ``events_<run_id>.lock``,
    ``<run_id>_cancel.lock`` and ``checkpoint_<run_id>:<step_id>.lock``; a name
    such as ``events_x.lock`` could be either of two runs' locks.
    """
    if not name.endswith(".lock"):
        return ()
    stem = name[:-5]
    if name == TOKEN_INDEX_LOCK or stem.startswith(SHARED_LOCK_PREFIXES):
        return ()
    if stem.startswith("checkpoint_"):
        checkpoint = stem[len("checkpoint_"):]
        owners = [checkpoint.split(":", 1)[0]] if ":" in checkpoint else []
    else:
        owners = [stem]
        if stem.startswith("events_"):
            owners.append(stem[len("events_"):])
        if stem.endswith("_cancel"):
            owners.append(stem[: -len("_cancel")])
    return tuple(o for o in owners if is_safe_run_id(o))


def run_lock_names(run_id: str) -> tuple[str, str, str]:
    return f"{run_id}.lock", f"events_{run_id}.lock", f"{run_id}_cancel.lock"


def checkpoint_owner(name: str) -> str | None:
    """``checkpoints/<run_id>:<step_id>.json`` -> run_id (stream-step checkpoints have no ':')."""
    if not name.endswith(".json") or ":" not in name:
        return None
    owner = name.split(":", 1)[0]
    return owner if is_safe_run_id(owner) else None


def token_owner(value: object) -> str | None:
    """A token-index value ``"<run_id>:<hook_id>"`` -> run_id."""
    if not isinstance(value, str) or ":" not in value:
        return None
    owner = value.split(":", 1)[0]
    return owner if is_safe_run_id(owner) else None


def hook_owner(name: str, data: Any) -> str:
    """``hooks/<run_id>__<hook_id>.json`` or legacy ``hooks/<hook_id>.json`` -> run_id (name matches content)."""
    if not isinstance(data, dict):
        raise Corrupt("not a JSON object")
    run_id, hook_id = data.get("run_id"), data.get("hook_id")
    if not is_safe_run_id(run_id) or not isinstance(hook_id, str):
        raise Corrupt(f"run_id {run_id!r} / hook_id {hook_id!r} unusable")
    if name not in (f"{run_id}__{hook_id}.json", f"{hook_id}.json"):
        raise Corrupt(f"file name does not match run_id {run_id!r} and hook_id {hook_id!r}")
    return run_id


def step_owner(data: Any) -> str:
    """``steps/<step_id>.json`` -> the run_id inside."""
    run_id = data.get("run_id") if isinstance(data, dict) else None
    if not is_safe_run_id(run_id):
        raise Corrupt(f"run_id {run_id!r} unusable")
    return run_id
