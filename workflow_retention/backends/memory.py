"""In-process store with pyworkflow-engine's ``InMemoryStorageBackend`` structure.

``MemoryBackend(store=instance)`` purges a live
``pyworkflow.storage.memory.InMemoryStorageBackend``; ``memory://NAME`` uses a
named store of this process (see :func:`get_store`), which only makes sense
when the engine runs in the same process.

A batch is selected and planned under the store's own ``_lock``, ``on_batch``
runs with the lock released (so a lease check never blocks the engine), and
the re-check, cascade and run removal happen together under the lock again:
atomic against the engine, which waits for at most one batch. The engine keeps
no ordered index (by time, parent or run) for its dicts, so each batch makes
one pass over the dicts under that lock to pick the next keyset page and the
batch's children, keeping this backend's own memory O(batch size).
"""

from __future__ import annotations

import heapq
import sys
import threading
from collections.abc import Iterable, Sequence
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from workflow_retention.base import Capability, CensusJob, OrphanJob, PurgeJob, StorageBackend
from workflow_retention.exceptions import ConfigurationError, StorageError
from workflow_retention.planning import (
    DELETED_SCHEDULE,
    TERMINAL_STATUSES,
    TERMINAL_SUBSCRIPTIONS,
    Plan,
    RunRef,
    key_owner,
    key_prefixes,
    newest_terminal,
    plan_page,
)
from workflow_retention.report import Kind, SpaceReport
from workflow_retention.seed import SeedRun
from workflow_retention.timeutil import older
from workflow_retention.urls import redact_url, split_url

_STORES: dict[str, Any] = {}
_STORES_LOCK = threading.Lock()


