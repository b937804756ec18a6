"""Orphan repair on DynamoDB: one paged Scan (no index lists every kind); docs/backends/dynamodb.md, "Orphan repair"."""

from __future__ import annotations

from typing import NamedTuple

from workflow_retention.base import OrphanJob
from workflow_retention.planning import is_safe_run_id, key_owners, key_prefixes
from workflow_retention.report import Kind
from workflow_retention.timeutil import older

from . import expr
from .client import SCAN_PAGE, Table
from .layout import (
    MARKER_PREFIX,
    RUN_SK,
    Item,
    checkpoint_key,
    classify,
    item_size,
    key,
    key_of,
    leave,
    written,
)
from .markers import Marker, is_batch
from .runs import get_runs

#: Kinds an orphan can be: everything that names a run, except the run record itself.
ORPHAN_KINDS = frozenset({Kind.EVENTS, Kind.EVENT_COUNTERS, Kind.STEPS, Kind.HOOKS, Kind.HOOK_TOKENS,
                          Kind.CANCELLATION_FLAGS, Kind.CHECKPOINTS, Kind.INDEX_ENTRIES})


class Candidate(NamedTuple):
    kind: str
    named: str  # the run id the item names, or a checkpoint's derived key <run_id>:<step_id>
    item: Item
    readable: bool  # False: its write time is stored but cannot be read (it might be young)


GHOST = ("a partial run record (no workflow_name, which pyworkflow always writes): the engine wrote to this run "
         "after it was purged, and its update re-created the item; pyworkflow cannot read it")

#: Items that name their run only through an attribute (no run id in the key).
NAMED_BY_ATTRIBUTE = frozenset({Kind.HOOKS, Kind.HOOK_TOKENS})


