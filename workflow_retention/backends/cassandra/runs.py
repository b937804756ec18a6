"""Reading run records and the parent index; the date and hour buckets the engine files rows under."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from workflow_retention.backends.cassandra.session import Cql
from workflow_retention.planning import RunRef, is_safe_run_id, key_prefixes, plan_deletion

# pyworkflow buckets with ``created_at.strftime(...)`` in whatever offset the datetime it
# was handed carried: the engine's own are UTC, a caller's may be anything from -12:00 to +14:00.
_EARLIEST, _LATEST = timedelta(hours=-12), timedelta(hours=14)


def run_ref(row: Any) -> RunRef:
    """A run row as a :class:`RunRef` (the row itself is its ``data``)."""
    return RunRef.parse(row.run_id, row.status, row.updated_at, row.parent_run_id, row)


def date_buckets(created_at: datetime) -> list[str]:
    """Every ``YYYY-MM-DD`` bucket pyworkflow may have filed a run created at ``created_at`` (UTC) under."""
    first, last = (created_at + _EARLIEST).date(), (created_at + _LATEST).date()
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def hour_buckets(when: datetime) -> list[str]:
    """Every ``YYYY-MM-DD-HH`` bucket pyworkflow may have filed a due schedule at ``when`` (UTC) under."""
    quarters = range(int(_EARLIEST / timedelta(minutes=15)), int(_LATEST / timedelta(minutes=15)) + 1)
    return sorted({(when + timedelta(minutes=15 * q)).strftime("%Y-%m-%d-%H") for q in quarters})


def checkpoint_owner(key: str) -> str | None:
    """The run a step checkpoint belongs to: the safe run id before the first ``:``, else None."""
    prefixes = key_prefixes(key)
    return prefixes[0] if prefixes and is_safe_run_id(prefixes[0]) else None


class RunReader:
    """Run records and children, read in ``IN`` chunks."""

    def __init__(self, cql: Cql, cutoff: datetime | None = None) -> None:
        self.cql = cql
        self.cutoff = cutoff
        #: Runs seen with rows in their ``runs_by_parent`` partition (reset per batch by the caller).
        self.parents_with_rows: set[str] = set()

    def refs(self, run_ids: Iterable[str]) -> dict[str, RunRef]:
        ids = [i for i in dict.fromkeys(run_ids) if i]
        return {row.run_id: run_ref(row) for row in self.cql.rows_in("runs_in", ids)} if ids else {}

    def present(self, run_ids: Iterable[str]) -> set[str]:
        return set(self.refs(run_ids))

    def children_of(self, parent_ids: Iterable[str]) -> dict[str, list[RunRef]]:
        rows = self.cql.rows_in("children_in", list(parent_ids))
        self.parents_with_rows.update(r.parent_run_id for r in rows)
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
