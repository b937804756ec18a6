"""Orphan repair and the census on DynamoDB: one paged Scan each (no index lists every kind)."""

from __future__ import annotations

from typing import Any

from workflow_retention.base import CensusJob, OrphanJob
from workflow_retention.planning import is_safe_run_id, key_owners, key_prefixes
from workflow_retention.report import Kind, age_bucket

from . import expr
from .client import Table
from .layout import (
    RUN_SK,
    Item,
    checkpoint_key,
    classify,
    key,
    key_of,
    item_size,
    stamp,
    text,
)
from .purge import SCAN_PAGE
from .runs import get_runs

#: Kinds an orphan can be: everything that names a run, except the run record itself.
ORPHAN_KINDS = frozenset({Kind.EVENTS, Kind.EVENT_COUNTERS, Kind.STEPS, Kind.HOOKS, Kind.HOOK_TOKENS,
                          Kind.CANCELLATION_FLAGS, Kind.CHECKPOINTS, Kind.INDEX_ENTRIES})

Candidate = tuple[str, str, Item]  # (kind, the run id or derived key the item names, item)


class OrphanSweep:
    def __init__(self, table: Table, job: OrphanJob) -> None:
        self.table, self.job, self.report = table, job, job.report
        self.report.bytes_estimated = True

    def run(self) -> None:
        for page in self.table.scan(Limit=max(self.job.batch_size, SCAN_PAGE)):
            found = self.sibling_grace(self.orphans(self.candidates(page), report=True))
            if not found:
                continue
            self.job.boundary(sorted({named_run(c) for c in found}))
            found = self.orphans(found)  # the run's absence, re-checked right before the delete
            for kind, _, item in found:
                self.report.add(kind)
                self.report.bytes += item_size(item)
            if found and not self.job.dry_run:
                self.table.delete_many([key_of(item) for _, _, item in found])

    def candidates(self, page: list[Item]) -> list[Candidate]:
        """Items naming a run, written before the grace period (where the item records when)."""
        out = []
        for item in page:
            kind, owner, when = classify(item)
            if kind not in ORPHAN_KINDS or owner is None:
                continue
            if when is None or when < self.job.not_after:
                out.append((kind, checkpoint_key(item) or owner, item))
        return out

    def orphans(self, found: list[Candidate], *, report: bool = False) -> list[Candidate]:
        """Those that belong to no existing run: a checkpoint when no prefix of its key is a run
        (``planning.key_owners``), anything else when the run it names does not exist.

        One consistent BatchGetItem for the page. With ``report``, an orphan that
        names an unsafe run id is counted in ``skipped`` and left alone.
        """
        if not found:
            return []
        keys = [named for kind, named, _ in found if kind == Kind.CHECKPOINTS]
        ids = {named for kind, named, _ in found if kind != Kind.CHECKPOINTS}
        alive = set(get_runs(self.table, ids | {p for key in keys for p in key_prefixes(key)}))
        owners = key_owners(keys, alive.intersection)
        out = []
        for candidate in found:
            kind, named, item = candidate
            if (owners[named] if kind == Kind.CHECKPOINTS else named if named in alive else None) is not None:
                continue
            if not is_safe_run_id(named_run(candidate)):
                if report:
                    self.report.skipped += 1
                    self.report.warn(f"{item['PK']['S']!r} names the unsafe run_id {named_run(candidate)!r}; "
                                     "left alone")
                continue
            out.append(candidate)
        return out

    def sibling_grace(self, found: list[Candidate]) -> list[Candidate]:
        """Event counters and token items record no time: they follow their run's latest event / their hook."""
        young: set[tuple[str, str]] = set()
        counters = [c for c in found if c[0] == Kind.EVENT_COUNTERS]
        for run_id, when in self.table.map(self.latest_event, [c[1] for c in counters]):
            if when is not None and when >= self.job.not_after:
                young.add(("RUN#" + run_id, "#EVENT_COUNTER"))
        tokens = {c[2]["SK"]["S"]: c for c in found if c[0] == Kind.HOOK_TOKENS}
        if tokens:
            hooks = self.table.get_many([key(pk, RUN_SK) for pk in tokens], expr.projection("PK", "created_at"))
            for hook in hooks:
                when = stamp(hook, "created_at")
                if when is not None and when >= self.job.not_after:
                    young.add((tokens[hook["PK"]["S"]][2]["PK"]["S"], hook["PK"]["S"]))
        return [c for c in found if (c[2]["PK"]["S"], c[2]["SK"]["S"]) not in young]

    def latest_event(self, run_id: str) -> tuple[str, Any]:
        params = expr.query("PK", f"RUN#{run_id}", sk_prefix=("SK", "EVENT#"), fields=("timestamp",), limit=1)
        response = self.table.call("query", ScanIndexForward=False, **params)
        items = response.get("Items", [])
        return run_id, stamp(items[0], "timestamp") if items else None


def named_run(candidate: Candidate) -> str:
    """The run an orphan names: its owner id, or for a checkpoint the shortest prefix of its key."""
    kind, named, _ = candidate
    return key_prefixes(named)[0] if kind == Kind.CHECKPOINTS else named


def census(table: Table, job: CensusJob) -> None:
    """Runs by status and age, and every kind of item with its size, in one paged Scan."""
    seen = 0
    for page in table.scan(Limit=SCAN_PAGE):
        for item in page:
            kind, _, when = classify(item)
            if kind is None:
                continue
            job.census.count(kind, 1, item_size(item))
            if kind == Kind.RUNS:
                job.census.runs_by_status[text(item, "status") or "?"] += 1
                if when is not None:
                    job.census.runs_by_age[age_bucket((job.now - when).total_seconds() / 86400)] += 1
                if "GSI3PK" in item:
                    job.census.count(Kind.IDEMPOTENCY_KEYS, 1, item_size({"GSI3PK": item["GSI3PK"]}))
        seen += len(page)
        job.progress("items", seen)