class OrphanSweep:
    """Items that name a run with no run record, older than the grace period, page by page of one Scan."""

    def __init__(self, table: Table, job: OrphanJob) -> None:
        self.table, self.job, self.report = table, job, job.report
        self.report.bytes_estimated = True

    def run(self) -> None:
        for page in self.table.scan(Limit=max(self.job.batch_size, SCAN_PAGE)):
            batches = [i for i in page if i["PK"]["S"].startswith(MARKER_PREFIX) and is_batch(i)]
            found = self.sibling_grace(self.orphans(self.candidates([i for i in page if not (
                i["PK"]["S"].startswith(MARKER_PREFIX) and is_batch(i))]), report=True))
            markers = self.stale_markers(batches, report=True)
            if not found and not markers:
                continue
            named = {named_run(c) for c in found} | {r for m in markers for r in Marker.parse(m).runs}
            self.job.boundary(sorted(named))
            found = self.orphans(found)  # the run's absence, re-checked right before the delete
            markers = self.stale_markers(markers)
            for c in found:
                self.report.add(c.kind)
                self.report.bytes += item_size(c.item)
            for m in markers:
                self.report.add(Kind.INDEX_ENTRIES)
                self.report.bytes += item_size(m)
            if found and not self.job.dry_run:
                self.table.delete_many([key_of(c.item) for c in found])
            if markers and not self.job.dry_run:
                self.table.delete_many([key_of(m) for m in markers], units=[Marker.parse(m).units for m in markers])

    def stale_markers(self, items: list[Item], *, report: bool = False) -> list[Item]:
        """Batch markers (``markers.py``) older than the grace period none of whose runs exists: a purge marker
        whose runs are all gone is an orphan, as a per-run marker whose run is gone. One whose time cannot
        be read is kept (with ``report``: reported)."""
        old = []
        for item in items:
            when = older(written(item, "created_at"), self.job.not_after, missing=True)
            if when is None and report:
                leave(self.report, item, "its created_at cannot be read (it may be younger than the grace period)")
            if when is True:
                old.append(item)
        if not old:
            return []
        alive = set(get_runs(self.table, {r for m in old for r in Marker.parse(m).runs}))
        return [m for m in old if not alive & Marker.parse(m).runs.keys()]

    def candidates(self, page: list[Item]) -> list[Candidate]:
        """Items naming a run, written before the grace period or at a time that cannot be read.

        An item with no write time at all has no grace period to honour.
        """
        out = []
        for item in page:
            kind, owner, when = classify(item)
            if kind == Kind.RUNS and "workflow_name" not in item:
                leave(self.report, item, GHOST)
                continue
            if kind in NAMED_BY_ATTRIBUTE and owner is None:
                leave(self.report, item, "it names no run_id that can be read")
                continue
            if kind not in ORPHAN_KINDS or owner is None:
                continue
            old = older(when, self.job.not_after, missing=True)
            if old is not False:
                out.append(Candidate(kind, checkpoint_key(item) or owner, item, old is True))
        return out

    def orphans(self, found: list[Candidate], *, report: bool = False) -> list[Candidate]:
        """Those that belong to no existing run: a checkpoint when no prefix of its key is a run
        (``planning.key_owners``), anything else when the run it names does not exist.

        One consistent BatchGetItem for the page. With ``report``, an orphan that
        names an unsafe run id, or whose write time cannot be read, is counted
        in ``skipped`` and left alone.
        """
        if not found:
            return []
        keys = [c.named for c in found if c.kind == Kind.CHECKPOINTS]
        ids = {c.named for c in found if c.kind != Kind.CHECKPOINTS}
        alive = set(get_runs(self.table, ids | {p for key in keys for p in key_prefixes(key)}))
        owners = key_owners(keys, alive.intersection)
        out = []
        for c in found:
            if (owners[c.named] if c.kind == Kind.CHECKPOINTS else c.named if c.named in alive else None) is not None:
                continue
            if not is_safe_run_id(named_run(c)):
                why = f"it names the unsafe run_id {named_run(c)!r}"
            elif not c.readable:
                why = "its write time cannot be read (it may be younger than the grace period)"
            else:
                out.append(c)
                continue
            if report:
                leave(self.report, c.item, why)
        return out

    def sibling_grace(self, found: list[Candidate]) -> list[Candidate]:
        """Event counters and token items record no time: they follow their run's latest event / their hook.

        A sibling whose time cannot be read keeps them (and they are reported).
        """
        keep: set[tuple[str, str]] = set()
        counters = [c for c in found if c.kind == Kind.EVENT_COUNTERS]
        for (run_id, when), c in zip(self.table.map(self.latest_event, [c.named for c in counters]), counters):
            old = older(when, self.job.not_after, missing=True)
            keep |= self.sibling_keeps(c, old, f"the time of run {run_id!r}'s latest event cannot be read")
        tokens = {c.item["SK"]["S"]: c for c in found if c.kind == Kind.HOOK_TOKENS}
        if tokens:
            hooks = self.table.get_many([key(pk, RUN_SK) for pk in tokens], expr.projection("PK", "created_at"))
            for hook in hooks:
                old = older(written(hook, "created_at"), self.job.not_after, missing=True)
                keep |= self.sibling_keeps(tokens[hook["PK"]["S"]], old, "the created_at of its hook cannot be read")
        return [c for c in found if (c.item["PK"]["S"], c.item["SK"]["S"]) not in keep]

    def sibling_keeps(self, c: Candidate, old: bool | None, why: str) -> set[tuple[str, str]]:
        if old is None:
            leave(self.report, c.item, why)
        return set() if old else {(c.item["PK"]["S"], c.item["SK"]["S"])}

    def latest_event(self, run_id: str) -> tuple[str, object]:
        params = expr.query("PK", f"RUN#{run_id}", sk_prefix=("SK", "EVENT#"), fields=("timestamp",), limit=1)
        response = self.table.call("query", ScanIndexForward=False, **params)
        items = response.get("Items", [])
        return run_id, written(items[0], "timestamp") if items else None


def named_run(candidate: Candidate) -> str:
    """The run an orphan names: its owner id, or for a checkpoint the shortest prefix of its key."""
    return key_prefixes(candidate.named)[0] if candidate.kind == Kind.CHECKPOINTS else candidate.named
