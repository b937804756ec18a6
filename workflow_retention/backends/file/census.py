"""What a file store holds: one streaming pass over each directory (exact sizes)."""

from __future__ import annotations

import os

from workflow_retention.backends.file.client import Store
from workflow_retention.backends.file.layout import (
    ACKS,
    BASE,
    CHECKPOINTS,
    DIRECTORIES,
    EVENTS,
    FLAG_SUFFIX,
    HOOKS,
    JSON,
    LOCKS,
    MARKER_SUFFIX,
    RUNS,
    SCHEDULES,
    SIGNALS,
    STEPS,
    STREAMS,
    SUBSCRIPTIONS,
    TOKEN_INDEX,
    Corrupt,
)
from workflow_retention.base import CensusJob
from workflow_retention.planning import RunRef
from workflow_retention.report import Kind, SpaceReport, TableSpace
from workflow_retention.timeutil import utcnow

PROGRESS_EVERY = 5000
PURGE_MARKERS = "purge_markers"

# Directories whose every file is one record of a kind.
_PLAIN = ((STEPS, Kind.STEPS), (HOOKS, Kind.HOOKS), (CHECKPOINTS, Kind.CHECKPOINTS),
          (LOCKS, Kind.LOCK_FILES), (SCHEDULES, Kind.SCHEDULES), (STREAMS, Kind.STREAMS),
          (SUBSCRIPTIONS, Kind.SUBSCRIPTIONS), (ACKS, Kind.ACKNOWLEDGMENTS))


def census(store: Store, job: CensusJob) -> None:
    """Count every record of every kind, with exact sizes, and the runs by status and by age."""
    counts = job.census
    counts.bytes_estimated = False
    seen = 0

    def tick(what: str) -> None:
        nonlocal seen
        seen += 1
        if seen % PROGRESS_EVERY == 0:
            job.progress(what, seen)

    for entry in store.entries(RUNS, regular=False):
        _runs_entry(store, entry, job)
        tick(RUNS)
    for entry in store.entries(EVENTS):
        counts.count(Kind.EVENTS, _lines(store, entry.name), _size(entry))
        tick(EVENTS)
    for directory, kind in _PLAIN:
        for entry in store.entries(directory):
            counts.count(kind, 1, _size(entry))
            tick(directory)
    for entry in store.entries(SIGNALS):
        counts.count(Kind.SIGNALS, _array_length(store, entry.name), _size(entry))
    _token_index(store, job)
    job.progress("done", seen)


def _runs_entry(store: Store, entry: os.DirEntry[str], job: CensusJob) -> None:
    counts, name = job.census, entry.name
    regular = entry.is_file(follow_symlinks=False)
    if name.endswith(FLAG_SUFFIX) and regular:
        counts.count(Kind.CANCELLATION_FLAGS, 1, _size(entry))
    elif name.endswith(MARKER_SUFFIX):
        counts.count(PURGE_MARKERS, 1, _size(entry))
    elif name.endswith(JSON):
        counts.count(Kind.RUNS, 1, _size(entry))
        try:
            data = store.read_json(RUNS, name)
        except (FileNotFoundError, Corrupt):
            counts.runs_by_status["(unreadable)"] += 1
            return
        record = data if isinstance(data, dict) else {}
        ref = RunRef.parse(name[: -len(JSON)], record.get("status"), record.get("updated_at"))
        counts.count_run(ref.status, ref.updated_at, job.now)


def _token_index(store: Store, job: CensusJob) -> None:
    if not store.exists(BASE, TOKEN_INDEX):
        return
    index = store.read_token_index()
    st = store.lstat(BASE, TOKEN_INDEX)
    if isinstance(index, dict):
        job.census.count(Kind.HOOK_TOKENS, len(index), st.st_size if st is not None else 0)


def _size(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0


def _lines(store: Store, name: str) -> int:
    try:
        return store.count_lines(EVENTS, name)
    except (FileNotFoundError, Corrupt):
        return 0


def _array_length(store: Store, name: str) -> int:
    try:
        data = store.read_json(SIGNALS, name)
    except (FileNotFoundError, Corrupt):
        return 0
    return len(data) if isinstance(data, list) else 0


def space(store: Store, url: str) -> SpaceReport:
    """Bytes per directory (the sum of its files' sizes), files, and the disk blocks they take: one pass.

    A deleted file gives its space back to the file system at once (unless a process still holds it open),
    so a file store never holds free space of its own.
    """
    report = SpaceReport(backend=url, measured_at=utcnow(), free_bytes=0)
    blocks = 0
    for directory in (BASE, *DIRECTORIES):
        size = files = 0
        for entry in store.entries(directory, regular=True):
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            size += st.st_size
            blocks += st.st_blocks * 512
            files += 1
        if files or directory != BASE:
            name = "(base)" if directory == BASE else f"{directory}/"
            report.tables.append(TableSpace(name=name, bytes=size, data_bytes=size, rows=files))
    report.total()
    report.free_bytes = 0
    report.note(f"{sum(t.rows or 0 for t in report.tables):,} files of {report.bytes:,} B take {blocks:,} B of "
                "disk (whole blocks); a deleted file gives its space back to the file system at once")
    return report
