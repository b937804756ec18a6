"""What a file store holds: one streaming pass over each directory (exact sizes)."""

from __future__ import annotations

import os

from workflow_retention.backends.file.layout import (
    ACKS,
    CHECKPOINTS,
    EVENTS,
    HOOKS,
    LOCKS,
    MARKER_SUFFIX,
    RUNS,
    SCHEDULES,
    SIGNALS,
    STEPS,
    STREAMS,
    SUBSCRIPTIONS,
    Corrupt,
    Layout,
    count_lines,
    load_json,
)
from workflow_retention.base import CensusJob
from workflow_retention.planning import RunRef
from workflow_retention.report import Kind, age_bucket

PROGRESS_EVERY = 5000
PURGE_MARKERS = "purge_markers"

# Directories whose every file is one record of a kind.
_PLAIN = ((STEPS, Kind.STEPS), (HOOKS, Kind.HOOKS), (CHECKPOINTS, Kind.CHECKPOINTS),
          (LOCKS, Kind.LOCK_FILES), (SCHEDULES, Kind.SCHEDULES), (STREAMS, Kind.STREAMS),
          (SUBSCRIPTIONS, Kind.SUBSCRIPTIONS), (ACKS, Kind.ACKNOWLEDGMENTS))


def take_census(layout: Layout, job: CensusJob) -> None:
    census = job.census
    census.bytes_estimated = False
    seen = 0

    def tick(what: str) -> None:
        nonlocal seen
        seen += 1
        if seen % PROGRESS_EVERY == 0:
            job.progress(what, seen)

    for entry in layout.entries(RUNS):
        _runs_entry(entry, job)
        tick(RUNS)
    for entry in layout.entries(EVENTS):
        census.count(Kind.EVENTS, _lines(entry.path), _size(entry))
        tick(EVENTS)
    for directory, kind in _PLAIN:
        for entry in layout.entries(directory):
            census.count(kind, 1, _size(entry))
            tick(directory)
    for entry in layout.entries(SIGNALS):
        census.count(Kind.SIGNALS, _array_length(entry.path), _size(entry))
    _token_index(layout, job)
    job.progress("done", seen)


def _runs_entry(entry: os.DirEntry[str], job: CensusJob) -> None:
    census, name = job.census, entry.name
    if name.endswith(".cancel"):
        census.count(Kind.CANCELLATION_FLAGS, 1, _size(entry))
    elif name.endswith(MARKER_SUFFIX):
        census.count(PURGE_MARKERS, 1, _size(entry))
    elif name.endswith(".json"):
        census.count(Kind.RUNS, 1, _size(entry))
        try:
            data = load_json(entry.path)
        except (OSError, Corrupt):
            census.runs_by_status["(unreadable)"] += 1
            return
        data = data if isinstance(data, dict) else {}
        ref = RunRef.parse(name[:-5], data.get("status"), data.get("updated_at"))
        census.runs_by_status[ref.status or "(none)"] += 1
        if ref.updated_at is not None:
            census.runs_by_age[age_bucket((job.now - ref.updated_at).total_seconds() / 86400)] += 1


def _token_index(layout: Layout, job: CensusJob) -> None:
    try:
        index = load_json(layout.token_index)
        size = os.lstat(layout.token_index).st_size
    except (OSError, Corrupt):
        return
    if isinstance(index, dict):
        job.census.count(Kind.HOOK_TOKENS, len(index), size)


def _size(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0


def _lines(path: str) -> int:
    try:
        return count_lines(path)
    except OSError:
        return 0


def _array_length(path: str) -> int:
    try:
        data = load_json(path)
    except (OSError, Corrupt):
        return 0
    return len(data) if isinstance(data, list) else 0
