"""Sharded purges: the plan, the shards run side by side, the final pass and the merged report.

One purge of a store in ``n`` shards (see "Shards" in :class:`workflow_retention.base.StorageBackend`):

1. ``backend.shards(n)`` plans disjoint shards that cover every run (one whole-store shard for a backend
   that cannot be split, and then nothing below happens: it is an ordinary purge);
2. every shard is purged (``delete_old_runs(cutoff, shard=...)``), concurrently: here in threads or
   processes (:func:`purge_sharded`, the command line's ``--shards N --workers N``), or as a Celery
   canvas (:mod:`workflow_retention.celery`);
3. the final pass: one ordinary whole-store purge with the same cutoff, after every shard is done. It
   deletes the expired parents a shard had to keep because a child was still present when it looked,
   runs the schedule and stream sweeps, and its ``held`` and ``skipped`` are the purge's;
4. :func:`merge_reports`: one report, equal to that of one whole-store purge of the same data.

A shard that failed is never papered over: :class:`ShardedPurge` lists it, the final pass is not run, and
the callers fail loudly (an ERROR line and exit 1, or a failed task).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from workflow_retention import rules
from workflow_retention.base import OnBatch, Shard, StorageBackend, validate_shards
from workflow_retention.planning import Expiry
from workflow_retention.policy import cutoff_text, parse_cutoff
from workflow_retention.report import MAX_WARNINGS, PurgeReport
from workflow_retention.rules import StateStore
from workflow_retention.timeutil import parse_timestamp, utcnow

log = logging.getLogger("workflow_retention.shards")

#: Size of the hash space a run id is mapped to by :func:`hash_slot` (2**32).
HASH_SPACE = 1 << 32
HASH_KIND = "sha256-32"


# -- hash ranges of run ids (for stores with no ordered key to range over: the file store) ------------------


def hash_slot(run_id: str) -> int:
    """The run id's place in ``[0, HASH_SPACE)``: the first 32 bits of its SHA-256 (stable across processes)."""
    return int.from_bytes(hashlib.sha256(run_id.encode("utf-8", "surrogateescape")).digest()[:4], "big")


