"""The cascade of committed runs: read everything else of them with its write times, count it, delete it.

Every delete carries ``USING TIMESTAMP`` of the write time read, so it removes
exactly the version that was read and counted: a row written again after the
read (a pointer another run took over, an engine write after the commit)
survives. Two rounds, so that an interrupted cascade can be finished from the
run's marker: first the lookup and listing rows (found through the run's
partitions and keys), then the partitions themselves.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

from workflow_retention.planning import RUN_STATUSES, chunked
from workflow_retention.report import Kind, PurgeReport

from .client import IN_CHUNK, Cql, Statement, packed
from .layout import Row
from .runs import RunKeys
from .versioned import stamp

#: (read, delete, kind) of the run's own partitions, keyed by run_id.
PARTITIONS = (("events_in", "delete_events", Kind.EVENTS), ("steps_in", "delete_steps", Kind.STEPS),
              ("hooks_in", "delete_hooks", Kind.HOOKS), ("flags_in", "delete_flag", Kind.CANCELLATION_FLAGS))
#: (read, delete, kind) of lookup rows keyed by something of the run's, deleted while they point to it.
POINTERS = (("idempotency_in", "delete_idempotency", Kind.IDEMPOTENCY_KEYS),
            ("steps_by_id_in", "delete_step_by_id", Kind.INDEX_ENTRIES),
            ("hooks_by_id_in", "delete_hook_by_id", Kind.INDEX_ENTRIES),
            ("tokens_in", "delete_token", Kind.HOOK_TOKENS))
#: Day buckets per listing read at most (a run needs two or three; runs created far apart go in separate reads).
MAX_BUCKETS = 64


#: Called with the runs and what the cascade found of them, before it deletes anything (the archive's check).
BeforeDelete = Callable[[Sequence[RunKeys], dict[str, list[Row]]], None]


class Cascade:
    def __init__(self, cql: Cql, report: PurgeReport, dry_run: bool, before_delete: BeforeDelete | None = None) -> None:
        self.cql, self.report, self.dry_run, self.before_delete = cql, report, dry_run, before_delete

    def run(self, runs: Sequence[RunKeys]) -> None:
        """Count, then (unless a dry run) delete, everything of ``runs`` but their records."""
        if not runs:
            return
        by_id = {r.run_id: r for r in runs}
        found = self.read(runs)
        if self.before_delete is not None and not self.dry_run:
            self.before_delete(runs, found)
        first: dict[str, list[Statement]] = defaultdict(list)  # lookup and listing rows
        second: dict[str, list[Statement]] = defaultdict(list)  # the run's partitions
        counts: Counter[str] = Counter()
        for read, delete, kind in POINTERS:
            for row in found[read]:
                if row.run_id in by_id:
                    first[row.run_id].append((delete, (stamp([row]), row[0])))
                    counts[kind] += 1
        for row in found["status_rows_in"]:
            first[row.run_id].append(("delete_status_row", (stamp([row]), row.status, row.date_bucket,
                                                             row.created_at, row.run_id)))
        for row in found["workflow_rows_in"]:
            first[row.run_id].append(("delete_workflow_row", (stamp([row]), row.workflow_name, row.date_bucket,
                                                               row.created_at, row.run_id)))
        for row in found["parent_rows_in"]:
            first[row.run_id].append(("delete_parent_row", (stamp([row]), row.parent_run_id, row.created_at,
                                                             row.run_id)))
        counts[Kind.INDEX_ENTRIES] += sum(len(found[n]) for n in ("status_rows_in", "workflow_rows_in",
                                                                   "parent_rows_in"))
        for read, delete, kind in PARTITIONS:
            per_run: dict[str, list[Row]] = defaultdict(list)
            for row in found[read]:
                per_run[row.run_id].append(row)
            for run_id, rows in per_run.items():
                second[run_id].append((delete, (stamp(rows), run_id)))
                counts[kind] += len(rows)
        self.report.merge(counts)
        if not self.dry_run:
            self.cql.unlogged_batches(packed(first.values()))
            self.cql.unlogged_batches(packed(second.values()))

    def read(self, runs: Sequence[RunKeys]) -> dict[str, list[Row]]:
        """Everything of ``runs`` but their records, as the cascade finds it: statement name -> rows (keys and
        write times; the archive reads the full rows by these keys)."""
        ids = sorted({r.run_id for r in runs})
        own_reads: list[Statement] = [(read, (chunk,)) for read, _, _ in PARTITIONS
                                            for chunk in chunked(ids, IN_CHUNK)]
        keys = sorted({r.idempotency_key for r in runs if r.idempotency_key})
        own_reads += [("idempotency_in", (chunk,)) for chunk in chunked(keys, IN_CHUNK)]
        listing = _listing_reads(runs)
        found: dict[str, list[Row]] = defaultdict(list)
        for (name, _), rows in zip(own_reads + listing, self.cql.reads(own_reads + listing)):
            found[name].extend(rows)
        found.update(self.cql.reads_in({
            "steps_by_id_in": sorted({s.step_id for s in found["steps_in"]}),
            "hooks_by_id_in": sorted({h.hook_id for h in found["hooks_in"]}),
            "tokens_in": sorted({h.token for h in found["hooks_in"] if h.token})}))
        return found


def _listing_reads(runs: Sequence[RunKeys]) -> list[Statement]:
    """Reads of the runs' listing rows: under every status and every date bucket pyworkflow may have used.

    Status rows: the runs in ``created_at`` order, one read per status and
    chunk (:func:`_bucketed`). Workflow rows: the same per workflow name, so a
    read names one workflow's chunk, not a few runs of each name. Parent rows:
    ``parent_run_id IN`` the chunk's parents. Each read is the cartesian product
    of its partitions and its ``(created_at, run_id)`` pairs; a row it finds
    names a run of the chunk, whichever partition it is filed under.
    """
    listed = sorted((r for r in runs if r.buckets), key=lambda r: (r.created_ms, r.run_id))
    reads: list[Statement] = []
    for buckets, chunk in _bucketed(listed):
        reads += [("status_rows_in", (status, buckets, _pairs(chunk))) for status in sorted(RUN_STATUSES)]
    by_workflow: dict[str, list[RunKeys]] = defaultdict(list)
    for r in listed:
        if r.workflow_name:
            by_workflow[r.workflow_name].append(r)
    reads += [("workflow_rows_in", (name, buckets, _pairs(chunk)))
              for name, group in sorted(by_workflow.items()) for buckets, chunk in _bucketed(group)]
    children = sorted((r for r in listed if r.parent_run_id), key=lambda r: (r.parent_run_id or "", r.run_id))
    reads += [("parent_rows_in", (sorted({r.parent_run_id or "" for r in chunk}), _pairs(chunk)))
              for chunk in chunked(children, IN_CHUNK)]
    return reads


def _pairs(runs: Sequence[RunKeys]) -> list[tuple[int | None, str]]:
    return [(r.created_ms, r.run_id) for r in runs]


def _bucketed(listed: Sequence[RunKeys]) -> list[tuple[list[str], list[RunKeys]]]:
    """Runs (in ``created_at`` order) cut into chunks of at most IN_CHUNK runs and MAX_BUCKETS day buckets.

    Returns (the chunk's buckets, the chunk): a read's fan-out stays bounded
    however far apart the runs were created.
    """
    out: list[tuple[list[str], list[RunKeys]]] = []
    chunk: list[RunKeys] = []
    buckets: set[str] = set()
    for r in listed:
        if chunk and (len(chunk) == IN_CHUNK or len(buckets | set(r.buckets)) > MAX_BUCKETS):
            out.append((sorted(buckets), chunk))
            chunk, buckets = [], set()
        chunk.append(r)
        buckets.update(r.buckets)
    if chunk:
        out.append((sorted(buckets), chunk))
    return out
