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
        data = asdict(self)
        data["counts"] = dict(sorted(self.counts.items()))
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
        self.runs_by_status[status or "(none)"] += 1
        self.count_age(status, updated_at, now)

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "generated_at": _iso(self.generated_at),
            "duration_s": self.duration_s,
            "census": self.census.to_dict(),
            "purge_preview": self.purge.to_dict() if self.purge else None,
            "orphans": self.orphans.to_dict(),
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)
