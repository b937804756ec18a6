"""The purge's other sweeps: its one table Scan (checkpoints no index names, stream data) and schedules."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workflow_retention.planning import (
    TERMINAL_SUBSCRIPTIONS,
    is_safe_run_id,
    key_owners,
    key_prefixes,
    plan_deletion,
)
from workflow_retention.report import Kind
from workflow_retention.timeutil import older

from . import expr
from .layout import SCANNED_PREFIXES, Item, checkpoint_key, key_of, leave, marker_key, text, unreadable, written
from .runs import children_of, get_runs

if TYPE_CHECKING:
    from .purge import Purge

SCAN_FIELDS = ("PK", "SK", "status", "created_at", "published_at", "acknowledged_at")


class ScanPass:
    """One paged Scan after the batches, joined page by page against the purge markers."""

    def __init__(self, purge: Purge) -> None:
        self.purge, self.table, self.report = purge, purge.table, purge.report
        self.cutoff, self.dry = purge.cutoff, purge.dry

    def run(self) -> None:
        params = expr.scan_prefixes(SCANNED_PREFIXES, SCAN_FIELDS, limit=self.purge.page)
        for page in self.table.scan(**params):
            doomed = self.doomed_checkpoints([i for i in page if i["PK"]["S"].startswith("CHECKPOINT#")]) \
                if self.purge.cascaded else []
            stream = self.old_stream_items(page)
            if not doomed and not stream:
                continue
            self.purge.job.boundary(sorted({owner for owner, _ in doomed}) + [i["PK"]["S"] for _, i in stream])
            self.report.add(Kind.CHECKPOINTS, len(doomed))
            for kind, _ in stream:
                self.report.add(kind)
            if not self.dry:
                self.table.delete_many([key_of(i) for _, i in doomed + stream])

    def doomed_checkpoints(self, items: list[Item]) -> list[tuple[str, Item]]:
        """Checkpoints whose owner (``planning.key_owners``) is a committed run: marked, its record gone.

        Ownership is decided on the store as it was before the commits: the
        existing runs and the committed ones. Only prefixes at least as long
        as a key's shortest marked prefix can own it, so only those are read
        (a page with no marked prefix costs one BatchGetItem of markers). A
        dry run writes no markers: it asks the planner about each owner.
        """
        keys = {key: item for item in items if (key := checkpoint_key(item)) is not None}
        prefixes = {p for key in keys for p in key_prefixes(key)}
        if not prefixes:
            return []
        marked = {i["SK"]["S"] for i in self.table.get_many([marker_key(p) for p in prefixes if is_safe_run_id(p)],
                                                             expr.projection("PK", "SK"))}
        if self.dry:
            wanted = prefixes
        else:
            wanted = {p for key in keys for p in self.from_shortest_marked(key, marked)}
        alive = get_runs(self.table, wanted)
        committed = marked - set(alive)
        owners = key_owners(keys, lambda ids: {i for i in ids if i in alive or i in committed})
        doomed = set(committed)
        if self.dry:
            doomed |= self.would_delete({o for o in owners.values() if o in alive})
        return sorted(((o, keys[k]) for k, o in owners.items() if o is not None and o in doomed),
                      key=lambda pair: pair[0])

    @staticmethod
    def from_shortest_marked(key: str, marked: set[str]) -> list[str]:
        prefixes = key_prefixes(key)
        for n, prefix in enumerate(prefixes):
            if prefix in marked:
                return prefixes[n:]
        return []

    def would_delete(self, ids: set[str]) -> set[str]:
        roots = [r for r in get_runs(self.table, ids).values() if r.eligible(self.cutoff)]
        if not roots:
            return set()
        plan = plan_deletion(roots, lambda parents: children_of(self.table, parents), self.cutoff)
        return {r.run_id for r in plan.order()[0]} & ids

    def old_stream_items(self, page: list[Item]) -> list[tuple[str, Item]]:
        """Signals, terminal subscriptions and acknowledgments older than the cutoff; unreadable times reported."""
        out = []
        for item in page:
            pk, sk = item["PK"]["S"], item["SK"]["S"]
            if pk.startswith("STREAM_RUN#") and sk.startswith("SIGNAL#"):
                kind, name = Kind.SIGNALS, "published_at"
            elif pk.startswith("STREAMSUB#") and text(item, "status") in TERMINAL_SUBSCRIPTIONS:
                kind, name = Kind.SUBSCRIPTIONS, "created_at"
            elif pk.startswith("SIGACK#"):
                kind, name = Kind.ACKNOWLEDGMENTS, "acknowledged_at"
            else:
                continue
            old = older(written(item, name), self.cutoff)
            if old is None:
                leave(self.report, item, unreadable(item, name))
            elif old:
                out.append((kind, item))
        return out


class Schedules:
    """Soft-deleted schedules (stored status ``deleted``) last updated before the cutoff, from GSI1."""

    def __init__(self, purge: Purge) -> None:
        self.purge, self.table, self.report = purge, purge.table, purge.report
        self.cutoff, self.dry = purge.cutoff, purge.dry

    def run(self) -> None:
        params = expr.query("GSI1PK", "SCHEDULES", index="GSI1", sk_prefix=("GSI1SK", "deleted#"),
                            fields=("PK", "SK", "status", "updated_at"), limit=self.purge.job.batch_size)
        for page in self.table.pages("query", **params):
            old = []
            for item in page:
                age = older(written(item, "updated_at"), self.cutoff) if text(item, "status") == "deleted" else False
                if age is None:
                    leave(self.report, item, unreadable(item, "updated_at"))
                elif age:
                    old.append(item)
            if not old:
                continue
            self.purge.job.boundary([i["PK"]["S"] for i in old])
            if self.dry:
                self.report.add(Kind.SCHEDULES, len(old))
                continue
            deleted = self.table.map(self.delete_schedule, old)
            self.report.add(Kind.SCHEDULES, sum(deleted))

    def delete_schedule(self, item: Item) -> bool:
        """Delete unless it changed since it was read (``update_schedule`` rewrites the whole item)."""
        from botocore.exceptions import ClientError

        try:
            self.table.call("delete_item", Key=key_of(item), write_units=1,
                            passthrough="ConditionalCheckFailedException",
                            **expr.condition({"status": "deleted", "updated_at": text(item, "updated_at") or ""}))
        except ClientError:
            return False
        return True
