"""The baseline's other sweeps on DynamoDB: soft-deleted schedules (GSI1) and old stream data.

Stream data has no index: its items are judged page by page in the purge's one table Scan
(``Purge.scan`` in ``purge.py``, which also takes the committed runs' checkpoints).
"""

from __future__ import annotations

from datetime import datetime

from workflow_retention.base import PurgeJob
from workflow_retention.planning import DELETED_SCHEDULE, TERMINAL_SUBSCRIPTIONS, Reporter
from workflow_retention.report import Kind
from workflow_retention.timeutil import older

from . import expr
from .client import Table
from .layout import Item, key_of, leave, text, unreadable, written

#: The attributes the Scan must return for :func:`old_stream_items` (besides PK and SK).
STREAM_FIELDS = ("status", "created_at", "published_at", "acknowledged_at")


def stream_kind(item: Item) -> tuple[str, str] | None:
    """``(kind, the attribute that dates it)`` of a stream item a purge may delete; None for any other item.

    Signals (by ``published_at``), terminal subscriptions (by ``created_at``), acknowledgments (by
    ``acknowledged_at``).
    """
    pk, sk = item["PK"]["S"], item["SK"]["S"]
    if pk.startswith("STREAM_RUN#") and sk.startswith("SIGNAL#"):
        return Kind.SIGNALS, "published_at"
    if pk.startswith("STREAMSUB#") and text(item, "status") in TERMINAL_SUBSCRIPTIONS:
        return Kind.SUBSCRIPTIONS, "created_at"
    if pk.startswith("SIGACK#"):
        return Kind.ACKNOWLEDGMENTS, "acknowledged_at"
    return None


def old_stream_items(page: list[Item], cutoff: datetime, report: Reporter) -> list[tuple[str, Item]]:
    """``(kind, item)`` of the page's stream items older than ``cutoff``; unreadable times are reported."""
    out = []
    for item in page:
        judged = stream_kind(item)
        if judged is None:
            continue
        kind, name = judged
        old = older(written(item, name), cutoff)
        if old is None:
            leave(report, item, unreadable(item, name))
        elif old:
            out.append((kind, item))
    return out


class ScheduleSweep:
    """Soft-deleted schedules (stored status ``deleted``) last updated before the cutoff, from GSI1."""

    def __init__(self, table: Table, job: PurgeJob) -> None:
        self.table, self.job, self.report = table, job, job.report

    def run(self) -> None:
        params = expr.query("GSI1PK", "SCHEDULES", index="GSI1", sk_prefix=("GSI1SK", "deleted#"),
                            fields=("PK", "SK", "status", "updated_at"), limit=self.job.batch_size)
        for page in self.table.pages("query", **params):
            old = []
            for item in page:
                soft_deleted = text(item, "status") == DELETED_SCHEDULE
                age = older(written(item, "updated_at"), self.job.sweep_cutoff) if soft_deleted else False
                if age is None:
                    leave(self.report, item, unreadable(item, "updated_at"))
                elif age:
                    old.append(item)
            if not old:
                continue
            self.job.boundary([i["PK"]["S"] for i in old])
            if self.job.dry_run:
                self.report.add(Kind.SCHEDULES, len(old))
                continue
            deleted = self.table.map(self.delete, old)
            self.report.add(Kind.SCHEDULES, sum(deleted))

    def delete(self, item: Item) -> bool:
        """Delete unless it changed since it was read (``update_schedule`` rewrites the whole item)."""
        unchanged = {"status": DELETED_SCHEDULE, "updated_at": text(item, "updated_at") or ""}
        deleted, _ = self.table.delete_if(key_of(item), unchanged)
        return deleted
