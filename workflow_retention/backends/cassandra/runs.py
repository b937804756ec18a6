"""Run records, their keys and the parent index; timestamps read as milliseconds; the engine's buckets."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from workflow_retention.planning import RunRef, plan_deletion

from .client import Cql
from .layout import Row

# pyworkflow buckets with ``created_at.strftime(...)`` in whatever offset the datetime it
# was handed carried: the engine's own are UTC, a caller's may be anything from -12:00 to +14:00.
_EARLIEST, _LATEST = timedelta(hours=-12), timedelta(hours=14)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_ms(value: int | None) -> datetime | None:
    """A ``TIMESTAMP`` read as milliseconds (layout.ms) as an aware datetime; None if missing or out of range."""
    if value is None:
        return None
    try:
        return _EPOCH + timedelta(milliseconds=value)
    except OverflowError:
        return None


def date_buckets(created_at: datetime) -> list[str]:
    """Every ``YYYY-MM-DD`` bucket pyworkflow may have filed a run created at ``created_at`` (UTC) under."""
    first, last = (created_at + _EARLIEST).date(), (created_at + _LATEST).date()
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def hour_buckets(when: datetime) -> list[str]:
    """Every ``YYYY-MM-DD-HH`` bucket pyworkflow may have filed a due schedule at ``when`` (UTC) under."""
    quarters = range(int(_EARLIEST / timedelta(minutes=15)), int(_LATEST / timedelta(minutes=15)) + 1)
    return sorted({(when + timedelta(minutes=15 * q)).strftime("%Y-%m-%d-%H") for q in quarters})


@dataclass(frozen=True)
class RunKeys:
    """What a run's cascade needs, as read from its record (or from its purge marker, which copies it).

    Timestamps are milliseconds, exactly as stored: ``updated_ms`` is bound back
    in the commit's condition, ``created_ms`` in the listing rows' keys.
    """

    run_id: str
    status: str | None
    updated_ms: int | None
    created_ms: int | None
    parent_run_id: str | None
    workflow_name: str | None
    idempotency_key: str | None

    @classmethod
    def of(cls, row: Row) -> RunKeys:
        """From a ``workflow_runs`` row (RUN_COLUMNS) or a marker row: the same column names."""
        return cls(row.run_id, row.status, row.updated_at, row.created_at, row.parent_run_id or None,
                   row.workflow_name, row.idempotency_key)

    @property
    def buckets(self) -> list[str]:
        """The date buckets of its listing rows; [] without a created_at (no listing row can exist)."""
        created = from_ms(self.created_ms)
        if created is None:
            return []
        try:
            return date_buckets(created)
        except OverflowError:
            return []

    @property
    def unreadable(self) -> list[str]:
        """Its timestamps that are stored but cannot be used (outside the datetime range)."""
        bad = ["updated_at"] if self.updated_ms is not None and from_ms(self.updated_ms) is None else []
        if self.created_ms is not None and not self.buckets:
            bad.append("created_at")
        return bad


def run_ref(row: Row) -> RunRef:
    """A run row as a :class:`RunRef` whose ``data`` is its :class:`RunKeys`.

    A run with an unusable ``created_at`` (its listing rows cannot be found) gets
    no ``updated_at`` either: it is never eligible, and it holds its parent.
    """
    keys = RunKeys.of(row)
    updated = None if keys.unreadable else from_ms(keys.updated_ms)
    return RunRef.parse(row.run_id, row.status, updated, keys.parent_run_id, keys, keys.workflow_name)


class RunReader:
    """Run records and children, read in ``IN`` chunks."""

    def __init__(self, cql: Cql, cutoff: datetime | None = None) -> None:
        self.cql = cql
        self.cutoff = cutoff

    def refs(self, run_ids: Iterable[str]) -> dict[str, RunRef]:
        ids = [i for i in dict.fromkeys(run_ids) if i]
        return {row.run_id: run_ref(row) for row in self.cql.rows_in("runs_in", ids)} if ids else {}

    def present(self, run_ids: Iterable[str]) -> set[str]:
        return set(self.refs(run_ids))

    def children_of(self, parent_ids: Iterable[str]) -> dict[str, list[RunRef]]:
        rows = self.cql.rows_in("children_in", list(parent_ids))
        kids = self.refs(r.run_id for r in rows)
        found: dict[str, list[RunRef]] = defaultdict(list)
        for row in rows:
            if row.run_id in kids:
                found[row.parent_run_id].append(kids[row.run_id])
        return found

    def deletable(self, refs: Iterable[RunRef]) -> set[str]:
        """Which of these runs a purge with ``self.cutoff`` deletes now (expired, no surviving descendant)."""
        assert self.cutoff is not None
        expired = [r for r in refs if r.eligible(self.cutoff)]
        if not expired:
            return set()
        deletable, _ = plan_deletion(expired, self.children_of, self.cutoff).order()
        return {r.run_id for r in deletable}
