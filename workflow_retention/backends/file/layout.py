"""pyworkflow-engine 0.4.0's ``FileStorageBackend`` layout: names, which run a file belongs to, run records.

No I/O here (see :mod:`.fs`). Every name used to open or delete a file is
either a name listed by ``os.scandir`` or built from an id and checked to be
one path component, and it is used relative to a directory descriptor.

Which run a file belongs to:

* ``runs/<id>.json``, ``runs/<id>.cancel``, ``events/<id>.jsonl``: the id in the name;
* ``checkpoints/<key>.json``, ``.locks/checkpoint_<key>.lock`` and token-index
  values ``<key>`` (``<run_id>:<rest>``): :func:`~workflow_retention.planning.key_owner`,
  the longest ``:``-prefix naming an existing run (run ids may contain ``:``);
* ``hooks/<run_id>__<hook_id>.json``: its path (the longest ``__``-prefix naming an
  existing run); only a legacy ``hooks/<hook_id>.json`` is attributed by content;
* ``steps/<step_id>.json``: the ``run_id`` inside;
* ``.locks/<id>.lock``, ``events_<id>.lock``, ``<id>_cancel.lock``: the runs the name may denote.
"""

from __future__ import annotations

import json
import re
from typing import Any

from workflow_retention.backends.file.fs import TOKEN_INDEX_LOCK, Corrupt, is_component, parse_json
from workflow_retention.planning import RunRef, is_safe_run_id

# runs/<run_id>.json is renamed to this once a purge has committed to deleting the run.
# The engine only globs runs/*.json and opens runs/<run_id>.json, so it never reads it.
MARKER_SUFFIX = ".json.purging"
# nesting_depth values above this are treated as unreadable.
MAX_DEPTH = 32
# pyworkflow refuses to start a child under a run this deep (MAX_NESTING_DEPTH in
# pyworkflow/primitives/child_workflow.py), and a run's depth never changes: such a run has no children.
MAX_NESTING_DEPTH = 3
# How much of an unreadable run file is scanned for the parent it may name.
SCAN_LIMIT = 32 << 20
HOOK_SEPARATOR = "__"


def run_file(run_id: str) -> str | None:
    """``<run_id>.json``, or None if that is not one path component (such a run cannot exist)."""
    name = f"{run_id}.json"
    return name if is_component(name) else None


def marker_file(run_id: str) -> str | None:
    name = f"{run_id}{MARKER_SUFFIX}"
    return name if is_component(name) else None


def stem(name: str, suffix: str) -> str | None:
    return name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else None


# -- run records ------------------------------------------------------------------------


def parse_run(data: Any, run_id: str) -> RunRef:
    """RunRef from a run file's JSON; ``data`` of the ref is the valid nesting depth or None."""
    if not isinstance(data, dict):
        raise Corrupt("not a JSON object")
    if data.get("run_id") != run_id:
        raise Corrupt(f"its file name says {run_id!r} but it holds run_id {str(data.get('run_id'))[:200]!r}")
    parent = data.get("parent_run_id")
    depth = data.get("nesting_depth")
    valid_depth = depth if type(depth) is int and 0 <= depth <= MAX_DEPTH else None
    return RunRef.parse(run_id, data.get("status"), data.get("updated_at"),
                        parent if isinstance(parent, str) else None, valid_depth)


def level(ref: RunRef) -> int:
    """The nesting depth a purge orders by (unreadable: 0, the shallowest, so a child never comes after it)."""
    return ref.data if ref.data is not None else 0


def can_have_children(ref: RunRef) -> bool:
    return ref.data is None or ref.data < MAX_NESTING_DEPTH


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


