"""Why is this run still here? One run, judged by the purge's own rules, on every backend.

:meth:`StorageBackend.explain` answers with an :class:`Explanation`: whether a purge with the
given cutoff would delete the run now, and if not, every reason (no such run, an active
status, updated at or after the cutoff, an unsafe id, an unreadable record, the live or recent
child that holds it, the purge's own re-check), with what would go of it, per kind.

Two sources, so that the answer is the purge's and can also say why:

* the *reasons* come from :mod:`workflow_retention.planning` applied to the run, its ancestors
  and its descendants, read by id through the backend's two primitives ``_read_runs`` and
  ``_read_children``;
* the *verdict and counts* come from the backend's own purge, run as a dry run whose candidates
  are exactly the run's family (``PurgeJob.only``): the topmost expired ancestor the run would
  be planned under, and every descendant. Where the two disagree (a check only the backend
  makes), the dry run decides, and its warnings are the reason.

Nothing is written to the store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from workflow_retention.planning import (
    LIVE_STATUSES,
    TERMINAL_STATUSES,
    Expiry,
    Plan,
    RunRef,
    plan_deletion,
)
from workflow_retention.report import PurgeReport, printable

ReadRuns = Callable[[set[str]], Mapping[str, RunRef]]
ReadChildren = Callable[[Sequence[str]], Mapping[str, Sequence[RunRef]]]


@dataclass
class Explanation:
    """The answer of :meth:`StorageBackend.explain` for one run and one cutoff."""

    run_id: str
    cutoff: datetime
    backend: str
    #: A run record with this id exists (readable or not).
    exists: bool = False
    status: str | None = None
    updated_at: datetime | None = None
    parent_run_id: str | None = None
    #: A purge with this cutoff would delete the run now.
    deleted: bool = False
    #: Why not (empty when ``deleted``); each a sentence.
    reasons: list[str] = field(default_factory=list)
    #: The run the purge would plan it under (itself, or its topmost expired ancestor).
    planned_under: str | None = None
    #: The other runs deleted in the same step: its descendants (children go first) and, when it is planned
    #: under an ancestor, that family's other deletable runs.
    goes_with: list[str] = field(default_factory=list)
    #: What the purge would delete of that family, per kind (the dry run's counts).
    counts: dict[str, int] = field(default_factory=dict)
    #: What the dry run reported (records it left alone, runs it held or found changed).
    warnings: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return "would be deleted" if self.deleted else "kept"

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "backend": self.backend, "cutoff": self.cutoff.isoformat(),
            "exists": self.exists, "status": self.status,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "parent_run_id": self.parent_run_id, "deleted": self.deleted, "verdict": self.verdict,
            "reasons": list(self.reasons), "planned_under": self.planned_under, "goes_with": list(self.goes_with),
            "counts": dict(sorted(self.counts.items())), "warnings": list(self.warnings),
        }

    def lines(self) -> list[str]:
        """The explanation as text, one fact per line."""
        cutoff = self.cutoff.isoformat()
        out = [f"run {self.run_id!r} on {self.backend}: {self.verdict} by a purge with cutoff {cutoff}"]
        if self.exists:
            when = self.updated_at.isoformat() if self.updated_at else "unreadable"
            out.append(f"  status {self.status!r}, updated_at {when}, parent {self.parent_run_id or '(none)'}")
        out += [f"  why kept: {reason}" for reason in self.reasons]
        if self.planned_under and self.planned_under != self.run_id:
            out.append(f"  planned under its expired ancestor {self.planned_under!r} (a family goes children first)")
        if self.goes_with:
            shown = ", ".join(repr(r) for r in self.goes_with[:10])
            more = f" and {len(self.goes_with) - 10} more" if len(self.goes_with) > 10 else ""
            out.append(f"  goes together with {len(self.goes_with)} other run(s): {shown}{more}")
        if self.deleted and self.counts:
            out.append("  would delete: " + ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()) if v))
        out += [f"  dry run: {w}" for w in self.warnings]
        return [printable(line) for line in out]


def explain_run(run_id: str, cutoff: datetime, backend: str, read_runs: ReadRuns, read_children: ReadChildren,
                dry_run: Callable[[frozenset[str]], tuple[PurgeReport, set[str]]]) -> Explanation:
    """Explain ``run_id`` at ``cutoff``. ``dry_run(family)``: the backend's dry-run purge of exactly those runs,
    returning its report and the ids it would delete."""
    answer = Explanation(run_id=run_id, cutoff=cutoff, backend=backend)
    ref = read_runs({run_id}).get(run_id)
    if ref is None:
        answer.reasons.append("no run record with this id is in the store (never written, or already purged)")
        return answer
    answer.exists, answer.status, answer.parent_run_id = True, ref.status, ref.parent_run_id
    answer.updated_at = ref.updated_at
    answer.reasons += _own_reasons(ref, cutoff)
    if answer.reasons:
        return answer
    root, loop = _plan_root(ref, cutoff, read_runs)
    if loop:
        answer.reasons.append(f"its parent_run_id links loop ({' -> '.join(repr(r) for r in loop)}), so no root "
                              "run reaches it: a purge plans a family from a run whose parent is not expired")
    plan = plan_deletion([root], read_children, cutoff)
    _, held = plan.order()
    if ref in held:
        answer.reasons += _holders(plan, run_id, cutoff)
    answer.planned_under = root.run_id
    report, going = dry_run(frozenset(plan.nodes))
    answer.warnings = list(report.warnings)
    answer.deleted = run_id in going
    if answer.deleted:
        answer.reasons = []
        answer.goes_with = sorted(going - {run_id})
        answer.counts = {k: v for k, v in report.counts.items() if v}
    elif not answer.reasons:
        own = [w for w in report.warnings if repr(run_id) in w]
        answer.reasons += own or ["the purge's own checks keep it (see the dry run's warnings)" if report.warnings
                                  else "the purge's dry run does not delete it"]
    return answer


def _own_reasons(ref: RunRef, cutoff: datetime) -> list[str]:
    defect = ref.defect(cutoff)
    if defect is not None:
        return [defect]
    if ref.status in LIVE_STATUSES:
        return [f"its status is {ref.status!r}: only terminal runs ({', '.join(sorted(TERMINAL_STATUSES))}) go"]
    if ref.status not in TERMINAL_STATUSES:
        return [f"its status {ref.status!r} is not one pyworkflow writes"]
    if isinstance(cutoff, Expiry):
        why = cutoff.why_kept(ref)
        return [f"the retention policy keeps it: {why} ({cutoff.rule_label(ref)})"] if why else []
    if ref.updated_at is not None and ref.updated_at >= cutoff:
        return [f"it was updated at {ref.updated_at.isoformat()}, not before the cutoff {cutoff.isoformat()}"]
    return []


def _plan_root(ref: RunRef, cutoff: datetime, read_runs: ReadRuns) -> tuple[RunRef, list[str]]:
    """The topmost expired ancestor of ``ref`` (a purge plans a family from there), or ``ref`` itself; and the
    loop of expired ancestors the walk ran into (empty when it reached a root), as the purge walks: to the end."""
    root, path = ref, {ref.run_id: 0}  # run id -> position on the walk (a dict keeps the order: no quadratic scan)
    while root.parent_run_id:
        if root.parent_run_id in path:
            return root, [*list(path)[path[root.parent_run_id]:], root.parent_run_id]
        parent = read_runs({root.parent_run_id}).get(root.parent_run_id)
        if parent is None or not parent.eligible(cutoff):
            break
        path[parent.run_id] = len(path)
        root = parent
    return root, []


def _holders(plan: Plan, run_id: str, cutoff: datetime) -> list[str]:
    """The descendants that hold ``run_id``: each child that is not eligible, with the path to it."""
    reasons: list[str] = []
    stack: list[tuple[str, tuple[str, ...]]] = [(run_id, ())]
    seen = {run_id}
    while stack and len(reasons) < 20:
        node, path = stack.pop()
        for kid in plan.children.get(node, []):
            if kid in seen:
                continue
            seen.add(kid)
            child = plan.nodes.get(kid)
            via = f" (via {' -> '.join(repr(p) for p in (path + (node,))[1:])})" if path else ""
            if child is None:
                continue
            if not child.eligible(cutoff):
                why = _own_reasons(child, cutoff) or ["it is not expired"]
                which = "child" if not path else "descendant"
                reasons.append(f"held by its {which} {kid!r}{via}: {why[0]} "
                               "(a parent goes only after all its children)")
            else:
                stack.append((kid, path + (node,)))
    return reasons or ["a descendant of it is kept, so it is held (a parent goes only after all its children)"]
