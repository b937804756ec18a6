"""Reports returned by purges, orphan sweeps and audits. All serialize to JSON."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from workflow_retention.planning import TERMINAL_STATUSES


class Kind:
    """Names of the kinds of data counted in reports (the same on every backend)."""

    RUNS = "runs"
    EVENTS = "events"
    EVENT_COUNTERS = "event_counters"
    STEPS = "steps"
    CHECKPOINTS = "checkpoints"
    HOOKS = "hooks"
    HOOK_TOKENS = "hook_tokens"
    CANCELLATION_FLAGS = "cancellation_flags"
    IDEMPOTENCY_KEYS = "idempotency_keys"
    LOCK_FILES = "lock_files"
    INDEX_ENTRIES = "index_entries"
    SCHEDULES = "schedules"
    STREAMS = "streams"
    SIGNALS = "signals"
    SUBSCRIPTIONS = "subscriptions"
    ACKNOWLEDGMENTS = "acknowledgments"
    SCHEDULED_SIGNALS = "scheduled_signals"


MAX_WARNINGS = 50
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` with every non-printable character escaped (``\\x1b``, ``\\n``, ``\\u202e``...).

    Names and values read from a store may hold terminal escapes or line breaks
    that would forge log lines; anything printed from a store goes through this.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@dataclass
class _Report:
    backend: str
    dry_run: bool
    counts: Counter = field(default_factory=Counter)
    batches: int = 0
    started_at: datetime | None = None
    duration_s: float = 0.0
    stopped: str | None = None
    #: How it stopped (with ``stopped``): the :attr:`~workflow_retention.exceptions.PurgeStopped.outcome` of the stop,
    #: e.g. ``lease-lost`` or ``pin-added``, as the run history and the metrics record it.
    stop_outcome: str | None = None
    warnings: list[str] = field(default_factory=list)
    warnings_total: int = 0

    def add(self, kind: str, n: int = 1) -> None:
        if n:
            self.counts[kind] += n

    def merge(self, counts: dict[str, int]) -> None:
        for kind, n in counts.items():
            self.add(kind, n)

    def warn(self, message: str) -> None:
        """Record a problem that was skipped (corrupt record, unsafe id...); control characters are escaped."""
        self.warnings_total += 1
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(printable(message))

    def to_dict(self) -> dict[str, Any]:
        space = getattr(self, "space", None)
        data = asdict(self)
        data["counts"] = dict(sorted(self.counts.items()))
        if "space" in data:
            data["space"] = space.to_dict() if space is not None else None
        for key, value in list(data.items()):
            if isinstance(value, datetime):
                data[key] = _iso(value)
        return data

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


@dataclass
class PurgeReport(_Report):
    """What a purge deleted (or, in a dry run, would delete).

    ``counts[Kind.RUNS]`` is the number of runs; the other keys count each kind
    of data removed with them and by the schedule and stream sweeps.
    ``held`` counts expired parents kept because a child run survives;
    ``changed`` counts runs that changed between selection and deletion and so
    kept all their data; ``skipped`` counts records skipped as corrupt or unsafe
    (see ``warnings``).
    """

    cutoff: datetime | None = None
    held: int = 0
    changed: int = 0
    skipped: int = 0
    #: What the store occupies after the purge and what it gave back (the command line measures it:
    #: ``StorageBackend.space`` before and after); None when not measured.
    space: SpaceReport | None = None
    #: With an archive (docs/archive.md): its URL, the purge's id there, objects written, runs archived in
    #: them, runs already archived by an unfinished purge, runs archived and then kept (superseded).
    archive: dict[str, Any] | None = None
    #: With a retention policy (docs/policy.md): runs per rule that expired them, e.g. ``status.failed = 90d``.
    rules: dict[str, int] = field(default_factory=dict)

    @property
    def runs(self) -> int:
        return self.counts[Kind.RUNS]


@dataclass
class OrphanReport(_Report):
    """Orphans found (dry run) or deleted, per kind.

    ``bytes`` is exact where ``bytes_estimated`` is false (file stores) and an
    estimate from item sizes otherwise.
    """

    grace_s: float = 0.0
    bytes: int = 0
    bytes_estimated: bool = True
    skipped: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class KindStat:
    count: int = 0
    bytes: int = 0


@dataclass
class Census:
    """What a store holds: runs by status and age, and data per kind."""

    runs_by_status: Counter = field(default_factory=Counter)
    runs_by_age: Counter = field(default_factory=Counter)
    kinds: dict[str, KindStat] = field(default_factory=dict)
    bytes_estimated: bool = True
    #: What the census could not count, and why (a missing table, a missing index, an unreadable record).
    warnings: list[str] = field(default_factory=list)
    #: ``updated_at`` of the oldest run in a terminal status (None: no such run, or none readable).
    oldest_terminal: datetime | None = None

    def warn(self, message: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(printable(message))

    def count_run(self, status: str | None, updated_at: datetime | None, now: datetime) -> None:
        """One run record: counted by status (``(none)`` when it has none) and by the age of its ``updated_at``
        (not when it cannot be read: the purge preview reports such a run); the oldest terminal one is kept."""
        self.count_status(status)
        self.count_age(status, updated_at, now)

    def count_status(self, status: str | None, n: int = 1) -> None:
        """``n`` runs of ``status``, exactly as stored but printable (a stored terminal escape is shown escaped)."""
        self.runs_by_status[printable(status) if status else "(none)"] += n

    def count_age(self, status: str | None, updated_at: datetime | None, now: datetime) -> None:
        """The age half of :meth:`count_run`, for stores that count runs by status on their own."""
        if updated_at is None:
            return
        self.runs_by_age[age_bucket((now - updated_at).total_seconds() / 86400)] += 1
        if status in TERMINAL_STATUSES and (self.oldest_terminal is None or updated_at < self.oldest_terminal):
            self.oldest_terminal = updated_at

    def lag(self, cutoff: datetime) -> timedelta:
        """Retention lag: how far the oldest terminal run still in the store lies before ``cutoff`` (0: none)."""
        if self.oldest_terminal is None or self.oldest_terminal >= cutoff:
            return timedelta(0)
        return cutoff - self.oldest_terminal

    def count(self, kind: str, n: int = 1, size: int = 0) -> None:
        stat = self.kinds.setdefault(kind, KindStat())
        stat.count += n
        stat.bytes += size

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs_by_status": dict(sorted(self.runs_by_status.items())),
            "runs_by_age": {k: self.runs_by_age[k] for k in AGE_BUCKETS if self.runs_by_age[k]},
            "kinds": {k: asdict(v) for k, v in sorted(self.kinds.items())},
            "bytes_estimated": self.bytes_estimated,
            "warnings": list(self.warnings),
            "oldest_terminal_updated_at": _iso(self.oldest_terminal),
        }


# Age buckets (by updated_at), upper bound in days.
AGE_BUCKETS: dict[str, float] = {
    "<1d": 1,
    "1-7d": 7,
    "7-30d": 30,
    "30-90d": 90,
    "90-365d": 365,
    ">365d": float("inf"),
}


def age_bucket(age_days: float) -> str:
    for name, limit in AGE_BUCKETS.items():
        if age_days < limit:
            return name
    return ">365d"


@dataclass
class AuditReport:
    backend: str
    generated_at: datetime
    census: Census
    purge: PurgeReport | None
    orphans: OrphanReport
    duration_s: float = 0.0
    #: What the store occupies, per table (directory, index), with notes (see ``StorageBackend.space``).
    space: SpaceReport | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "generated_at": _iso(self.generated_at),
            "duration_s": self.duration_s,
            "census": self.census.to_dict(),
            "purge_preview": self.purge.to_dict() if self.purge else None,
            "orphans": self.orphans.to_dict(),
            "space": self.space.to_dict() if self.space else None,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


@dataclass
class TableSpace:
    """One table (SQL), directory (file store) or table of a key-value store, as :class:`SpaceReport` lists it.

    Every figure is None when the store cannot tell it. ``bytes``: what it occupies now (data and indexes);
    ``free_bytes``: space inside it that new rows reuse but the file system does not get back (MySQL's
    ``data_free``); ``live_rows``/``dead_rows``: PostgreSQL's estimates (dead rows wait for vacuum);
    ``last_vacuum``: the later of the last manual and the last automatic vacuum (PostgreSQL).
    """

    name: str
    bytes: int | None = None
    data_bytes: int | None = None
    index_bytes: int | None = None
    free_bytes: int | None = None
    rows: int | None = None
    dead_rows: int | None = None
    last_vacuum: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["last_vacuum"] = _iso(self.last_vacuum)
        return data


@dataclass
class SpaceReport:
    """What a store occupies, and how much of it is free space held by the store (see ``StorageBackend.space``).

    ``known`` False: the store cannot tell (``notes`` says why); the figures are then None, never invented.
    ``bytes``: the store's total (a database file, the tables' data and indexes, the files); ``free_bytes``:
    space the store holds that new data reuses but the file system does not have back (SQLite's free pages,
    MySQL's ``data_free``; PostgreSQL's dead rows are counted in ``dead_rows``, not here). ``freed_bytes``:
    bytes a purge or vacuum gave back, when it can be measured (set by the caller from two reports).
    ``vacuum``: what ``--vacuum`` ran, if it ran. ``approximate``: the figures are estimates the service
    refreshes on its own schedule (DynamoDB's, about every six hours).
    """

    backend: str
    known: bool = True
    bytes: int | None = None
    free_bytes: int | None = None
    tables: list[TableSpace] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    approximate: bool = False
    freed_bytes: int | None = None
    vacuum: str | None = None
    measured_at: datetime | None = None

    @classmethod
    def unknown(cls, backend: str, reason: str) -> SpaceReport:
        """A store that cannot tell its size: says so (``known`` False), with the reason as its note."""
        return cls(backend=backend, known=False, notes=[reason])

    def note(self, text: str) -> None:
        self.notes.append(printable(text))

    def total(self) -> None:
        """``bytes`` and ``free_bytes`` as the sums of the tables' figures that are known."""
        sizes = [t.bytes for t in self.tables if t.bytes is not None]
        free = [t.free_bytes for t in self.tables if t.free_bytes is not None]
        self.bytes = sum(sizes) if sizes else self.bytes
        self.free_bytes = sum(free) if free else self.free_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "known": self.known, "bytes": self.bytes, "free_bytes": self.free_bytes,
                "freed_bytes": self.freed_bytes, "approximate": self.approximate, "vacuum": self.vacuum,
                "measured_at": _iso(self.measured_at), "tables": [t.to_dict() for t in self.tables],
                "notes": list(self.notes)}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)
