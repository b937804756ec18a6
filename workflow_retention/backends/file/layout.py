"""pyworkflow-engine 0.4.0's ``FileStorageBackend`` layout: directory, file and lock names, run records, and
which run a file belongs to. Pure: no I/O (that is :mod:`.client`).

Every name used to open or delete a file is either a name listed by ``os.scandir`` or built here from an id
and checked to be one path component (:func:`is_component`). Which run each file belongs to is described
in docs/backends/file.md ("Which run a file belongs to"); derived keys ``<run_id>:<rest>`` and hook files
``<run_id>__<hook_id>.json`` go by :func:`workflow_retention.planning.key_owner`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import NamedTuple

from workflow_retention.planning import RunRef, is_safe_run_id, key_owner

# -- directories and shared files -----------------------------------------------------------

RUNS, EVENTS, STEPS, HOOKS = "runs", "events", "steps", "hooks"
SCHEDULES, CHECKPOINTS, LOCKS = "schedules", "checkpoints", ".locks"
STREAMS, SIGNALS, SUBSCRIPTIONS, ACKS = "streams", "signals", "subscriptions", "acknowledgments"
#: Every directory the engine creates in its ``base_path``.
DIRECTORIES = (RUNS, EVENTS, STEPS, HOOKS, SCHEDULES, CHECKPOINTS, LOCKS, STREAMS, SIGNALS, SUBSCRIPTIONS, ACKS)
#: The base directory itself (the token index lives there).
BASE = "."
TOKEN_INDEX = "_token_index.json"
TOKEN_INDEX_LOCK = "token_index.lock"
#: The directories a purge deletes from or renames in (the base: the token index), and the orphan sweep's.
PURGE_DIRECTORIES = (BASE, RUNS, EVENTS, STEPS, HOOKS, CHECKPOINTS, LOCKS, SCHEDULES, SIGNALS, SUBSCRIPTIONS, ACKS)
ORPHAN_DIRECTORIES = (BASE, RUNS, EVENTS, STEPS, HOOKS, CHECKPOINTS, LOCKS)

# -- file names -----------------------------------------------------------------------------

JSON = ".json"
#: ``runs/<run_id>.json`` is renamed to this once a purge has committed to deleting the run.
#: The engine only globs ``runs/*.json`` and opens ``runs/<run_id>.json``, so it never reads it.
MARKER_SUFFIX = ".json.purging"
FLAG_SUFFIX = ".cancel"
EVENTS_SUFFIX = ".jsonl"
LOCK_SUFFIX = ".lock"
HOOK_SEPARATOR = "__"


def is_component(name: object) -> bool:
    """True for a usable single path component (no separator, NUL, '.' or '..')."""
    return (type(name) is str and name not in ("", ".", "..") and os.sep not in name and "\0" not in name
            and (os.altsep is None or os.altsep not in name))


def stem(name: str, suffix: str) -> str | None:
    """``name`` without ``suffix``, or None if it does not end with it (or is nothing else)."""
    return name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else None


def run_file(run_id: str) -> str | None:
    """``<run_id>.json``, or None if that is not one path component (such a run cannot exist)."""
    name = f"{run_id}{JSON}"
    return name if is_component(name) else None


def marker_file(run_id: str) -> str | None:
    """``<run_id>.json.purging``, or None if that is not one path component."""
    name = f"{run_id}{MARKER_SUFFIX}"
    return name if is_component(name) else None


def flag_file(run_id: str) -> str:
    return f"{run_id}{FLAG_SUFFIX}"


def events_file(run_id: str) -> str:
    return f"{run_id}{EVENTS_SUFFIX}"


def pair_file(first: str, second: str) -> str:
    """``<first>__<second>.json``: ``hooks/<run_id>__<hook_id>.json``, ``subscriptions/<stream_id>__<step_run_id>.json``
    (the engine's separator for both)."""
    return f"{first}{HOOK_SEPARATOR}{second}{JSON}"


# -- lock names (all in .locks/) ---------------------------------------------------------------

EVENTS_PREFIX, CANCEL_SUFFIX = "events_", "_cancel"  # events_<run_id>.lock, <run_id>_cancel.lock
CHECKPOINT_PREFIX, SCHEDULE_PREFIX, SUBSCRIPTION_PREFIX = "checkpoint_", "schedule_", "sub_"
HOOK_PREFIX, STREAM_PREFIX, SIGNALS_PREFIX = "hook_", "stream_", "signals_"
#: Locks shared by many runs, never deleted (with token_index.lock).
SHARED_PREFIXES = (HOOK_PREFIX, STREAM_PREFIX, SIGNALS_PREFIX)


def lock_file(prefix: str, key: str, suffix: str = "") -> str:
    """``<prefix><key><suffix>.lock``, e.g. ``lock_file(SCHEDULE_PREFIX, schedule_id)``."""
    return f"{prefix}{key}{suffix}{LOCK_SUFFIX}"


def run_lock(run_id: str) -> str:
    """``<run_id>.lock``: the lock the engine changes a run under."""
    return lock_file("", run_id)


def run_locks(run_id: str) -> tuple[str, str, str]:
    """Every per-run lock file of a run: ``<id>.lock``, ``events_<id>.lock``, ``<id>_cancel.lock``."""
    return run_lock(run_id), lock_file(EVENTS_PREFIX, run_id), lock_file("", run_id, CANCEL_SUFFIX)


def hook_lock(hook_id: str) -> str:
    """The engine's ``hook_<hook_id>.lock``, with ``/`` and ``:`` replaced as the engine does."""
    return lock_file(HOOK_PREFIX, hook_id.replace("/", "_").replace(":", "_"))


def subscription_lock(stream_id: str, step_run_id: str) -> str:
    return lock_file(SUBSCRIPTION_PREFIX, f"{stream_id}_{step_run_id}")


# -- records ----------------------------------------------------------------------------------


class Corrupt(ValueError):
    """A record that cannot be used: not a regular file, not valid JSON, wrong shape, mismatched id."""


def parse_json(raw: bytes) -> object:
    """JSON from bytes; Corrupt if invalid (including nesting too deep to parse)."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise Corrupt(f"not valid JSON ({str(exc)[:120]})") from None


# -- run records ------------------------------------------------------------------------------

# nesting_depth values above this are treated as unreadable.
MAX_DEPTH = 32
# pyworkflow refuses to start a child under a run this deep (MAX_NESTING_DEPTH in
# pyworkflow/primitives/child_workflow.py), and a run's depth never changes: such a run has no children.
MAX_NESTING_DEPTH = 3
# How much of an unreadable run file is scanned for the parent it may name.
SCAN_LIMIT = 32 << 20


def parse_run(data: object, run_id: str) -> RunRef:
    """RunRef from a run file's JSON; ``data`` of the ref is the valid nesting depth or None (see :func:`depth`)."""
    if not isinstance(data, dict):
        raise Corrupt("not a JSON object")
    if data.get("run_id") != run_id:
        raise Corrupt(f"its file name says {run_id!r} but it holds run_id {str(data.get('run_id'))[:200]!r}")
    parent = data.get("parent_run_id")
    nesting = data.get("nesting_depth")
    valid_depth = nesting if type(nesting) is int and 0 <= nesting <= MAX_DEPTH else None
    return RunRef.parse(run_id, data.get("status"), data.get("updated_at"),
                        parent if isinstance(parent, str) else None, valid_depth, data.get("workflow_name"))


def depth(ref: RunRef) -> int | None:
    """The run's ``nesting_depth`` as parsed by :func:`parse_run`; None if it could not be read."""
    return ref.data if isinstance(ref.data, int) else None


def level(ref: RunRef) -> int:
    """The nesting depth a purge orders by (unreadable: 0, the shallowest, so a child never comes after it)."""
    found = depth(ref)
    return found if found is not None else 0


def can_have_children(ref: RunRef) -> bool:
    found = depth(ref)
    return found is None or found < MAX_NESTING_DEPTH


_STRING = rb'"([^"\\]*(?:\\.[^"\\]*)*)"'
_ANY_PARENT = re.compile(rb'"parent_run_id"\s*:\s*' + _STRING, re.DOTALL)
_TOKEN = re.compile(rb'\s*(?:' + _STRING + rb'|([{}\[\]:,])|([^\s{}\[\]:,"]+))', re.DOTALL)
_UNKNOWN = object()


def possible_parents(raw: bytes) -> tuple[set[str], bool]:
    """The parents an unusable run file may name, and whether its own parent is known.

    A readable JSON object (whose run_id disagrees with its name) gives its
    ``parent_run_id`` directly. Otherwise the first :data:`SCAN_LIMIT` bytes are
    scanned: every ``"parent_run_id": "<id>"`` anywhere names a possible parent,
    and the parent is known only if the record's own (top-level) key is found.
    """
    try:
        data = parse_json(raw)
    except Corrupt:
        pass
    else:
        if not isinstance(data, dict):
            return set(), False
        parent = data.get("parent_run_id")
        return ({parent} if isinstance(parent, str) else set()), parent is None or isinstance(parent, str)
    head = raw[:SCAN_LIMIT]
    found = {text for m in _ANY_PARENT.finditer(head) if (text := _decode(m.group(1))) is not None}
    own = _top_level_parent(head)
    if isinstance(own, str):
        found.add(own)
    return found, own is None or isinstance(own, str)


def _decode(body: bytes) -> str | None:
    try:
        text = json.loads(b'"' + body + b'"')
    except (ValueError, UnicodeDecodeError):
        return None
    return text if isinstance(text, str) else None


def _top_level_parent(raw: bytes) -> object:
    """The top-level ``parent_run_id`` of a JSON object however damaged: a str, None (null), or _UNKNOWN.

    A bounded, iterative tokenizer (no recursion, so nesting depth does not
    matter): it stops at the first token it cannot read (a truncated file).
    """
    pos, nesting, state, key = 0, 0, "start", None
    while True:
        match = _TOKEN.match(raw, pos)
        if match is None or match.end() == pos:
            return _UNKNOWN
        pos = match.end()
        string, punct, bare = match.groups()
        if nesting > 1:  # inside a value of the top-level object: only count brackets
            if punct in (b"{", b"["):
                nesting += 1
            elif punct in (b"}", b"]"):
                nesting -= 1
            continue
        if state == "start":
            if punct != b"{":
                return _UNKNOWN
            nesting, state = 1, "key"
        elif state == "key":
            if string is None:
                return _UNKNOWN  # '}' (no such key) or not an object
            key, state = string, "colon"
        elif state == "colon":
            if punct != b":":
                return _UNKNOWN
            state = "value"
        elif state == "value":
            if key == b"parent_run_id":
                if string is not None:
                    text = _decode(string)
                    return text if text is not None else _UNKNOWN
                return None if bare == b"null" else _UNKNOWN
            if punct in (b"{", b"["):
                nesting = 2
            elif punct is not None:
                return _UNKNOWN
            state = "comma"
        elif state == "comma":
            if nesting == 1 and punct == b",":
                state = "key"
            else:
                return _UNKNOWN


# -- who owns a file ------------------------------------------------------------------------

RUN_LOCK, CHECKPOINT_LOCK, SCHEDULE_LOCK, SUBSCRIPTION_LOCK, SHARED_LOCK = (
    "run", "checkpoint", "schedule", "subscription", "shared")


class LockKind(NamedTuple):
    """What a ``.locks/`` file is the lock of (see :func:`lock_kind`)."""

    kind: str
    #: RUN_LOCK: the runs its name may denote (``events_x.lock`` could be either of two runs').
    runs: tuple[str, ...] = ()
    #: CHECKPOINT_LOCK: the checkpoint key; SCHEDULE_LOCK: the schedule id;
    #: SUBSCRIPTION_LOCK: ``<stream_id>_<step_run_id>``.
    key: str = ""


def lock_kind(name: str) -> LockKind:
    """What a ``.locks/`` file is the lock of.

    A per-run lock (``<id>.lock``, ``events_<id>.lock`` or ``<id>_cancel.lock``),
    a checkpoint's, a schedule's or a subscription's, or SHARED_LOCK for locks
    that are never deleted (token index, hooks, streams, signals).
    """
    lock_stem = stem(name, LOCK_SUFFIX)
    if lock_stem is None or name == TOKEN_INDEX_LOCK:
        return LockKind(SHARED_LOCK)
    for prefix, kind in ((CHECKPOINT_PREFIX, CHECKPOINT_LOCK), (SCHEDULE_PREFIX, SCHEDULE_LOCK),
                         (SUBSCRIPTION_PREFIX, SUBSCRIPTION_LOCK)):
        if lock_stem.startswith(prefix) and len(lock_stem) > len(prefix):
            return LockKind(kind, key=lock_stem[len(prefix):])
    if lock_stem.startswith(SHARED_PREFIXES):
        return LockKind(SHARED_LOCK)
    owners = [lock_stem]
    if lock_stem.startswith(EVENTS_PREFIX):
        owners.append(lock_stem[len(EVENTS_PREFIX):])
    if lock_stem.endswith(CANCEL_SUFFIX):
        owners.append(lock_stem[: -len(CANCEL_SUFFIX)])
    return LockKind(RUN_LOCK, runs=tuple(o for o in owners if is_safe_run_id(o)))


def subscription_files(rest: str) -> list[str]:
    """The ``subscriptions/`` names a ``sub_<stream_id>_<step_run_id>.lock`` may belong to (ids contain '_')."""
    return [pair_file(rest[:i], rest[i + 1:]) for i, c in enumerate(rest)
            if c == "_" and 0 < i < len(rest) - 1]


def hook_owner(name: str, data: object, exists: Callable[[str], bool]) -> str:
    """The run a ``hooks/`` file belongs to; Corrupt if its content is unusable or disagrees with its name.

    ``hooks/<run_id>__<hook_id>.json`` belongs to the run its path names (the
    longest ``__``-prefix that is an existing run, as ids may contain ``__``:
    :func:`~workflow_retention.planning.key_owner`); only a legacy
    ``hooks/<hook_id>.json`` is attributed by its content.
    """
    if not isinstance(data, dict):
        raise Corrupt("not a JSON object")
    run_id, hook_id = data.get("run_id"), data.get("hook_id")
    if not isinstance(run_id, str) or not isinstance(hook_id, str) \
            or name not in (pair_file(run_id, hook_id), f"{hook_id}{JSON}"):
        raise Corrupt(f"its name does not match its run_id {str(run_id)[:200]!r} and hook_id {str(hook_id)[:200]!r}")
    owner = key_owner(name[: -len(JSON)], exists, HOOK_SEPARATOR)
    return owner if owner is not None else run_id


def step_owner(data: object) -> str:
    """``steps/<step_id>.json`` -> the run_id inside."""
    run_id = data.get("run_id") if isinstance(data, dict) else None
    if not isinstance(run_id, str) or not run_id:
        raise Corrupt(f"run_id {str(run_id)[:200]!r} unusable")
    return run_id
