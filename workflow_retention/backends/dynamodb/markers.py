"""Purge markers: a purge's record of each run it is about to commit (docs/backends/dynamodb.md, "The commit"
and "Two purges at once").

A marker (``PK=RETENTION#PURGE#00``…``15``, ``SK=<run_id>``) holds the purge's id and, when written before a
commit, the version (``status``, ``updated_at``) of the run it commits. A purge drops only the markers it owns.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from workflow_retention.planning import RunRef, is_safe_run_id
from workflow_retention.timeutil import utcnow

from . import expr
from .client import SCAN_PAGE, Table
from .layout import Item, key_of, marker_key, marker_partitions, s, text
from .runs import version

MARKER_FIELDS = ("SK", "purge_id", "seen_status", "seen_updated_at")


class Markers:
    """The markers of one purge (``purge_id``), and its view of everyone else's."""

    def __init__(self, table: Table, purge_id: str, page: int) -> None:
        self.table, self.purge_id, self.page = table, purge_id, page

    def item(self, run_id: str, seen: RunRef | None = None) -> Item:
        """This purge's marker for ``run_id``; ``seen``: the version it is about to commit (None: claimed)."""
        item = {**marker_key(run_id), "entity_type": s("retention_purge"), "run_id": s(run_id),
                "purge_id": s(self.purge_id), "created_at": s(utcnow().isoformat())}
        if seen is not None:
            v = version(seen)
            item.update(seen_status=s(v.status or ""), seen_updated_at=s(v.updated_at or ""))
        return item

    def write(self, runs: Iterable[RunRef]) -> None:
        """Mark ``runs`` before their commit, each with the version about to be committed."""
        self.table.put_many([self.item(r.run_id, r) for r in runs])

    def claim(self, run_ids: Iterable[str]) -> None:
        """Rewrite the markers of committed runs with this purge's id: it drops them after their cascade."""
        self.table.put_many([self.item(run_id) for run_id in run_ids])

    def unmark(self, run_id: str) -> None:
        """Remove this purge's marker of a run it did not commit, unless another purge has written it since."""
        self.drop_if(run_id, {"purge_id": self.purge_id})

    def drop_dead(self, markers: list[Item]) -> None:
        """Drop other purges' markers whose conditional delete can never succeed, if they are unchanged."""
        self.table.map(lambda m: self.drop_if(m["SK"]["S"], {
            "purge_id": text(m, "purge_id") or "", "seen_updated_at": text(m, "seen_updated_at") or ""}), markers)

    def drop_if(self, run_id: str, unchanged: dict[str, str]) -> None:
        """Delete the marker of ``run_id`` if it still holds ``unchanged`` (else it is another purge's now)."""
        self.table.delete_if(marker_key(run_id), unchanged)

    def marked(self, run_ids: Iterable[str]) -> set[str]:
        """Those of ``run_ids`` (safe ones only) that have a marker, whoever's (one BatchGetItem)."""
        found = self.table.get_many([marker_key(r) for r in run_ids if is_safe_run_id(r)],
                                    expr.projection("PK", "SK"))
        return {i["SK"]["S"] for i in found}

    # -- every marker ------------------------------------------------------------------

    def occupied(self) -> list[str]:
        """The marker partitions holding at least one marker (one Query of one item each)."""
        return [p for p, page in self.table.map(self.first, marker_partitions()) if page]

    def first(self, partition: str) -> tuple[str, list[Item]]:
        response = self.table.call("query", **expr.query("PK", partition, fields=("SK",), limit=1))
        return partition, response.get("Items", [])

    def pages(self, partition: str) -> Iterator[list[Item]]:
        """The markers of one partition, ``page`` at a time, with the version they record."""
        params = expr.query("PK", partition, fields=MARKER_FIELDS, limit=self.page)
        yield from self.table.pages("query", **params)

    @staticmethod
    def outdated(marker: Item, run: RunRef) -> bool:
        """The marker records a version of the run other than the stored one (older markers record none)."""
        seen = (text(marker, "seen_status"), text(marker, "seen_updated_at"))
        v = version(run)
        return None not in seen and seen != (v.status, v.updated_at)

    def drop_own(self) -> None:
        """Delete this purge's markers (its own and those it claimed), now that every cascade is complete.

        Another purge's markers are never dropped here: that purge may still be between its commit and its
        cascade.
        """
        self.table.map(self.drop_own_in, marker_partitions())

    def drop_own_in(self, partition: str) -> None:
        params = expr.query("PK", partition, fields=("PK", "SK", "purge_id"), limit=SCAN_PAGE)
        for page in self.table.pages("query", **params):
            self.table.delete_many([key_of(i) for i in page if text(i, "purge_id") == self.purge_id],
                                   parallel=False)
