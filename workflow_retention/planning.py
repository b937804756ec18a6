"""Which runs may go, and in which order: shared by every backend.

A run is *expired* when its status is terminal and its ``updated_at`` is
strictly older than the cutoff. A run is *deletable* when it is expired and
every child run is deletable. An expired run that is not deletable is *held*
(a child survives). Deletable descendants go before their ancestors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from workflow_retention.timeutil import parse_timestamp

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "continued_as_new", "interrupted"})
LIVE_STATUSES = frozenset({"pending", "running", "suspended"})

# What a run_id may look like before anything derived from it is deleted:
# engine ids are run_<hex> and sched_<id>_<hex>. Path separators, ':' (the
# checkpoint/token separator), wildcards and control characters are refused.
_SAFE_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$")


def is_safe_run_id(run_id: object) -> bool:
    return isinstance(run_id, str) and bool(_SAFE_RUN_ID.match(run_id)) and ".." not in run_id


@dataclass
class RunRef:
    """The fields of a run record that retention decides on.

    ``updated_at`` is None when the stored value could not be parsed (such a
    run is never expired). ``data`` carries whatever else the backend needs
    later (keys, index values, the raw record).
    """

    run_id: str
    status: str
    updated_at: datetime | None
    parent_run_id: str | None = None
    data: Any = None

    @classmethod
    def parse(cls, run_id: str, status: object, updated_at: object, parent_run_id: str | None = None,
              data: Any = None) -> RunRef:
        try:
            when = parse_timestamp(updated_at)
        except (TypeError, ValueError):
            when = None
        status_text = getattr(status, "value", status)
        return cls(run_id, str(status_text).lower() if status_text is not None else "", when,
                   parent_run_id or None, data)

    def is_expired(self, cutoff: datetime) -> bool:
        return (
            self.status in TERMINAL_STATUSES
            and self.updated_at is not None
            and self.updated_at < cutoff
        )

    @property
    def corrupt(self) -> bool:
        """A terminal run whose updated_at could not be parsed: reported, never deleted."""
        return self.status in TERMINAL_STATUSES and self.updated_at is None

    def same_version(self, other: RunRef) -> bool:
        """True when ``other`` (a fresh read) still has this status and updated_at."""
        return self.status == other.status and self.updated_at == other.updated_at


ChildrenOf = Callable[[Sequence[str]], Mapping[str, Iterable[RunRef]]]


@dataclass
class Plan:
    """The deletion plan for a batch of expired root runs and their descendants."""

    cutoff: datetime
    nodes: dict[str, RunRef] = field(default_factory=dict)
    children: dict[str, list[str]] = field(default_factory=dict)
    roots: list[str] = field(default_factory=list)

    def order(self, survivors: frozenset[str] | set[str] = frozenset()) -> tuple[list[RunRef], list[RunRef]]:
        """Return ``(deletable children-first, held)``.

        ``survivors`` are runs found changed at deletion time: they, and every
        ancestor of theirs, are not deleted.
        """
        memo: dict[str, bool] = {}
        deletable: list[RunRef] = []
        held: list[RunRef] = []

        def visit(run_id: str, path: set[str]) -> bool:
            if run_id in memo:
                return memo[run_id]
            node = self.nodes.get(run_id)
            if node is None or run_id in path or run_id in survivors or not node.is_expired(self.cutoff):
                return False
            path.add(run_id)
            ok = True
            for child in self.children.get(run_id, []):
                ok = visit(child, path) and ok
            path.discard(run_id)
            memo[run_id] = ok
            (deletable if ok else held).append(node)
            return ok

        for root in self.roots:
            visit(root, set())
        held = [h for h in held if h.run_id not in survivors]
        return deletable, held


def plan_deletion(roots: Sequence[RunRef], children_of: ChildrenOf, cutoff: datetime) -> Plan:
    """Build the plan for ``roots`` (expired runs whose parent is not expired).

    ``children_of(parent_ids)`` returns the child runs of each parent, read
    from the store's parent index. Only expired children are descended into:
    a child that is not expired already makes its parent held.
    """
    plan = Plan(cutoff=cutoff)
    frontier: list[str] = []
    for ref in roots:
        if ref.run_id not in plan.nodes:
            plan.nodes[ref.run_id] = ref
            plan.roots.append(ref.run_id)
            frontier.append(ref.run_id)
    while frontier:
        found = children_of(frontier)
        nxt: list[str] = []
        for parent in frontier:
            kids = list(found.get(parent, ()))
            plan.children[parent] = [k.run_id for k in kids]
            for kid in kids:
                if kid.run_id not in plan.nodes:
                    plan.nodes[kid.run_id] = kid
                    if kid.is_expired(cutoff):
                        nxt.append(kid.run_id)
        frontier = nxt
    return plan


def split_plan(plan: Plan, size: int) -> Iterator[Plan]:
    """Cut ``plan`` into plans of about ``size`` runs, roots in run_id order, each root with its descendants.

    A family (a root and the descendants planned under it) is never split, so
    children still go before their parent within one batch.
    """
    group: list[str] = []
    count = 0
    for root in sorted(plan.roots):
        group.append(root)
        count += _family_size(plan, root)
        if count >= size:
            yield Plan(plan.cutoff, plan.nodes, plan.children, group)
            group, count = [], 0
    if group:
        yield Plan(plan.cutoff, plan.nodes, plan.children, group)


def _family_size(plan: Plan, root: str) -> int:
    seen = {root}
    stack = [root]
    while stack:
        for kid in plan.children.get(stack.pop(), ()):
            if kid not in seen and kid in plan.nodes:
                seen.add(kid)
                stack.append(kid)
    return len(seen)


def drop_invalid(refs: Sequence[RunRef], report: Any) -> list[RunRef]:
    """Remove runs with an unsafe id or a corrupt updated_at, counting each in ``report.skipped``."""
    valid = []
    for ref in refs:
        if not is_safe_run_id(ref.run_id):
            report.skipped += 1
            report.warn(f"run_id {ref.run_id!r} is not a safe identifier; run left alone")
        elif ref.corrupt:
            report.skipped += 1
            report.warn(f"run {ref.run_id!r} has an unreadable updated_at; run left alone")
        else:
            valid.append(ref)
    return valid


def split_roots(candidates: Sequence[RunRef], parents: Mapping[str, RunRef | None],
                cutoff: datetime) -> list[RunRef]:
    """Keep the candidates whose parent is missing or not expired.

    A candidate with an expired parent is reached through that parent's plan
    instead, so every run is planned (and counted) exactly once.
    """
    roots = []
    for ref in candidates:
        parent = parents.get(ref.parent_run_id) if ref.parent_run_id else None
        if parent is None or not parent.is_expired(cutoff) or parent.run_id == ref.run_id:
            roots.append(ref)
    return roots