def hash_shards(n: int) -> list[Shard]:
    """``n`` equal ranges of :func:`hash_slot`: disjoint, covering, balanced, planned without reading a run."""
    n = validate_shards(n)
    bounds = [i * HASH_SPACE // n for i in range(n + 1)]
    return [Shard(i, n, {"hash": HASH_KIND, "from": bounds[i], "to": bounds[i + 1]}) for i in range(n)]


def in_hash_shard(shard: Shard, run_id: str) -> bool:
    """Whether ``run_id`` belongs to ``shard`` (a :func:`hash_shards` shard, or the whole store)."""
    if shard.is_whole:
        return True
    spec = shard.spec
    if spec.get("hash") != HASH_KIND:
        raise ValueError(f"shard {shard.label} is not a hash range of run ids: {spec!r}")
    return int(spec["from"]) <= hash_slot(run_id) < int(spec["to"])


# -- reports ---------------------------------------------------------------------------------------------------


def report_from_dict(data: dict[str, Any]) -> PurgeReport:
    """A :class:`PurgeReport` back from its :meth:`~PurgeReport.to_dict` (a Celery result, a process's return)."""
    started = data.get("started_at")
    cutoff = data.get("cutoff")
    return PurgeReport(
        backend=data["backend"], dry_run=bool(data.get("dry_run")), counts=Counter(data.get("counts") or {}),
        batches=int(data.get("batches") or 0), started_at=parse_timestamp(started) if started else None,
        duration_s=float(data.get("duration_s") or 0.0), stopped=data.get("stopped"),
        stop_outcome=data.get("stop_outcome"),
        warnings=list(data.get("warnings") or []), warnings_total=int(data.get("warnings_total") or 0),
        cutoff=parse_timestamp(cutoff) if cutoff else None, held=int(data.get("held") or 0),
        changed=int(data.get("changed") or 0), skipped=int(data.get("skipped") or 0),
        rules={str(k): int(v) for k, v in (data.get("rules") or {}).items()})


def merge_reports(parts: Sequence[PurgeReport], final: PurgeReport | None, *, backend: str,
                  cutoff: datetime, dry_run: bool = False, started_at: datetime | None = None,
                  duration_s: float | None = None) -> PurgeReport:
    """The purge's one report from its shards' reports and the final pass's.

    Runs and every kind of data, batches and ``changed`` add up (each run is deleted, or found changed, by
    exactly one of them). ``held``, ``skipped`` and the warnings are the final pass's: it sees every run the
    shards kept, so it counts each held parent and each record left alone once (without a final pass they
    add up). ``stopped``: the first part that stopped. ``duration_s``: the wall-clock time given, else the
    longest part plus the final pass.
    """
    everything = [*parts, *([final] if final is not None else [])]
    merged = PurgeReport(backend=backend, dry_run=dry_run, cutoff=cutoff,
                         started_at=started_at or min((p.started_at for p in everything if p.started_at),
                                                      default=None))
    for part in everything:
        merged.merge(dict(part.counts))
        for rule, n in part.rules.items():
            merged.rules[rule] = merged.rules.get(rule, 0) + n
        merged.batches += part.batches
        merged.changed += part.changed
        if merged.stopped is None and part.stopped:
            merged.stopped, merged.stop_outcome = part.stopped, part.stop_outcome
    judged = [final] if final is not None else list(parts)
    for part in judged:
        merged.held += part.held
        merged.skipped += part.skipped
        merged.warnings_total += part.warnings_total
        merged.warnings.extend(part.warnings[: MAX_WARNINGS - len(merged.warnings)])
    if duration_s is None:
        duration_s = max((p.duration_s for p in parts), default=0.0) + (final.duration_s if final else 0.0)
    merged.duration_s = round(duration_s, 3)
    return merged


# -- running a plan in threads or processes --------------------------------------------------------------------


@dataclass
class ShardedPurge:
    """The outcome of :func:`purge_sharded`: the merged report, each shard's, failures, the final pass."""

    report: PurgeReport
    shards: list[Shard]
    parts: dict[int, PurgeReport] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    final: PurgeReport | None = None

    @property
    def failed(self) -> bool:
        return bool(self.failures)

    def failure_text(self) -> str:
        """``shard 2/4: StorageError: ...; shard 3/4: ...``."""
        return "; ".join(f"shard {self.shards[i].label}: {why}" for i, why in sorted(self.failures.items()))


def purge_one_shard(open_backend: Callable[[], StorageBackend], cutoff_iso: str, shard: dict[str, Any],
                    dry_run: bool = False, on_batch: OnBatch | None = None,
                    pins: Callable[[], StateStore] | None = None) -> dict[str, Any]:
    """Purge one shard in this process or thread; ``{"report": {...}}`` or ``{"error": "Type: message"}``.

    Module-level and given plain values only, so a process pool can run it. An error is returned as text
    (the caller fails loudly with it), never raised across the process boundary, where it might not pickle.
    ``pins`` opens the state store whose pins the shard re-reads at every batch boundary (:func:`rules.watching`).
    """
    try:
        cutoff = parse_cutoff(cutoff_iso)
        backend = open_backend()
        with backend, rules.watching(pins, on_batch, cutoff) as watched:
            report = counted(backend, cutoff, watched, dry_run=dry_run, shard=Shard.from_dict(shard))
    except Exception as exc:  # noqa: BLE001 - reported by the caller as the shard's failure
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"report": report.to_dict()}


