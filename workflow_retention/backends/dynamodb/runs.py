"""Reading run records: by key (BatchGetItem) and by parent (GSI4), as the planner's :class:`RunRef`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from workflow_retention.planning import TERMINAL_STATUSES, RunRef, chunked, newest_terminal
from workflow_retention.timeutil import parse_timestamp

from . import expr
from .client import IN_VALUES, SCAN_PAGE, Table
from .layout import Item, run_key, text

RUN_FIELDS = ("PK", "status", "updated_at", "parent_run_id", "workflow_name")


@dataclass(frozen=True)
class Version:
    """A run record as read: its raw ``status`` and ``updated_at`` (the commit's condition, the marker's
    record) and ``read_at`` (monotonic seconds, for the live-engine windows the purge logs)."""

    status: str | None
    updated_at: str | None
    read_at: float


def version(ref: RunRef) -> Version:
    """The :class:`Version` a :class:`RunRef` of this package carries in ``data``."""
    if not isinstance(ref.data, Version):
        raise TypeError(f"run {ref.run_id!r} was not read by the DynamoDB backend")
    return ref.data


def run_ref(item: Item) -> RunRef:
    """The run as read now (``data``: its :class:`Version`)."""
    seen = Version(text(item, "status"), text(item, "updated_at"), time.monotonic())
    return RunRef.parse(item["PK"]["S"][len("RUN#"):], seen.status, seen.updated_at, text(item, "parent_run_id"),
                        seen, text(item, "workflow_name"))


def get_runs(table: Table, ids: Iterable[str]) -> dict[str, RunRef]:
    """The run records of ``ids`` that exist (strongly consistent)."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    items = table.get_many([run_key(i) for i in wanted], expr.projection(*RUN_FIELDS))
    return {ref.run_id: ref for ref in map(run_ref, items)}


def readable(value: str | None) -> bool:
    """Whether a stored timestamp parses (a run whose created_at does not is not ranked by keep_last)."""
    try:
        parse_timestamp(value)
    except (TypeError, ValueError):
        return False
    return True


def newest_runs(table: Table, names: Iterable[str], n: int) -> dict[str, list[str]]:
    """keep_last: the ``n`` most recent terminal runs of each workflow name, from GSI2 (``WORKFLOW#<name>``,
    sorted by ``created_at``) read newest first, page by page, until ``n`` terminal runs are found (schedules,
    which share the partition, and live runs are passed over)."""
    found: dict[str, list[str]] = {}
    for name in sorted(set(names)):
        seen: list[tuple[str, str, str | None, str | None]] = []
        instants: list[datetime] = []  # created_at of the terminal runs met
        params = expr.query("GSI2PK", f"WORKFLOW#{name}", index="GSI2",
                            fields=("PK", "SK", "status", "created_at", "GSI2SK"), limit=SCAN_PAGE)
        params["ScanIndexForward"] = False
        for page in table.pages("query", **params):
            for item in page:
                key = text(item, "PK") or ""
                if key.startswith("RUN#") and text(item, "SK") == "#METADATA" \
                        and text(item, "status") in TERMINAL_STATUSES and readable(text(item, "created_at")):
                    seen.append((name, key[len("RUN#"):], text(item, "status"), text(item, "created_at")))
                    instants.append(parse_timestamp(text(item, "created_at")))
            last = _wall(text(page[-1], "GSI2SK")) if page else None
            # GSI2SK sorts by the writer's wall-clock time: every item after ``last`` was created at most
            # OFFSET_SLACK after last's wall time. Stop once that is before the n-th newest instant met (strictly:
            # runs created at the same instant as it go by run_id)
            if len(instants) >= n and last is not None and last + OFFSET_SLACK < sorted(instants, reverse=True)[n - 1]:
                break
        found.update(newest_terminal(seen, n))
    return found


#: More than the largest UTC offset a created_at text can carry (UTC-12 gives an instant 12 hours after its text).
OFFSET_SLACK = timedelta(hours=14)


def _wall(value: str | None) -> datetime | None:
    """The wall-clock time an ISO ``created_at`` text starts with (what GSI2SK's order follows), as if UTC; None
    when it does not start with one (never a reason to stop reading)."""
    try:
        return datetime.fromisoformat(value[:19]).replace(tzinfo=UTC) if value else None
    except ValueError:
        return None


def children_of(table: Table, parent_ids: Iterable[str]) -> dict[str, list[RunRef]]:
    """Child runs of each parent, from the parent index GSI4 (one paged PartiQL ``IN`` over 50 parents)."""
    parents = sorted(set(parent_ids))
    found: dict[str, list[RunRef]] = {p: [] for p in parents}

    def some(chunk: list[str]) -> list[tuple[str, RunRef]]:
        statement = expr.select_in(table.name, "GSI4PK", len(chunk), fields=(*RUN_FIELDS, "GSI4PK"), index="GSI4")
        pages = table.select(statement, [{"S": f"PARENT#{p}"} for p in chunk], limit=SCAN_PAGE)
        return [((text(i, "GSI4PK") or "")[len("PARENT#"):], run_ref(i)) for page in pages for i in page]

    for part in table.map(some, list(chunked(parents, IN_VALUES))):
        for parent, ref in part:
            if parent in found:
                found[parent].append(ref)
    return found
