"""Purge markers: a purge's record of the runs it is about to commit (docs/backends/dynamodb.md, "The commit"
and "Two purges at once").

Two forms live in the 16 marker partitions (``PK=RETENTION#PURGE#00``…``15``):

- a **batch marker** (``SK=BATCH#<purge_id>#<n>``, in the partition of its purge's id) lists the runs of one
  batch in its ``runs`` map: run id → ``[status, updated_at]``, the version about to be committed, or NULL
  for a run whose record was already gone when the marker was written (a claim). One item per batch (more
  when the list passes :data:`BATCH_BYTES`), written before the batch's commits;
- a **per-run marker** (``SK=<run_id>``, in the partition of the run id's hash) marks one run: written only
  past :data:`OWN_IDS` runs of one purge (where the Scan's join reads markers by run id instead of keeping
  the purge's runs in memory), and by versions of this package before batch markers.

Each holds the purge's id; a purge drops only the markers it owns (see ``Purge.resume`` for those it takes
over). ``#`` is in no safe run id, so the two forms cannot collide.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from workflow_retention.planning import RunRef, is_safe_run_id
from workflow_retention.timeutil import utcnow

from . import expr
from .client import SCAN_PAGE, Table, write_units
from .layout import (
    MARKER_PREFIX,
    MARKER_SHARDS,
    Item,
    key,
    key_of,
    marker_key,
    marker_partitions,
    s,
    text,
)
from .runs import version

MARKER_FIELDS = ("PK", "SK", "purge_id", "seen_status", "seen_updated_at", "runs", "created_at")
BATCH_PREFIX = "BATCH#"
#: A sharded purge's segment items, in the shard purge's marker partition: ``SEGMENT#<purge_id>#record`` (written
#: last: the shard is finished; its segment, count and cutoff, and the runs it found gone at their commit). No
#: ``purge_id`` attribute, and ``#`` in no safe run id: no purge takes them for markers.
SEGMENT_PREFIX = "SEGMENT#"
BATCH_BYTES = 100_000  # the most one batch marker holds (DynamoDB's item limit is 400 KB); more: several items
REMOVE_AT_ONCE = 100  # map entries one UpdateItem removes (an expression is at most 4 KB)

#: A run's version as a marker records it: ``(status, updated_at)``, or None (a claim: the record was gone).
Seen = tuple[str, str] | None


def batch_partition(purge_id: str) -> str:
    """The marker partition holding every batch marker of one purge."""
    return f"{MARKER_PREFIX}{zlib.crc32(purge_id.encode()) % MARKER_SHARDS:02d}"


def is_batch(item: Item) -> bool:
    return item["SK"]["S"].startswith(BATCH_PREFIX)


def seen_of(ref: RunRef) -> tuple[str, str]:
    v = version(ref)
    return v.status or "", v.updated_at or ""


def outdated(seen: Seen, run: RunRef) -> bool:
    """A marker's entry no commit can ever match: the run exists at another version, or exists again
    (a claim names a run whose record was gone: what exists now is a ghost, or a new run)."""
    return seen is None or seen != seen_of(run)


@dataclass
class Marker:
    """A marker as read: its key, owner, size in write units, and the runs it names with their versions."""

    key: Item
    purge_id: str
    units: int
    runs: dict[str, Seen] = field(default_factory=dict)
    batch: bool = True

    @classmethod
    def parse(cls, item: Item) -> Marker:
        owner = text(item, "purge_id") or ""
        units = write_units(item)
        if not is_batch(item):  # per-run: its run is the SK; older ones record no version
            status, updated = text(item, "seen_status"), text(item, "seen_updated_at")
            seen: Seen = (status, updated) if status is not None and updated is not None else None
            run_id = item["SK"]["S"]
            return cls(key_of(item), owner, units, {run_id: seen} if is_safe_run_id(run_id) else {}, batch=False)
        runs: dict[str, Seen] = {}
        for run_id, value in (item.get("runs", {}).get("M") or {}).items():
            pair = value.get("L") if isinstance(value, dict) else None
            if not is_safe_run_id(run_id):
                continue
            if pair and len(pair) == 2 and all("S" in v for v in pair):
                runs[run_id] = (pair[0]["S"], pair[1]["S"])
            else:
                runs[run_id] = None
        return cls(key_of(item), owner, units, runs)


class Markers:
    """The markers of one purge (``purge_id``), and its view of everyone else's."""

    def __init__(self, table: Table, purge_id: str, page: int) -> None:
        self.table, self.purge_id, self.page = table, purge_id, page
        self.partition = batch_partition(purge_id)
        self.written = 0  # batch markers written (the next one's number)
        self.own: dict[tuple[str, str], int] = {}  # this purge's batch markers: key -> write units
        self.per_run = False  # per-run markers were written: drop_own must look for them

    # -- batch markers ----------------------------------------------------------------

    def batch(self, runs: dict[str, Seen]) -> list[Item]:
        """Write batch markers naming ``runs`` (several items when the list is long); return their keys."""
        items: list[Item] = []
        entries: dict[str, dict[str, object]] = {}
        size = 0
        for run_id, seen in runs.items():
            value: dict[str, object] = {"NULL": True} if seen is None else {"L": [s(seen[0]), s(seen[1])]}
            grows = len(run_id) + 8 + (0 if seen is None else len(seen[0]) + len(seen[1]))
            if entries and size + grows > BATCH_BYTES:
                items.append(self.batch_item(entries))
                entries, size = {}, 0
            entries[run_id] = value
            size += grows
        if entries:
            items.append(self.batch_item(entries))
        self.table.put_many(items)
        for item in items:
            self.own[(item["PK"]["S"], item["SK"]["S"])] = write_units(item)
        return [key_of(i) for i in items]

    def batch_item(self, entries: dict[str, dict[str, object]]) -> Item:
        self.written += 1
        return {**key(self.partition, f"{BATCH_PREFIX}{self.purge_id}#{self.written:08d}"),
                "entity_type": s("retention_purge_batch"), "purge_id": s(self.purge_id),
                "created_at": s(utcnow().isoformat()), "runs": {"M": entries}}

    def mark(self, runs: Iterable[RunRef]) -> list[Item]:
        """Mark ``runs`` before their commit, each with the version about to be committed (one batch marker)."""
        return self.batch({r.run_id: seen_of(r) for r in runs})

    def narrow(self, keys: list[Item], runs: dict[str, Seen]) -> list[Item]:
        """Rewrite this purge's batch markers ``keys`` to name only ``runs`` (those it committed)."""
        written = self.batch(runs) if runs else []  # first: a committed run is never left unmarked
        self.drop(keys)
        return written

    def claim_batch(self, run_ids: Iterable[str]) -> None:
        """Take over committed runs (their record gone) whose cascade this purge finishes (a batch marker)."""
        ids = list(run_ids)
        if ids:
            self.batch(dict.fromkeys(ids))

    # -- per-run markers (past OWN_IDS runs, and those of older versions) -----------------

    def item(self, run_id: str, seen: RunRef | None = None) -> Item:
        """This purge's per-run marker for ``run_id``; ``seen``: the version it is about to commit (None: claimed)."""
        item = {**marker_key(run_id), "entity_type": s("retention_purge"), "run_id": s(run_id),
                "purge_id": s(self.purge_id), "created_at": s(utcnow().isoformat())}
        if seen is not None:
            status, updated = seen_of(seen)
            item.update(seen_status=s(status), seen_updated_at=s(updated))
        return item

    def write(self, runs: Iterable[RunRef]) -> None:
        """Mark ``runs`` before their commit, one per-run marker each, with the version about to be committed."""
        self.per_run = True
        self.table.put_many([self.item(r.run_id, r) for r in runs])

    def claim(self, run_ids: Iterable[str]) -> None:
        """Per-run markers of committed runs with this purge's id: it drops them after their cascade."""
        items = [self.item(run_id) for run_id in run_ids]
        if items:
            self.per_run = True
            self.table.put_many(items)

    def unmark(self, run_id: str) -> None:
        """Remove this purge's per-run marker of a run it did not commit, unless another purge has written it since."""
        self.drop_if(run_id, {"purge_id": self.purge_id})

    def drop_if(self, run_id: str, unchanged: dict[str, str]) -> None:
        """Delete the per-run marker of ``run_id`` if it still holds ``unchanged`` (else it is another purge's now)."""
        self.table.delete_if(marker_key(run_id), unchanged)

    def marked(self, run_ids: Iterable[str]) -> set[str]:
        """Those of ``run_ids`` (safe ones only) that have a per-run marker, whoever's (one BatchGetItem)."""
        found = self.table.get_many([marker_key(r) for r in run_ids if is_safe_run_id(r)],
                                    expr.projection("PK", "SK"))
        return {i["SK"]["S"] for i in found}

    # -- other purges' markers -----------------------------------------------------------

    def take_over(self, marker: Marker, done: set[str], whole: bool) -> None:
        """Another purge's marker: delete it (``whole``: none of its runs awaits a commit), else remove the
        entries of ``done`` runs (committed ones, which this purge has claimed, and outdated ones) from it.

        A per-run marker is deleted on condition that it is unchanged (its purge id and version)."""
        if not marker.batch:
            (run_id, seen), = marker.runs.items()
            unchanged = {"purge_id": marker.purge_id}
            if seen is not None:
                unchanged["seen_updated_at"] = seen[1]
            self.drop_if(run_id, unchanged)
        elif whole:
            self.table.delete_many([marker.key], units=[marker.units])
        else:
            for part in _chunks(sorted(done & marker.runs.keys()), REMOVE_AT_ONCE):
                self.table.remove_entries(marker.key, "runs", part, units=marker.units)

    def reread(self, keys: list[Item]) -> list[Marker]:
        """The batch markers ``keys`` as stored now (those that still exist)."""
        return [Marker.parse(i) for i in self.table.get_many(keys, expr.projection(*MARKER_FIELDS))]

    # -- a sharded purge's segments (docs/backends/dynamodb.md, "Shards") ---------------------------

    def write_segment(self, segment: int, count: int, cutoff: str, gone: Iterable[str]) -> None:
        """Record that this shard purge is finished (written last): every run it committed is cascaded, but
        ``gone`` (found gone at their commit: another purge's to cascade), and segment ``segment`` of ``count``
        of the table was read for checkpoints under ``cutoff``."""
        self.table.put_many([{**key(self.partition, f"{SEGMENT_PREFIX}{self.purge_id}#record"),
                              "entity_type": s("retention_purge_segment"), "segment": {"N": str(segment)},
                              "segments": {"N": str(count)}, "cutoff": s(cutoff), "shard_purge": s(self.purge_id),
                              "gone": {"L": [s(r) for r in sorted(gone)]}}])

    def segments(self) -> Segments:
        """Every segment item of finished shard purges (one Query of each marker partition)."""
        found = Segments()
        params = [(p, expr.query("PK", p, sk_prefix=("SK", SEGMENT_PREFIX), limit=SCAN_PAGE))
                  for p in marker_partitions()]
        for pages in self.table.map(lambda pair: list(self.table.pages("query", **pair[1])), params):
            for item in (i for page in pages for i in page):
                found.keys.append(key_of(item))
                if (owner := text(item, "shard_purge")) and "segment" in item and "segments" in item:
                    found.records[owner] = (int(item["segment"]["N"]), int(item["segments"]["N"]),
                                            text(item, "cutoff") or "")
                    found.gone[owner] = {v["S"] for v in item.get("gone", {}).get("L", []) if "S" in v}
        return found

    def named(self, limit: int) -> set[str] | None:
        """Every run id a marker names, whoever's (all marker partitions read); None past ``limit`` of them."""
        named: set[str] = set()
        for partition in self.occupied():
            for page in self.pages(partition):
                for m in page:
                    named.update(m.runs)
                if len(named) > limit:
                    return None
        return named

    # -- every marker ------------------------------------------------------------------

    def occupied(self) -> list[str]:
        """The marker partitions holding at least one marker (one Query of one item each)."""
        return [p for p, page in self.table.map(self.first, marker_partitions()) if page]

    def first(self, partition: str) -> tuple[str, list[Item]]:
        response = self.table.call("query", **expr.query("PK", partition, fields=("SK",), limit=1))
        return partition, response.get("Items", [])

    def pages(self, partition: str) -> Iterator[list[Marker]]:
        """The markers of one partition, ``page`` at a time (a page of batch markers stops at 1 MB)."""
        params = expr.query("PK", partition, fields=MARKER_FIELDS, limit=self.page)
        for page in self.table.pages("query", **params):
            yield [Marker.parse(i) for i in page]

    def drop(self, keys: list[Item]) -> None:
        """Delete this purge's batch markers ``keys``."""
        if not keys:
            return
        units = [self.own.pop((k["PK"]["S"], k["SK"]["S"]), 1) for k in keys]
        self.table.delete_many(keys, units=units)

    def drop_own(self) -> None:
        """Delete this purge's markers (its own and those it claimed), now that every cascade is complete.

        Another purge's markers are never dropped here: that purge may still be between its commit and its
        cascade.
        """
        keys = [key(pk, sk) for pk, sk in self.own]
        self.drop(keys)
        if self.per_run:
            self.table.map(self.drop_own_in, marker_partitions())

    def drop_own_in(self, partition: str) -> None:
        params = expr.query("PK", partition, fields=("PK", "SK", "purge_id"), limit=SCAN_PAGE)
        for page in self.table.pages("query", **params):
            self.table.delete_many([key_of(i) for i in page if text(i, "purge_id") == self.purge_id
                                    and not is_batch(i)], parallel=False)


@dataclass
class Segments:
    """The segment items of finished shard purges, as the final pass reads them (:meth:`Markers.segments`)."""

    records: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # purge id -> (segment, count, cutoff)
    gone: dict[str, set[str]] = field(default_factory=dict)  # purge id -> runs found gone at their commit
    keys: list[Item] = field(default_factory=list)  # every segment item read (dropped last)


def _chunks(values: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]