def counted(backend: StorageBackend, cutoff: datetime, on_batch: OnBatch | None, **options: Any) -> PurgeReport:
    """``backend.delete_old_runs(cutoff, ...)``, with a policy's runs by rule counted into ``report.rules`` as the
    batches go (a fresh copy of the policy's cutoff: counts of this purge alone)."""
    if not isinstance(cutoff, Expiry):
        return backend.delete_old_runs(cutoff, on_batch=on_batch, **options)
    mine = parse_cutoff(cutoff_text(cutoff))
    assert isinstance(mine, Expiry)
    return backend.delete_old_runs(mine, on_batch=mine.counting(on_batch), **options)


def purge_sharded(open_backend: Callable[[], StorageBackend], cutoff: datetime, shards: int, *,
                  workers: int | None = None, processes: bool = False, dry_run: bool = False,
                  on_shard: Callable[[Shard, PurgeReport | None, str | None], None] | None = None,
                  on_batch: OnBatch | None = None, pins: Callable[[], StateStore] | None = None) -> ShardedPurge:
    """Purge the store ``open_backend()`` opens in ``shards`` shards, ``workers`` at a time, then the final pass.

    ``open_backend`` builds a new backend object (each shard gets its own, in its own thread or process;
    with ``processes=True`` it must pickle, e.g. ``functools.partial(by_url, url)``). A plan of one shard
    (``shards=1``, or a backend that cannot be split) is one ordinary purge in this thread. A dry run is one
    whole-store dry run: it counts exactly what the sharded purge would delete, in one report.
    ``on_shard(shard, report, error)`` is called as each shard ends. ``on_batch`` is every purge's (the
    shards' and the final pass's; threads only: it does not cross a process boundary). When a shard fails,
    the final pass is not run and ``failures`` says why; the caller must fail loudly. ``pins`` opens the state
    store (``partial(StateStore.open, url, key)``: it pickles): every shard and the final pass re-read its pins at
    each batch boundary and stop when one was added since ``cutoff`` was made (the final pass is then not run).
    """
    if processes and on_batch is not None:
        raise ValueError("on_batch cannot be sent to other processes: use threads (processes=False)")
    shards = validate_shards(shards, "shards")
    started, clock = utcnow(), time.monotonic()
    with open_backend() as planner:
        plan = planner.shards(shards, until=cutoff) if not dry_run else [Shard.whole()]
        if len(plan) == 1:
            with rules.watching(None if dry_run else pins, on_batch, cutoff) as watched:
                report = counted(planner, cutoff, watched, dry_run=dry_run)
            return ShardedPurge(report=report, shards=plan, parts={0: report})
        backend_url = planner.url
    log.info("sharded purge started backend=%s shards=%d workers=%s", backend_url, len(plan), workers or len(plan))
    result = ShardedPurge(report=PurgeReport(backend=backend_url, dry_run=False, cutoff=cutoff), shards=plan)
    pool: Executor = (ProcessPoolExecutor if processes else ThreadPoolExecutor)(max_workers=workers or len(plan))
    with pool:
        futures = {pool.submit(purge_one_shard, open_backend, cutoff_text(cutoff), s.to_dict(), False, on_batch,
                               pins): s for s in plan}
        for future in as_completed(futures):
            shard = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - a worker process that died (BrokenProcessPool...)
                outcome = {"error": f"{type(exc).__name__}: {exc}"}
            part = report_from_dict(outcome["report"]) if "report" in outcome else None
            if part is not None:
                result.parts[shard.index] = part
            else:
                result.failures[shard.index] = outcome["error"]
                log.error("shard %s failed backend=%s: %s", shard.label, backend_url, outcome["error"])
            if on_shard is not None:
                on_shard(shard, part, outcome.get("error"))
    if not result.failed and not any(p.stopped for p in result.parts.values()):
        with open_backend() as backend, rules.watching(pins, on_batch, cutoff) as watched:
            result.final = counted(backend, cutoff, watched)
    result.report = merge_reports([result.parts[i] for i in sorted(result.parts)], result.final,
                                  backend=backend_url, cutoff=cutoff, started_at=started,
                                  duration_s=time.monotonic() - clock)
    return result