class MemoryStore:
    """An empty store with the engine's in-memory attributes (used when pyworkflow is not installed)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        for name in ("_runs", "_events", "_event_sequences", "_steps", "_hooks", "_schedules",
                     "_idempotency_index", "_token_index", "_cancellation_flags", "_streams",
                     "_signals", "_signal_sequences", "_subscriptions", "_checkpoints"):
            setattr(self, name, {})
        self._acknowledgments: set[tuple[str, str]] = set()


def get_store(name: str = "default") -> Any:
    """The process-wide store called ``name`` (created on first use)."""
    with _STORES_LOCK:
        if name not in _STORES:
            try:
                from pyworkflow.storage.memory import InMemoryStorageBackend
            except ImportError:
                _STORES[name] = MemoryStore()
            else:
                _STORES[name] = InMemoryStorageBackend()
        return _STORES[name]


def _value(status: Any) -> str:
    return str(getattr(status, "value", status))


def _orphan_owner(key: str, runs: dict) -> str | None:
    """The run a ``<run_id>:<step_id>`` key names when it is an orphan (its shortest prefix), else its owner."""
    prefixes = key_prefixes(key)
    return key_owner(key, runs.__contains__) or (prefixes[0] if prefixes else None)


def _maybe_candidate(run: Any, cutoff: datetime) -> bool:
    """Cheap pre-filter; :meth:`RunRef.candidate` decides exactly (unusual values pass through to it)."""
    if _value(run.status) not in TERMINAL_STATUSES:
        return _value(run.status) not in ("pending", "running", "suspended")  # unknown: screened and reported
    updated = run.updated_at
    if isinstance(updated, datetime) and updated.tzinfo is not None:
        return updated < cutoff
    return True


def _ref(run: Any) -> RunRef:
    return RunRef.parse(run.run_id, run.status, run.updated_at, run.parent_run_id, run,
                        getattr(run, "workflow_name", None))


class MemoryBackend(StorageBackend):
    name = "memory"
    capabilities = frozenset({Capability.SCHEDULES, Capability.STREAMS, Capability.SCHEDULED_SIGNALS,
                              Capability.CORRUPTIBLE_TIMESTAMPS, Capability.ARCHIVE,
                              Capability.ARCHIVE_RECHECK})
    # A batch is one hold of the store's lock plus one pass over its dicts; larger
    # batches amortize the pass (this backend's own memory stays O(batch)).
    default_batch_size = 5000

    def __init__(self, store: Any | None = None, *, store_name: str = "default", **options: Any) -> None:
        super().__init__(url=options.pop("url", f"memory://{store_name}"), **options)
        self.store = store if store is not None else get_store(store_name)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryBackend:
        parts = split_url(url)
        if parts.path not in ("", "/") or parts.query:
            raise ConfigurationError(f"memory URL must be memory:// or memory://NAME; got {redact_url(url)!r}")
        return cls(store_name=parts.netloc or "default", url=url, **options)

    def open(self) -> None:
        """Nothing to connect: the store is an object of this process."""

    def close(self) -> None:
        """Nothing to release: the store stays with the process that owns it."""

    def _check(self) -> dict[str, object]:
        return {"runs": len(self.store._runs), "store": type(self.store).__name__}

    # -- purge ------------------------------------------------------------------

    def _purge(self, job: PurgeJob) -> None:
        """Keyset pages by run_id (the cursor: the last run_id of a finished page); one shard, the whole store.

        Explain's dry run (``job.only``): those runs are the one page."""
        if job.only is not None:
            with self.store._lock:
                page = [r for r in self._refs_of(set(job.only)).values() if r.candidate(job.cutoff)]
                plan = plan_page(page, job.cutoff, job.report, self._refs_of, self._children_of)
            if plan is not None:
                self._delete_plan(job, plan)
            return
        cursor = job.resume_after or ""
        while True:
            with self.store._lock:
                page, after = self._next_page(job.cutoff, cursor, job.batch_size)
                if after is None:
                    break
                cursor = after
                plan = plan_page(page, job.cutoff, job.report, self._refs_of, self._children_of)
            if plan is not None:
                self._delete_plan(job, plan)
            job.finished(cursor)
        self._purge_aux(job)

    def _delete_plan(self, job: PurgeJob, plan: Plan) -> None:
        """Boundary with the store unlocked (the engine may write meanwhile); re-check and delete under its lock."""
        deletable, held = plan.order()
        if not deletable:
            job.report.held += len(held)
            return
        job.boundary([r.run_id for r in deletable])
        with self.store._lock:
            ids = [r.run_id for r in deletable]
            changed = {i for i in ids
                       if (fresh := self._ref_of(i)) is None or not plan.nodes[i].same_version(fresh)}
            if job.archive is not None:  # written to since the archive read it (an event appended): kept
                changed |= job.archive.records_differ(self._gather([i for i in ids if i not in changed]))
            survivors = set(changed)
            for parent, kids in self._children_of(ids).items():  # a child started since planning holds its parent
                for kid in kids:
                    if kid.run_id not in plan.nodes:
                        survivors.add(kid.run_id)
                        plan.nodes[kid.run_id] = kid
                        plan.children.setdefault(parent, []).append(kid.run_id)
            deletable, held = plan.order(survivors=survivors)
            job.report.changed += len(changed)
            job.report.held += len(held)
            self._delete(job, deletable)

    def _ref_of(self, run_id: str | None) -> RunRef | None:
        run = self.store._runs.get(run_id) if run_id else None
        return _ref(run) if run is not None else None

    def _refs_of(self, run_ids: set[str]) -> dict[str, RunRef]:
        return {i: ref for i in run_ids if (ref := self._ref_of(i)) is not None}

    def _read_runs(self, run_ids: set[str]) -> dict[str, RunRef]:
        with self.store._lock:
            return self._refs_of(run_ids)

    def _read_children(self, parent_ids: Sequence[str]) -> dict[str, list[RunRef]]:
        with self.store._lock:
            return self._children_of(parent_ids)

    def _next_page(self, cutoff: datetime, cursor: str, size: int) -> tuple[list[RunRef], str | None]:
        """The next candidate runs after ``cursor`` and the new cursor (None: done).

        One pass over the runs, O(size) memory.
        """
        runs = self.store._runs
        ids = heapq.nsmallest(size, (run_id for run_id, run in runs.items()
                                     if run_id > cursor and _maybe_candidate(run, cutoff)))
        refs = [_ref(runs[run_id]) for run_id in ids]
        return [ref for ref in refs if ref.candidate(cutoff)], (ids[-1] if ids else None)

    ranks_whole_store = True

    def _newest_runs(self, names: set[str], n: int) -> dict[str, list[str]]:
        """One pass over the runs (no ordering by workflow): every workflow name at once."""
        with self.store._lock:
            return newest_terminal(((getattr(r, "workflow_name", None), r.run_id, _value(r.status), r.created_at)
                                    for r in self.store._runs.values()), n)

    def _children_of(self, parent_ids: Iterable[str]) -> dict[str, list[RunRef]]:
        wanted = set(parent_ids)
        found: dict[str, list[RunRef]] = {}
        for run in self.store._runs.values():
            if run.parent_run_id in wanted:
                found.setdefault(run.parent_run_id, []).append(_ref(run))
        return found

    def _delete(self, job: PurgeJob, runs: list[RunRef]) -> None:
        store, counts = self.store, job.report.counts
        ids = {r.run_id for r in runs}
        if not ids:
            return
        steps = [k for k, s in store._steps.items() if s.run_id in ids]
        checkpoints = [k for k in store._checkpoints if key_owner(k, store._runs.__contains__) in ids]
        hooks = [k for k in store._hooks if k[0] in ids]
        tokens = [t for t, v in store._token_index.items() if v[0] in ids]
        keys = [r.data.idempotency_key for r in runs
                if r.data.idempotency_key and store._idempotency_index.get(r.data.idempotency_key) == r.run_id]
        counts[Kind.RUNS] += len(runs)
        counts[Kind.EVENTS] += sum(len(store._events.get(i, ())) for i in ids)
        counts[Kind.EVENT_COUNTERS] += sum(1 for i in ids if i in store._event_sequences)
        counts[Kind.CANCELLATION_FLAGS] += sum(1 for i in ids if i in store._cancellation_flags)
        for kind, found in ((Kind.STEPS, steps), (Kind.CHECKPOINTS, checkpoints), (Kind.HOOKS, hooks),
                            (Kind.HOOK_TOKENS, tokens), (Kind.IDEMPOTENCY_KEYS, keys)):
            counts[kind] += len(found)
        if job.dry_run:
            return
        for collection, found in ((store._steps, steps), (store._checkpoints, checkpoints),
                                  (store._hooks, hooks), (store._token_index, tokens),
                                  (store._idempotency_index, keys)):
            for key in found:
                collection.pop(key, None)
        for run_id in ids:
            for collection in (store._events, store._event_sequences, store._cancellation_flags):
                collection.pop(run_id, None)
        for ref in runs:  # children first
            store._runs.pop(ref.run_id, None)

    def _purge_aux(self, job: PurgeJob) -> None:
        """Soft-deleted schedules and stream data older than the cutoff."""
        store, cutoff, report = self.store, job.sweep_cutoff, job.report
        with store._lock:
            schedules = [sid for sid, s in store._schedules.items()
                         if _value(s.status) == DELETED_SCHEDULE and older(s.updated_at, cutoff)]
            subs = [k for k, s in store._subscriptions.items()
                    if s.get("status") in TERMINAL_SUBSCRIPTIONS and older(s.get("created_at"), cutoff)]
            scheduled = getattr(store, "_scheduled_signals", {})
            delivered = [k for k, s in scheduled.items() if s.get("delivered") and older(s.get("due_at"), cutoff)]
            old_signals = {sid: [s for s in sigs if older(s.get("published_at"), cutoff)]
                           for sid, sigs in store._signals.items()}
            gone = {s["signal_id"] for sigs in old_signals.values() for s in sigs}
            acks = [a for a in store._acknowledgments if a[0] in gone]
            report.add(Kind.SCHEDULES, len(schedules))
            report.add(Kind.SUBSCRIPTIONS, len(subs))
            report.add(Kind.SCHEDULED_SIGNALS, len(delivered))
            report.add(Kind.SIGNALS, len(gone))
            report.add(Kind.ACKNOWLEDGMENTS, len(acks))
            if job.dry_run:
                return
            for collection, keys in ((store._schedules, schedules), (store._subscriptions, subs),
                                     (scheduled, delivered)):
                for key in keys:
                    collection.pop(key, None)
            for sid, old in old_signals.items():
                if old:
                    store._signals[sid] = [s for s in store._signals[sid] if s["signal_id"] not in gone]
            store._acknowledgments.difference_update(acks)

    # -- archive ----------------------------------------------------------------

    #: The engine's dicts a purge deletes from, as archive kinds: each record is a ``[key, value]`` pair.
    _ARCHIVED = ("_runs", "_events", "_event_sequences", "_cancellation_flags", "_steps", "_checkpoints",
                 "_hooks", "_token_index", "_idempotency_index")

    def _gather(self, run_ids: Sequence[str]) -> dict[str, Any]:
        """Each run's entries in the engine's dicts (the objects themselves), exactly those :meth:`_delete` pops."""
        store = self.store
        with store._lock:
            refs = self._refs_of(set(run_ids))
            found: dict[str, Any] = {}
            owned: dict[str, dict[str, list[Any]]] = {i: {k: [] for k in self._ARCHIVED} for i in refs}
            for run_id in refs:
                for name in ("_runs", "_events", "_event_sequences", "_cancellation_flags"):
                    if run_id in getattr(store, name):
                        owned[run_id][name].append([run_id, getattr(store, name)[run_id]])
                key = getattr(refs[run_id].data, "idempotency_key", None)
                if key and store._idempotency_index.get(key) == run_id:
                    owned[run_id]["_idempotency_index"].append([key, run_id])
            for name, owner in (("_steps", lambda k, v: v.run_id), ("_hooks", lambda k, v: k[0]),
                                ("_token_index", lambda k, v: v[0]),
                                ("_checkpoints", lambda k, v: key_owner(k, store._runs.__contains__))):
                for k, v in getattr(store, name).items():
                    if (who := owner(k, v)) in owned:
                        owned[who][name].append([k, v])
            for run_id, ref in refs.items():
                found[run_id] = (ref, {k: v for k, v in owned[run_id].items() if v})
            return found

    def _restore(self, lines: list[dict[str, Any]]) -> None:
        store = self.store
        with store._lock:
            taken = [line["run_id"] for line in lines if line["run_id"] in store._runs]
            if taken:
                raise StorageError(f"cannot restore into {self.url}: run {taken[0]} exists")
            for line in lines:  # nothing is replaced: an entry that exists (a key a live run now holds) refuses all
                for name, pairs in line["records"].items():
                    if name not in self._ARCHIVED:
                        raise StorageError(f"cannot restore {line['run_id']} into {self.url}: unknown kind {name!r}")
                    target = getattr(store, name)
                    held = next((key for key, _value in pairs if key in target), None)
                    if held is not None:
                        raise StorageError(f"cannot restore {line['run_id']} into {self.url}: its {name} entry "
                                           f"{str(held)[:200]!r} exists (a live run holds it); nothing restored")
            for line in lines:
                for name, pairs in line["records"].items():
                    target = getattr(store, name)
                    for key, value in pairs:
                        target[key] = value

    # -- orphans ----------------------------------------------------------------

    def _orphan_sources(self) -> dict[str, tuple[Any, Any]]:
        """kind -> (collection, function giving the run_id an entry names)."""
        store = self.store
        return {
            Kind.EVENTS: (store._events, lambda k, v: k),
            Kind.EVENT_COUNTERS: (store._event_sequences, lambda k, v: k),
            Kind.STEPS: (store._steps, lambda k, v: v.run_id),
            Kind.CHECKPOINTS: (store._checkpoints, lambda k, v: _orphan_owner(k, store._runs)),
            Kind.HOOKS: (store._hooks, lambda k, v: k[0]),
            Kind.HOOK_TOKENS: (store._token_index, lambda k, v: v[0]),
            Kind.CANCELLATION_FLAGS: (store._cancellation_flags, lambda k, v: k),
            Kind.IDEMPOTENCY_KEYS: (store._idempotency_index, lambda k, v: v),
        }

    def _sweep_orphans(self, job: OrphanJob) -> None:
        """Per kind, keyset pages of orphan keys; each page re-checked and deleted under the lock."""
        store, report = self.store, job.report
        report.bytes_estimated = True
        for kind, (collection, owner) in self._orphan_sources().items():
            cursor: Any = None
            while True:
                with store._lock:
                    orphans = (k for k, v in collection.items()
                               if (cursor is None or k > cursor) and owner(k, v) is not None
                               and owner(k, v) not in store._runs and _old_enough(kind, v, job.not_after))
                    page = heapq.nsmallest(job.batch_size, orphans)
                    if not page:
                        break
                    cursor = page[-1]
                    job.boundary([str(k) for k in page])
                    page = [k for k in page if k in collection and owner(k, collection[k]) not in store._runs]
                    report.add(kind, len(page))
                    report.bytes += sum(sys.getsizeof(collection[k]) for k in page)
                    if not job.dry_run:
                        for key in page:
                            del collection[key]

    # -- census and seed --------------------------------------------------------

    def _census(self, job: CensusJob) -> None:
        store, census = self.store, job.census
        with store._lock:
            for run in store._runs.values():
                census.count_run(_value(run.status), _ref(run).updated_at, job.now)
            census.count(Kind.RUNS, len(store._runs))
            census.count(Kind.EVENTS, sum(len(v) for v in store._events.values()))
            for kind, collection in ((Kind.STEPS, store._steps), (Kind.CHECKPOINTS, store._checkpoints),
                                     (Kind.HOOKS, store._hooks), (Kind.HOOK_TOKENS, store._token_index),
                                     (Kind.CANCELLATION_FLAGS, store._cancellation_flags),
                                     (Kind.IDEMPOTENCY_KEYS, store._idempotency_index),
                                     (Kind.SCHEDULES, store._schedules)):
                census.count(kind, len(collection))

    def _prepare_seed(self) -> None:
        pass

    def _write_seed(self, runs: list[SeedRun]) -> None:
        make = _factories(self.store)
        store = self.store
        with store._lock:
            taken = [s.run_id for s in runs if s.run_id in store._runs]
            if taken:  # the engine never overwrites a run on creation; nor does the seeder
                raise StorageError(f"cannot seed {self.url}: run {taken[0]} already exists (seed --append draws "
                                   "fresh ids)")
            for seed in runs:
                run = make["run"](seed.run)
                store._runs[run.run_id] = run
                store._events[run.run_id] = [make["event"]({**e, "sequence": i}) for i, e in enumerate(seed.events)]
                store._event_sequences[run.run_id] = len(seed.events)
                if run.idempotency_key:
                    store._idempotency_index[run.idempotency_key] = run.run_id
                for step in seed.steps:
                    store._steps[step["step_id"]] = make["step"](step)
                for hook in seed.hooks:
                    store._hooks[(hook["run_id"], hook["hook_id"])] = make["hook"](hook)
                    store._token_index[hook["token"]] = (hook["run_id"], hook["hook_id"])
                store._checkpoints.update(seed.checkpoints)
                if seed.cancel_flag:
                    store._cancellation_flags[run.run_id] = True


    def _space(self) -> SpaceReport:
        return SpaceReport.unknown(self.url, "an in-process memory store: its data is Python objects in this "
                                             "process's heap, not measured (a purge frees them for the garbage "
                                             "collector at once)")

    def _count_runs(self, limit: int) -> tuple[int, bool]:
        n = len(self.store._runs)
        return min(n, limit), n <= limit


def _old_enough(kind: str, value: Any, not_after: datetime) -> bool:
    """Grace period: an entry that records when it was written must predate ``not_after``."""
    if kind == Kind.EVENTS:
        stamps = [getattr(e, "timestamp", None) for e in value or ()]
    else:
        stamps = [getattr(value, "updated_at", None), getattr(value, "created_at", None)]
    stamps = [s for s in stamps if s is not None]
    return all(older(s, not_after) for s in stamps)


def _factories(store: Any) -> dict[str, Any]:
    """Build records as the store's engine would: pyworkflow's classes if it is pyworkflow's store."""
    if type(store).__module__.startswith("pyworkflow"):
        from pyworkflow.engine.events import Event, EventType
        from pyworkflow.storage.schemas import Hook, StepExecution, WorkflowRun

        def event(d: dict) -> Any:
            return Event(event_id=d["event_id"], run_id=d["run_id"], type=EventType(d["type"]),
                         timestamp=datetime.fromisoformat(d["timestamp"]), data=d["data"], sequence=d["sequence"])

        return {"run": WorkflowRun.from_dict, "step": StepExecution.from_dict, "hook": Hook.from_dict,
                "event": event}

    def record(d: dict) -> SimpleNamespace:
        return SimpleNamespace(**{k: (datetime.fromisoformat(v) if k.endswith("_at") and isinstance(v, str)
                                      or k == "timestamp" else v) for k, v in d.items()})

    return {"run": record, "step": record, "hook": record, "event": record}