def _top_level_parent(raw: bytes) -> Any:
    """The top-level ``parent_run_id`` of a JSON object however damaged: a str, None (null), or _UNKNOWN.

    A bounded, iterative tokenizer (no recursion, so nesting depth does not
    matter): it stops at the first token it cannot read (a truncated file).
    """
    pos, depth, state, key = 0, 0, "start", None
    while True:
        match = _TOKEN.match(raw, pos)
        if match is None or match.end() == pos:
            return _UNKNOWN
        pos = match.end()
        string, punct, bare = match.groups()
        if depth > 1:  # inside a value of the top-level object: only count brackets
            if punct in (b"{", b"["):
                depth += 1
            elif punct in (b"}", b"]"):
                depth -= 1
            continue
        if state == "start":
            if punct != b"{":
                return _UNKNOWN
            depth, state = 1, "key"
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
                    return _decode(string) if _decode(string) is not None else _UNKNOWN
                return None if bare == b"null" else _UNKNOWN
            if punct in (b"{", b"["):
                depth = 2
            elif punct is not None:
                return _UNKNOWN
            state = "comma"
        elif state == "comma":
            if depth == 1 and punct == b",":
                state = "key"
            else:
                return _UNKNOWN


# -- who owns a file ------------------------------------------------------------------------


def lock_kind(name: str) -> tuple[str, Any]:
    """What a ``.locks/`` file is the lock of.

    ``("run", owners)``: a per-run lock (``<id>.lock``, ``events_<id>.lock`` or
    ``<id>_cancel.lock``; ``events_x.lock`` could be either of two runs');
    ``("checkpoint", key)``; ``("schedule", schedule_id)``; ``("subscription",
    "<stream_id>_<step_run_id>")``; ``("shared", None)`` for locks that are
    never deleted (token index, hooks, streams, signals).
    """
    lock_stem = stem(name, ".lock")
    if lock_stem is None or name == TOKEN_INDEX_LOCK:
        return "shared", None
    for prefix, kind in (("checkpoint_", "checkpoint"), ("schedule_", "schedule"), ("sub_", "subscription")):
        if lock_stem.startswith(prefix) and len(lock_stem) > len(prefix):
            return kind, lock_stem[len(prefix):]
    if lock_stem.startswith(("hook_", "stream_", "signals_")):
        return "shared", None
    owners = [lock_stem]
    if lock_stem.startswith("events_"):
        owners.append(lock_stem[len("events_"):])
    if lock_stem.endswith("_cancel"):
        owners.append(lock_stem[: -len("_cancel")])
    return "run", tuple(o for o in owners if is_safe_run_id(o))


def run_lock(run_id: str) -> str:
    return f"{run_id}.lock"


def subscription_files(rest: str) -> list[str]:
    """The ``subscriptions/`` names a ``sub_<stream_id>_<step_run_id>.lock`` may belong to (ids contain '_')."""
    return [f"{rest[:i]}__{rest[i + 1:]}.json" for i, c in enumerate(rest) if c == "_" and 0 < i < len(rest) - 1]


def hook_owner(name: str, data: Any, exists: Any) -> str:
    """The run a ``hooks/`` file belongs to; Corrupt if its content is unusable or disagrees with its name.

    ``hooks/<run_id>__<hook_id>.json`` belongs to the run its path names (the
    longest ``__``-prefix that is an existing run, as ids may contain ``__``);
    only a legacy ``hooks/<hook_id>.json`` is attributed by its content.
    """
    if not isinstance(data, dict):
        raise Corrupt("not a JSON object")
    run_id, hook_id = data.get("run_id"), data.get("hook_id")
    if not isinstance(run_id, str) or not isinstance(hook_id, str) \
            or name not in (f"{run_id}{HOOK_SEPARATOR}{hook_id}.json", f"{hook_id}.json"):
        raise Corrupt(f"its name does not match its run_id {str(run_id)[:200]!r} and hook_id {str(hook_id)[:200]!r}")
    parts = name[:-5].split(HOOK_SEPARATOR)
    for n in range(len(parts) - 1, 0, -1):
        prefix = HOOK_SEPARATOR.join(parts[:n])
        if exists(prefix):
            return prefix
    return run_id


def step_owner(data: Any) -> str:
    """``steps/<step_id>.json`` -> the run_id inside."""
    run_id = data.get("run_id") if isinstance(data, dict) else None
    if not isinstance(run_id, str) or not run_id:
        raise Corrupt(f"run_id {str(run_id)[:200]!r} unusable")
    return run_id
