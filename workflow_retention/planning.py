"""The rules that decide which runs and which derived records go: one implementation, used by every backend.

A run is *expired* when its status is one of the terminal statuses exactly as
pyworkflow writes them (lower case) and its ``updated_at`` is strictly older
than the cutoff. It is *eligible* when it is expired and its id is safe. A run
is *deletable* when it is eligible and every child run is deletable; an
eligible run that is not deletable is *held* (a child survives). Deletable
descendants go before their ancestors.

Everything a backend needs to decide is here, so that a rule changes in one
place:

* :meth:`RunRef.defect`: why a run is left alone and reported (an unsafe id,
  an unreadable ``updated_at``, a status pyworkflow never writes);
* :func:`screen`, :func:`split_roots`, :func:`plan_deletion`,
  :func:`plan_page`: the page -> screen -> parents -> roots -> plan pipeline;
* :meth:`Plan.order`, :func:`heights`, :func:`split_plan`: children first,
  holds, batches;
* :func:`key_owner`: which run a derived key ``<run_id>:<rest>`` (a step
  checkpoint, a hook token) belongs to: the *longest* prefix that names an
  existing run, since run ids may themselves contain ``:``.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from workflow_retention.timeutil import parse_timestamp

if TYPE_CHECKING:
    from workflow_retention.policy import Policy

T = TypeVar("T")

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "continued_as_new", "interrupted"})
LIVE_STATUSES = frozenset({"pending", "running", "suspended"})
#: Every run status pyworkflow-engine writes (always lower case).
RUN_STATUSES = TERMINAL_STATUSES | LIVE_STATUSES
#: The status pyworkflow stores for a soft-deleted schedule (exactly; ``DELETED`` is not one it writes).
DELETED_SCHEDULE = "deleted"
#: Stream subscription statuses that are final (the baseline's subscription sweep deletes these).
TERMINAL_SUBSCRIPTIONS = ("terminated", "completed")
#: The separator of derived keys: step checkpoints ``<run_id>:<step_id>``, tokens ``<run_id>:<hook_id>``.
KEY_SEPARATOR = ":"

# What a run_id may look like before anything derived from it is deleted: engine ids are
# run_<hex> and sched_<schedule id[:8]>_<hex>, and schedule ids are chosen by users, so ':'
# is allowed (ownership of derived keys is decided by the longest existing prefix, see
# key_owner). Path separators, wildcards, whitespace and control characters are refused.
_SAFE_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,254}$")


def is_safe_run_id(run_id: object) -> bool:
    return isinstance(run_id, str) and bool(_SAFE_RUN_ID.match(run_id)) and ".." not in run_id


class Reporter(Protocol):
    """What the rules need of a report: a count of skipped records and their warnings."""

    skipped: int

    def warn(self, message: str) -> None: ...


@dataclass
class RunRef:
    """The fields of a run record that retention decides on.

    ``status`` is kept exactly as stored. ``updated_at`` is None when the stored
    value could not be parsed (such a run is never expired). ``data`` carries
    whatever else the backend needs later (keys, index values, the raw record).
    """

    run_id: str
    status: str
    updated_at: datetime | None
    parent_run_id: str | None = None
    data: Any = None
    #: Why the record exists but cannot be read at all (a damaged run file): such a run is never expired.
    unreadable: str | None = None
    #: The run's ``workflow_name`` as stored (None: not read, or not a string); a policy's rules need it.
    workflow_name: str | None = None

    @classmethod
    def parse(cls, run_id: str, status: object, updated_at: object, parent_run_id: str | None = None,
              data: Any = None, workflow_name: object = None) -> RunRef:
        try:
            when: datetime | None = parse_timestamp(updated_at)
        except (TypeError, ValueError):
            when = None
        status_text = getattr(status, "value", status)
        return cls(run_id, str(status_text) if status_text is not None else "", when,
                   parent_run_id or None, data,
                   workflow_name=workflow_name if isinstance(workflow_name, str) else None)

    def is_expired(self, cutoff: datetime) -> bool:
        """Terminal (exactly as pyworkflow writes it) and updated strictly before ``cutoff``.

        With a policy's :class:`Expiry` as ``cutoff``, the run's own rule decides (:meth:`Expiry.expires`).
        """
        if self.status not in TERMINAL_STATUSES or self.updated_at is None:
            return False
        if isinstance(cutoff, Expiry):
            return cutoff.expires(self)
        return self.updated_at < cutoff

    def eligible(self, cutoff: datetime) -> bool:
        """Expired with a safe id: it goes if all its children go. The one test every plan applies."""
        return self.is_expired(cutoff) and is_safe_run_id(self.run_id)

    @property
    def corrupt(self) -> bool:
        """A terminal run whose updated_at could not be parsed: reported, never deleted."""
        return self.status in TERMINAL_STATUSES and self.updated_at is None

    @property
    def unknown_status(self) -> bool:
        """A status pyworkflow never writes (``COMPLETED``, ``done``, empty): never deleted."""
        return self.status not in RUN_STATUSES

    def defect(self, cutoff: datetime) -> str | None:
        """Why a run a purge at ``cutoff`` would consider is left alone and reported; None if it is not."""
        if self.unreadable is not None:
            return f"its record cannot be read ({self.unreadable})"
        if self.unknown_status:
            if self.updated_at is None or self.updated_at < cutoff:
                return f"its status {self.status!r} is not one pyworkflow writes"
            return None
        if self.corrupt:
            return "its updated_at cannot be read"
        if (isinstance(cutoff, Expiry) and cutoff.needs_name and self.workflow_name is None
                and self.status in TERMINAL_STATUSES and self.updated_at is not None and self.updated_at < cutoff):
            return "its workflow_name cannot be read, and the retention policy decides by workflow name"
        if self.is_expired(cutoff) and not is_safe_run_id(self.run_id):
            return "its run_id is not a safe identifier"
        return None

    def candidate(self, cutoff: datetime) -> bool:
        """Worth screening: expired, or with a defect to report."""
        return self.is_expired(cutoff) or self.defect(cutoff) is not None

    def same_version(self, other: RunRef) -> bool:
        """True when ``other`` (a fresh read) still has this status and updated_at."""
        return self.status == other.status and self.updated_at == other.updated_at


#: A backend's :meth:`~workflow_retention.base.StorageBackend._newest_runs`: ``(names, n)`` -> for each workflow
#: name (at least those of ``names``), the ids of its ``n`` most recent terminal runs, newest first.
NewestRuns = Callable[[set[str], int], Mapping[str, Sequence[str]]]


#: The most decisions an :class:`Expiry` remembers until their batch boundary (a few batches' worth).
MAX_DECIDED = 50_000


class Expiry(datetime):
    """A retention policy's cutoff at one instant: the per-run decision, shared by every backend.

    As a ``datetime`` it is the *latest* cutoff any rule gives (``now`` minus the policy's shortest
    retention): the bound every backend's candidate query already uses, so each run some rule could expire
    is read. Per run, :meth:`RunRef.is_expired` hands the decision to :meth:`expires`: the run's own rule
    (status and workflow name, :meth:`Policy.retention`), its pins, and ``keep_last`` (the most recent
    terminal runs of its workflow, asked of the store once per workflow name through ``newest``).

    Derived values (``+``, ``-``, :meth:`replace`, :meth:`astimezone`) are plain datetimes, and an Expiry
    cannot be pickled: a value that lost its policy must never decide a run by the shortest retention.
    """

    policy: Policy
    #: The configured policy this cutoff applies (``policy`` itself, or under disk pressure the policy whose emergency
    #: rule ``policy`` is): what a successful purge records as applied, for the guard.
    applied: Policy
    instant: datetime
    pinned_runs: frozenset[str]
    pinned_workflows: tuple[str, ...]
    _newest: NewestRuns | None
    _kept: dict[str, tuple[str, ...]]
    #: The rule of each run found expired and not yet at a batch boundary (bounded: see :meth:`counting`).
    _decided: dict[str, str]
    #: Runs counted at a boundary lately (bounded): a store that re-checks a run after its boundary, or names it
    #: at a second boundary (a cascade's), does not count it twice.
    _counted: dict[str, None]
    #: Runs per rule, counted at the batch boundaries of the purges wrapped by :meth:`counting`.
    rule_counts: dict[str, int]
    #: Each (workflow name, status)'s cutoff, and whether a pinned pattern matches a name: asked per run.
    _limits: dict[tuple[str | None, str], datetime]
    _pinned_names: dict[str, bool]

    def __new__(cls, policy: Policy, now: datetime, *, pinned_runs: Collection[str] = (),
                pinned_workflows: Sequence[str] = (), newest: NewestRuns | None = None,
                applied: Policy | None = None) -> Expiry:
        if now.tzinfo is None:
            raise ValueError("an Expiry needs a timezone-aware now")
        now = now.astimezone(UTC)
        bound = now - policy.shortest()
        self = datetime.__new__(cls, bound.year, bound.month, bound.day, bound.hour, bound.minute, bound.second,
                                bound.microsecond, bound.tzinfo)
        self.policy, self.instant = policy, now
        self.applied = applied if applied is not None else policy
        self.pinned_runs, self.pinned_workflows = frozenset(pinned_runs), tuple(pinned_workflows)
        self._newest, self._kept = newest, {}
        self._decided, self._counted, self.rule_counts = {}, {}, {}
        self._limits, self._pinned_names = {}, {}
        return self

    def bound_to(self, newest: NewestRuns | None, whole_store: bool = False) -> Expiry:
        """The same policy, instant and pins for one purge of one store: ``newest`` answers ``keep_last``.

        ``whole_store``: ``newest`` ranks every workflow name in one call; it is asked once, now (before the
        purge opens any transaction), and a name it did not return has no terminal run.
        """
        bound = Expiry(self.policy, self.instant, pinned_runs=self.pinned_runs, pinned_workflows=self.pinned_workflows,
                       newest=newest, applied=self.applied)
        bound._decided, bound._counted, bound.rule_counts = self._decided, self._counted, self.rule_counts
        if newest is not None and whole_store:
            bound._kept = {name: tuple(ids) for name, ids in newest(set(), self.keeps_last).items()}
            bound._newest = lambda names, n: {}
        return bound

    @property
    def bound(self) -> datetime:
        """This cutoff as a plain datetime (the candidate queries' bound)."""
        return datetime(self.year, self.month, self.day, self.hour, self.minute, self.second, self.microsecond,
                        self.tzinfo)

    @property
    def sweep_cutoff(self) -> datetime:
        """The cutoff of the schedule and stream sweeps: the policy's default rule (they have no run status)."""
        return self.instant - self.policy.default

    @property
    def keeps_last(self) -> int:
        """The largest ``keep_last`` of any rule (0: the policy keeps no run by its rank)."""
        return self.policy.max_keep_last()

    @property
    def needs_name(self) -> bool:
        """Whether a run's workflow name can change the decision (workflow rules, keep_last, workflow pins)."""
        return bool(self.policy.workflows) or self.keeps_last > 0 or bool(self.pinned_workflows)

    def limit(self, ref: RunRef) -> datetime:
        """The cutoff of ``ref``'s own rule: it goes when updated strictly before it."""
        key = (ref.workflow_name, ref.status)
        found = self._limits.get(key)
        if found is None:
            found = self._limits[key] = self.instant - self.policy.retention(ref.workflow_name, ref.status)
        return found

    def _name_pinned(self, name: str) -> bool:
        """Whether a pinned workflow pattern matches ``name`` (asked per run; answered once per name)."""
        found = self._pinned_names.get(name)
        if found is None:
            found = self._pinned_names[name] = any(fnmatchcase(name, p) for p in self.pinned_workflows)
        return found

    def expires(self, ref: RunRef) -> bool:
        """Whether the policy expires ``ref`` (terminal, with a readable ``updated_at``) now."""
        if ref.updated_at is None or self.why_kept(ref) is not None:
            return False
        if ref.run_id not in self._decided and ref.run_id not in self._counted:
            _remember(self._decided, ref.run_id, self.rule_label(ref))  # held runs never reach a boundary
        return True

    def counting(self, on_batch: Callable[[Any], None] | None) -> Callable[[Any], None]:
        """``on_batch`` that first counts the batch's runs by the rule that expired each (:attr:`rule_counts`, and
        the purge report's ``rules`` as it goes, so a report persisted at a cursor holds them too): what each
        rule deletes, or in a dry run would delete (``purge --dry-run``, ``audit``)."""
        def count(info: Any) -> None:
            live = getattr(info.report, "rules", None)
            for run_id in info.run_ids:
                label = self._decided.pop(run_id, None)
                if label is not None:
                    self.rule_counts[label] = self.rule_counts.get(label, 0) + 1
                    if live is not None:
                        live[label] = live.get(label, 0) + 1
                    _remember(self._counted, run_id, None)
            if on_batch is not None:
                on_batch(info)
        return count

    def why_kept(self, ref: RunRef) -> str | None:
        """Why the policy keeps a terminal run (None: it expires): its rule, a pin, or keep_last."""
        if ref.updated_at is None:
            return "its updated_at cannot be read"
        if self.needs_name and ref.workflow_name is None:
            return "its workflow_name cannot be read"
        limit = self.limit(ref)
        if ref.updated_at >= limit:
            return f"it was updated at {ref.updated_at.isoformat()}, not before its rule's cutoff {limit.isoformat()}"
        if ref.run_id in self.pinned_runs:
            return "it is pinned"
        name = ref.workflow_name
        if name is not None and self.pinned_workflows and self._name_pinned(name):
            return f"its workflow {name!r} is pinned"
        keep = self.policy.keep_last_for(name) if name is not None else 0
        if name is not None and keep and ref.run_id in self.kept_last(name)[:keep]:
            return f"it is one of the {keep} most recent terminal runs of workflow {name!r} (keep_last)"
        return None

    def kept_last(self, name: str) -> tuple[str, ...]:
        """The ids of the most recent terminal runs of workflow ``name``, newest first, as the store orders them."""
        if name not in self._kept:
            if self._newest is None:
                raise RuntimeError("keep_last needs the store's newest runs: bind the Expiry with bound_to()")
            found = self._newest({name}, self.keeps_last)
            for other, ids in found.items():
                self._kept.setdefault(other, tuple(ids))
            self._kept.setdefault(name, ())
        return self._kept[name]

    def rule_label(self, ref: RunRef) -> str:
        """The rule that decides ``ref``, as ``purge --dry-run`` and ``audit`` name it."""
        return self.policy.rule_label(ref.workflow_name, ref.status)

    # A derived value is a plain datetime; an Expiry is never copied across a process boundary.
    def __add__(self, other: Any) -> Any:
        return self.bound + other

    def __radd__(self, other: Any) -> Any:
        return self.bound + other

    def __sub__(self, other: Any) -> Any:
        return self.bound - (other.bound if isinstance(other, Expiry) else other)

    def replace(self, *args: Any, **kwargs: Any) -> datetime:  # type: ignore[override]
        return self.bound.replace(*args, **kwargs)

    def astimezone(self, tz: Any = None) -> datetime:  # type: ignore[override]
        return self.bound.astimezone(tz)

    def __reduce__(self) -> Any:
        raise TypeError("an Expiry holds a retention policy and is not pickled: send the policy and the instant")

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self.__reduce__()

    def __copy__(self) -> Expiry:
        return self

    def __deepcopy__(self, memo: Any) -> Expiry:
        return self


def _remember(memo: dict[str, Any], key: str, value: Any) -> None:
    """``memo[key] = value``, forgetting the oldest entry past :data:`MAX_DECIDED` (memory bounded by batches)."""
    if len(memo) >= MAX_DECIDED:
        memo.pop(next(iter(memo)))
    memo[key] = value


def newest_terminal(runs: Iterable[tuple[object, str, object, object]], n: int,
                    names: Collection[str] | None = None) -> dict[str, list[str]]:
    """:data:`NewestRuns` by one pass over ``runs`` (``(workflow_name, run_id, status, created_at)``), for stores
    without an ordering by workflow and creation time: a heap of ``n`` per workflow name (of ``names``, or every
    name), so memory is bounded by the names times ``n``, not by the store. Only terminal runs with a
    readable ``created_at`` and a string name rank."""
    heaps: dict[str, list[tuple[datetime, str]]] = {}
    for name, run_id, status, created_at in runs:
        if not isinstance(name, str) or getattr(status, "value", status) not in TERMINAL_STATUSES:
            continue
        if names is not None and name not in names:
            continue
        try:
            created = parse_timestamp(created_at)
        except (TypeError, ValueError):
            continue
        heap = heaps.setdefault(name, [])
        if len(heap) < n:
            heapq.heappush(heap, (created, run_id))
        elif (created, run_id) > heap[0]:
            heapq.heapreplace(heap, (created, run_id))
    return {name: [run_id for _, run_id in sorted(heap, reverse=True)] for name, heap in heaps.items()}


def left_alone(report: Reporter, what: str, why: str) -> None:
    """The one way a record that cannot be judged safely is kept: counted in ``skipped``, a warning says why."""
    report.skipped += 1
    report.warn(f"{what}: {why}; left alone")


def screen(refs: Iterable[RunRef], cutoff: datetime, report: Reporter) -> list[RunRef]:
    """The eligible runs of ``refs``; each run with a :meth:`RunRef.defect` is counted in ``report.skipped``."""
    eligible = []
    for ref in refs:
        why = ref.defect(cutoff)
        if why is not None:
            left_alone(report, f"run {ref.run_id!r}", why)
        elif ref.eligible(cutoff):
            eligible.append(ref)
    return eligible


ChildrenOf = Callable[[Sequence[str]], Mapping[str, Iterable[RunRef]]]
ParentsOf = Callable[[set[str]], Mapping[str, RunRef]]


@dataclass
class Plan:
    """The deletion plan for a batch of eligible root runs and their descendants."""

    cutoff: datetime
    nodes: dict[str, RunRef] = field(default_factory=dict)
    children: dict[str, list[str]] = field(default_factory=dict)
    roots: list[str] = field(default_factory=list)

    def order(self, survivors: Collection[str] = frozenset()) -> tuple[list[RunRef], list[RunRef]]:
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
            if node is None or run_id in path or run_id in survivors or not node.eligible(self.cutoff):
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

    def copy(self) -> Plan:
        """A plan that a transaction attempt may extend (new children) without affecting a retry."""
        return Plan(self.cutoff, dict(self.nodes), {k: list(v) for k, v in self.children.items()},
                    list(self.roots))

    def forget(self, run_ids: Collection[str]) -> None:
        """Drop runs that no longer exist, so that they neither go nor hold their parents."""
        if not run_ids:
            return
        self.roots = [r for r in self.roots if r not in run_ids]
        for kids in self.children.values():
            kids[:] = [k for k in kids if k not in run_ids]
        for run_id in run_ids:
            self.nodes.pop(run_id, None)


def plan_deletion(roots: Sequence[RunRef], children_of: ChildrenOf, cutoff: datetime) -> Plan:
    """Build the plan for ``roots`` (eligible runs whose parent is not eligible).

    ``children_of(parent_ids)`` returns the child runs of each parent, read
    from the store's parent index. Only eligible children are descended into:
    any other child (live, recent, unreadable, unsafe) already holds its parent.
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
                    if kid.eligible(cutoff):
                        nxt.append(kid.run_id)
        frontier = nxt
    return plan


def split_roots(candidates: Sequence[RunRef], parents: Mapping[str, RunRef | None],
                cutoff: datetime) -> list[RunRef]:
    """Keep the candidates whose parent is missing or not eligible.

    A candidate with an eligible parent is reached through that parent's plan
    instead, so every run is planned (and counted) exactly once.
    """
    roots = []
    for ref in candidates:
        parent = parents.get(ref.parent_run_id) if ref.parent_run_id else None
        if parent is None or not parent.eligible(cutoff) or parent.run_id == ref.run_id:
            roots.append(ref)
    return roots


def plan_page(page: Iterable[RunRef], cutoff: datetime, report: Reporter, parents_of: ParentsOf,
              children_of: ChildrenOf) -> Plan | None:
    """The shared pipeline: screen a page of candidates, find their parents, split roots, plan.

    ``parents_of(ids)`` returns the existing runs among ``ids``. None when
    nothing on the page is a root to plan.
    """
    eligible = screen(page, cutoff, report)
    parents = parents_of({r.parent_run_id for r in eligible if r.parent_run_id}) if eligible else {}
    roots = split_roots(eligible, parents, cutoff)
    return plan_deletion(roots, children_of, cutoff) if roots else None


def heights(plan: Plan, runs: Sequence[RunRef]) -> list[list[RunRef]]:
    """``runs`` (children first) grouped by height in the plan: leaves, then their parents, and so on.

    Every run's children among ``runs`` are in earlier groups, so each group
    can be deleted at once (in parallel, or in one statement) after the ones
    before it.
    """
    ids = {r.run_id for r in runs}
    height: dict[str, int] = {}
    for ref in runs:
        kids = [height[c] for c in plan.children.get(ref.run_id, []) if c in ids and c in height]
        height[ref.run_id] = 1 + max(kids) if kids else 0
    groups: list[list[RunRef]] = [[] for _ in range(1 + max(height.values(), default=-1))]
    for ref in runs:
        groups[height[ref.run_id]].append(ref)
    return groups


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


# -- derived keys: <run_id>:<rest> ---------------------------------------------------------


def key_prefixes(key: str, separator: str = KEY_SEPARATOR) -> list[str]:
    """The run ids a derived key ``<run_id>:<rest>`` may belong to, shortest first.

    ``"a:b:c"`` gives ``["a", "a:b"]``; a key without ``:`` (a stream-step
    checkpoint) names no run and gives ``[]``. ``separator``: another one
    than ``:`` (the file store's hook files are ``<run_id>__<hook_id>``).
    """
    parts = key.split(separator)
    return [separator.join(parts[:n]) for n in range(1, len(parts))]


def key_owner(key: str, exists: Callable[[str], bool], separator: str = KEY_SEPARATOR) -> str | None:
    """The run a derived key belongs to: the longest prefix that names an existing run.

    None when no prefix names an existing run (the key is an orphan). A purge
    deletes a key with its owner only; a key whose longer prefix is a live run
    (``sched_cron:nig_6d1a7a53:step_1`` beside a run ``sched_cron``) belongs to
    that live run. ``exists`` must count every run record, whatever its
    status, id or readability: a run that cannot be deleted keeps its keys.
    """
    for prefix in reversed(key_prefixes(key, separator)):
        if exists(prefix):
            return prefix
    return None


def key_owners(keys: Iterable[str], existing: Callable[[set[str]], Collection[str]]) -> dict[str, str | None]:
    """:func:`key_owner` for many keys with one existence lookup: ``existing(ids)`` returns those that exist."""
    keys = list(keys)
    found = set(existing({p for k in keys for p in key_prefixes(k)}))
    return {k: key_owner(k, found.__contains__) for k in keys}


# -- small shared helpers ------------------------------------------------------------------


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most ``size`` items (the last may be shorter)."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk
