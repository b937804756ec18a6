"""Purge markers: the purge's own table, written before each commit, read by the next purge.

A marker row copies what a run's cascade needs (:class:`.runs.RunKeys`) and is
written before the run's commit; so once the commit has removed the run's
record, its marker is the only place that still names what is left to delete.
A marker whose run record is gone means a committed run; one whose record
exists means nothing (a run that changed, was held, or was never attempted).

Rows live in partitions ``(purge_id, shard)``: writes of one batch spread over
:data:`SHARDS` partitions, a run's marker is found by key, and a purge's
markers go with one partition delete per shard (a few tombstones per purge,
never one per run).
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from uuid import uuid4

from workflow_retention.planning import chunked
from workflow_retention.timeutil import utcnow

from .client import IN_CHUNK, Cql, Statement
from .layout import MARKER_TABLE, MARKER_TABLE_CQL
from .runs import RunKeys

SHARDS = 16
#: Reserved partitions (a purge id starts with a digit; these with ``#``): the segment records of a sharded
#: purge's shards (one row per shard purge: ``run_id`` its purge id, ``status`` its cutoff, ``workflow_name``
#: ``index/count``).
RESERVED = "#"
SEGMENTS = "#segments"
#: Rows per UNLOGGED batch (one partition each): well under the servers' batch-size warnings.
ROWS_PER_BATCH = 20


def shard_of(run_id: str) -> int:
    return zlib.crc32(run_id.encode()) % SHARDS


class Markers:
    """This purge's markers, and those of the purges before it."""

    def __init__(self, cql: Cql) -> None:
        self.cql = cql
        self.purge_id = f"{utcnow():%Y%m%dT%H%M%SZ}-{uuid4().hex[:12]}"
        self.available = False
        self.written = False
        #: Partitions of earlier purges seen by :meth:`earlier_pages` (dropped by :meth:`drop_earlier`).
        self.earlier: set[tuple[str, int]] = set()

    def open(self, create: bool) -> None:
        """Find the table; create it if missing and ``create`` (a real purge; a dry run never writes)."""
        self.available = self.cql.has_table("scan_markers")
        if not self.available and create:
            self.cql.ddl(MARKER_TABLE, MARKER_TABLE_CQL)
            self.available = True

    def earlier_pages(self, size: int, finished: Collection[str] = ()) -> Iterator[tuple[list[RunKeys], list[str]]]:
        """Every marker left by earlier purges (finished or interrupted), a page at a time: the markers of
        purges not in ``finished``, and the run ids the markers of ``finished`` shard purges name (their
        cascades are complete: see :meth:`write_segment`)."""
        if not self.available:
            return
        for page in self.cql.scan("scan_markers", size):
            keys, done = [], []
            for row in page:
                if row.purge_id != self.purge_id and not row.purge_id.startswith(RESERVED):
                    self.earlier.add((row.purge_id, row.shard))
                    if row.purge_id in finished:
                        done.append(row.run_id)
                    else:
                        keys.append(RunKeys.of(row))
            if keys or done:
                yield keys, done

    def learn(self) -> None:
        """Note every other purge's marker partitions (partition keys only), so that :meth:`marked` reads them
        too: a shard's segment scan judges checkpoints of runs any purge committed (marked, record gone)."""
        if self.available:
            self.earlier = {(row.purge_id, row.shard) for page in self.cql.scan("marker_partitions", 1000)
                            for row in page if row.purge_id != self.purge_id
                            and not row.purge_id.startswith(RESERVED)}

    # -- a sharded purge's segments (docs/backends/cassandra.md, "Shards") --------------------------

    def write_segment(self, index: int, count: int, cutoff: str) -> None:
        """Record that this shard purge is finished: every run it committed is cascaded, and segment ``index``
        of ``count`` of the checkpoints table was scanned under ``cutoff`` (written last)."""
        self.cql.concurrent([("write_marker", (SEGMENTS, 0, self.purge_id, cutoff, None, None, None,
                                               f"{index}/{count}", None))])

    def segments(self) -> dict[str, tuple[int, int, str]]:
        """The finished shard purges: purge id -> (index, count, cutoff)."""
        if not self.available:
            return {}
        found = {}
        for row in self.cql.reads([("marker_rows", (SEGMENTS, 0))])[0]:
            index, _, count = (row.workflow_name or "").partition("/")
            if index.isdigit() and count.isdigit() and row.status:
                found[row.run_id] = (int(index), int(count), row.status)
        return found

    def drop_segments(self, purge_ids: Iterable[str]) -> None:
        """Delete the segment records of ``purge_ids`` (after their markers are dropped)."""
        ids = sorted(purge_ids)
        if ids:
            self.cql.concurrent([("drop_marker_row", (SEGMENTS, 0, p)) for p in ids])

    def write(self, runs: Sequence[RunKeys]) -> None:
        """Mark ``runs`` (before their commits): single-partition UNLOGGED batches, all at once."""
        by_shard: dict[int, list[RunKeys]] = defaultdict(list)
        for run in runs:
            by_shard[shard_of(run.run_id)].append(run)
        self.cql.unlogged_batches([
            [("write_marker", (self.purge_id, shard, r.run_id, r.status, r.updated_ms, r.created_ms,
                               r.parent_run_id, r.workflow_name, r.idempotency_key)) for r in chunk]
            for shard, group in sorted(by_shard.items()) for chunk in chunked(group, ROWS_PER_BATCH)])
        self.written = self.written or bool(runs)

    def marked(self, run_ids: Iterable[str]) -> set[str]:
        """Those of ``run_ids`` that a marker of this purge or of one it resumed names."""
        purges = sorted({p for p, _ in self.earlier} | ({self.purge_id} if self.written else set()))
        by_shard: dict[int, list[str]] = defaultdict(list)
        for run_id in dict.fromkeys(run_ids):
            by_shard[shard_of(run_id)].append(run_id)
        if not purges or not by_shard:
            return set()
        reads: list[Statement] = [("markers_in", (purge, shard, chunk)) for purge in purges
                                  for shard, ids in sorted(by_shard.items()) for chunk in chunked(ids, IN_CHUNK)]
        return {row.run_id for rows in self.cql.reads(reads) for row in rows}

    def drop_earlier(self) -> None:
        """Delete the partitions of earlier purges: their cascades are finished (this purge's stay)."""
        self.cql.concurrent([("drop_markers", partition) for partition in sorted(self.earlier)])
        self.earlier.clear()
