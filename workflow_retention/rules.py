"""Which rule a purge applies now, and the state that decides it (issue 21; docs/policy.md).

* :func:`cutoff_for`: the plain ``PYWORKFLOW_DATA_RETENTION_DAYS`` cutoff, exactly as before, or a policy's
  :class:`~workflow_retention.planning.Expiry` carrying the pins. The command line and the Celery task call
  it; the backends see a cutoff either way.
* :class:`StateStore`: pins and the policy guard, in the Redis state store, keyed per store like its lock
  (``<lock key>:pins``, ``<lock key>:policy``), so every purge of one store, CLI, Celery or shard, reads
  the same ones and they survive restarts.
* :func:`guard`: a policy that deletes sooner than the one the last successful purge applied is held back
  (the last applied one is used instead) until an operator accepts it (``workflow-retention policy accept``).
* :func:`capped`: ``PYWORKFLOW_RETENTION_MAX_RUNS``, checked at every batch boundary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from workflow_retention import values
from workflow_retention.base import BatchInfo, OnBatch, StorageBackend
from workflow_retention.exceptions import ConfigurationError, MaxRunsReached, PinAdded, StorageError
from workflow_retention.history import _RedisErrors
from workflow_retention.planning import Expiry, is_safe_run_id
from workflow_retention.policy import Policy, parse_policy
from workflow_retention.timeutil import utcnow

log = logging.getLogger("workflow_retention")

RUN, WORKFLOW = "run", "workflow"
#: The longest pin reason kept.
MAX_REASON = 500


def fingerprint(policy: Policy) -> str:
    """A stable digest of what ``policy`` says (its dict form), to remember which one an operator accepted."""
    return hashlib.sha256(json.dumps(policy.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Pins:
    """What the pins of a store keep: run ids, and workflow name patterns (fnmatch)."""

    runs: frozenset[str] = frozenset()
    workflows: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.runs or self.workflows)


class StateStore:
    """Pins and the policy guard of one store, in Redis (``base`` is the store's lock key)."""

    def __init__(self, client: Any, base: str, secrets: list[str] | None = None) -> None:
        self.client, self.base, self.secrets = client, base, list(secrets or [])

    @classmethod
    def open(cls, url: str, base: str, secrets: list[str] | None = None) -> StateStore:
        from workflow_retention.lock import redis_client

        return cls(redis_client(url, timedelta(seconds=30)), base, secrets)

    def close(self) -> None:
        self.client.close()

    @property
    def pins_key(self) -> str:
        return f"{self.base}:pins"

    @property
    def pins_version_key(self) -> str:
        """A counter every pin add or rm raises: a purge watching the pins reads it, not the whole hash, per batch."""
        return f"{self.base}:pins:version"

    def pins_version(self) -> int:
        with self._errors("read the pins"):
            raw = self.client.get(self.pins_version_key)
        return int(_text(raw)) if raw else 0

    @property
    def policy_key(self) -> str:
        return f"{self.base}:policy"

    def _errors(self, what: str) -> _RedisErrors:
        return _RedisErrors(f"cannot {what} in the state store ({self.base})", self.secrets)

    # -- pins -----------------------------------------------------------------------------

    def pin(self, kind: str, targets: Iterable[str], reason: str, now: datetime | None = None) -> int:
        """Pin run ids (``kind`` RUN) or workflow name patterns (WORKFLOW); returns how many were new."""
        targets = _targets(kind, targets)
        reason = "".join(" " if not c.isprintable() else c for c in reason).strip()
        if not reason:
            raise ConfigurationError("--reason is required: say why (an investigation, a legal hold, a ticket)")
        record = json.dumps({"reason": reason[:MAX_REASON], "pinned_at": (now or utcnow()).isoformat()})
        with self._errors("write the pins"):
            pipe = self.client.pipeline()
            for target in targets:
                pipe.hsetnx(self.pins_key, f"{kind}:{target}", record)
            pipe.incr(self.pins_version_key)
            return sum(bool(x) for x in pipe.execute()[:-1])

    def unpin(self, kind: str, targets: Iterable[str]) -> int:
        """Remove pins; returns how many existed."""
        targets = _targets(kind, targets)
        with self._errors("remove the pins"):
            removed = int(self.client.hdel(self.pins_key, *(f"{kind}:{t}" for t in targets)))
            self.client.incr(self.pins_version_key)
            return removed

    def list_pins(self) -> list[dict[str, str]]:
        """Every pin: ``{"kind", "target", "reason", "pinned_at"}``, sorted by kind and target."""
        with self._errors("read the pins"):
            raw = self.client.hgetall(self.pins_key)
        out = []
        for field, value in raw.items():
            kind, _, target = _text(field).partition(":")
            try:
                record = json.loads(_text(value))
            except ValueError:
                record = {}
            out.append({"kind": kind, "target": target, "reason": str(record.get("reason", "")),
                        "pinned_at": str(record.get("pinned_at", ""))})
        return sorted(out, key=lambda p: (p["kind"], p["target"]))

    def pins(self) -> Pins:
        found = self.list_pins()
        return Pins(frozenset(p["target"] for p in found if p["kind"] == RUN),
                    tuple(p["target"] for p in found if p["kind"] == WORKFLOW))

    # -- the policy guard -----------------------------------------------------------------

    def applied(self) -> Policy | None:
        """The policy the last successful purge applied (None: none recorded)."""
        with self._errors("read the applied policy"):
            raw = self.client.hget(self.policy_key, "applied")
        if not raw:
            return None
        try:
            return parse_policy({"retention": json.loads(_text(raw))}, source="the last applied policy")
        except (ValueError, ConfigurationError) as exc:  # the guard cannot compare: fail, never guess
            raise StorageError(f"the last applied policy in the state store ({self.policy_key}) cannot be read, so a "
                               "shorter policy cannot be told apart: check it, or run `workflow-retention policy "
                               "accept` to apply the configured one") from exc

    def record_applied(self, policy: Policy) -> None:
        with self._errors("record the applied policy"):
            self.client.hset(self.policy_key, "applied", json.dumps(policy.to_dict(), sort_keys=True))

    def record_held(self, held: Iterable[str]) -> None:
        """What the guard holds back now (``status`` shows it); empty: nothing."""
        lines = list(held)
        with self._errors("record the held-back policy"):
            if lines:
                self.client.hset(self.policy_key, "held", json.dumps(lines))
            else:
                self.client.hdel(self.policy_key, "held")

    def held(self) -> list[str]:
        """What the Celery task last held back (see :func:`guard`)."""
        with self._errors("read the held-back policy"):
            raw = self.client.hget(self.policy_key, "held")
        try:
            found = json.loads(_text(raw)) if raw else []
        except ValueError:
            return ["(unreadable)"]
        return [str(x) for x in found] if isinstance(found, list) else ["(unreadable)"]

    def accepted(self) -> str | None:
        with self._errors("read the accepted policy"):
            raw = self.client.hget(self.policy_key, "accepted")
        return _text(raw) if raw else None

    def accept(self, policy: Policy) -> str:
        digest = fingerprint(policy)
        with self._errors("record the accepted policy"):
            self.client.hset(self.policy_key, "accepted", digest)
        return digest


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _targets(kind: str, targets: Iterable[str]) -> list[str]:
    found = [t.strip() for t in targets]
    if not found or any(not t for t in found):
        raise ConfigurationError(f"give at least one {'run id' if kind == RUN else 'workflow name or pattern'}")
    if kind == RUN:
        bad = [t for t in found if not is_safe_run_id(t)]
        if bad:
            raise ConfigurationError(f"{bad[0]!r} is not a run id")
    elif kind != WORKFLOW:
        raise ConfigurationError(f"a pin is on a {RUN} or a {WORKFLOW}; got {kind!r}")
    elif bad := [t for t in found if not t.isprintable()]:
        raise ConfigurationError(f"{bad[0]!r} is not a workflow name or pattern: it holds a control character")
    return found


@dataclass(frozen=True)
class Guarded:
    """The policy a purge applies now; ``held`` says what a newer, shorter policy would delete sooner."""

    policy: Policy
    held: tuple[str, ...] = ()


def guard(configured: Policy, state: StateStore | None) -> Guarded:
    """``configured``, unless it deletes sooner than the policy the last successful purge applied and an
    operator has not accepted it: then that earlier policy, and why (``held``)."""
    if state is None or state.accepted() == fingerprint(configured):
        return Guarded(configured)
    previous = state.applied()
    if previous is None:
        return Guarded(configured)
    shrinks = configured.shrinks(previous)
    return Guarded(previous, tuple(shrinks)) if shrinks else Guarded(configured)


def cutoff_for(*, days: int | None, policy: Policy | None, pins: Pins = Pins(),
               now: datetime | None = None) -> datetime:
    """The purge's cutoff: ``now - days`` exactly as before when there is no policy and no pin; otherwise the
    policy's (or the days rule's) :class:`Expiry` with the pins."""
    now = now or utcnow()
    if policy is None:
        if not days:
            raise ConfigurationError("no retention: set PYWORKFLOW_DATA_RETENTION_DAYS or PYWORKFLOW_RETENTION_POLICY")
        if not pins:
            return now - timedelta(days=days)
        policy = Policy.days(days)
    return Expiry(policy, now, pinned_runs=pins.runs, pinned_workflows=pins.workflows)


def by_rule(cutoff: datetime, on_batch: OnBatch | None) -> OnBatch | None:
    """``on_batch`` that also counts each batch's runs by the policy rule that expired them (a policy's cutoff
    only); :func:`rule_counts` reads the counts after the purge."""
    return cutoff.counting(on_batch) if isinstance(cutoff, Expiry) else on_batch


def rule_counts(cutoff: datetime) -> dict[str, int]:
    """Runs per policy rule counted by :func:`by_rule` (empty for a plain cutoff)."""
    return dict(sorted(cutoff.rule_counts.items())) if isinstance(cutoff, Expiry) else {}


def pressure_of(policy: Policy, backend: StorageBackend) -> str | None:
    """Why ``backend``'s store is under disk pressure now by ``policy``'s ``[retention.pressure]`` (None: it is
    not, the policy has no such rule, or the store cannot tell; a figure that cannot be read never triggers it)."""
    p = policy.pressure
    if p is None:
        return None
    if p.free_below is not None:
        path = backend.filesystem_path()
        if path is not None:
            try:
                usage = shutil.disk_usage(path)
            except OSError as exc:
                log.warning("disk pressure: the free space of %s cannot be read: %s", path, exc.strerror or exc)
            else:
                share = usage.free / usage.total if usage.total else 1.0
                if share < p.free_below:
                    return (f"{share:.1%} of the filesystem holding {path} is free, below free_below "
                            f"{p.free_below:.0%}")
    if p.size_above is not None:
        space = backend.measured_space()
        if space.known and space.bytes is not None and space.bytes > p.size_above:
            return f"the store occupies {space.bytes:,} bytes, above size_above {p.size_above:,}"
    return None


def pressured(cutoff: datetime, backend: StorageBackend) -> tuple[datetime, str | None]:
    """``cutoff``, or under disk pressure the same policy's emergency rule (:meth:`Policy.emergency`), announced
    at WARNING; and why (None: no pressure)."""
    if not isinstance(cutoff, Expiry) or cutoff.policy.pressure is None:
        return cutoff, None
    why = pressure_of(cutoff.policy, backend)
    if why is None:
        return cutoff, None
    log.warning("disk pressure on %s: %s; the emergency retention %s applies (never below min %s)", backend.url,
                why, values.human(cutoff.policy.pressure.default), values.human(cutoff.policy.minimum))
    return Expiry(cutoff.policy.emergency(), cutoff.instant, pinned_runs=cutoff.pinned_runs,
                  pinned_workflows=cutoff.pinned_workflows, applied=cutoff.applied), why


def pins_of(cutoff: datetime) -> Pins:
    """The pins a purge's cutoff carries (none for a plain cutoff)."""
    if isinstance(cutoff, Expiry):
        return Pins(frozenset(cutoff.pinned_runs), tuple(cutoff.pinned_workflows))
    return Pins()


def pins_watched(on_batch: OnBatch | None, state: StateStore | None, pins: Pins) -> OnBatch | None:
    """``on_batch`` that first reads the store's pins again and stops the purge (:class:`PinAdded`) at the batch
    boundary when one was added since the purge read ``pins`` (a legal hold placed while a long purge runs): the
    batch is not deleted, and the next purge honours the pin. A state store that cannot be read fails the purge
    (:class:`StorageError`), as at its start. No ``state``: ``on_batch`` unchanged."""
    if state is None:
        return on_batch
    seen: list[int] = []  # the pins' version when last read in full (none yet: the first boundary reads them)

    def check(info: BatchInfo) -> None:
        version = state.pins_version()
        if not (seen and seen[0] == version):
            added = pins_added(state, pins)
            seen[:] = [version]
            if added:
                raise PinAdded(f"{len(added)} pin(s) added while the purge ran "
                                   f"({', '.join(map(repr, added[:5]))}): stopped at a batch boundary before "
                                   "deleting more; the next purge honours them")
        if on_batch is not None:
            on_batch(info)
    return check


@contextmanager
def watching(source: Callable[[], StateStore] | None, on_batch: OnBatch | None,
             cutoff: datetime) -> Iterator[OnBatch | None]:
    """:func:`pins_watched` for a part of a sharded purge run elsewhere (a thread, a process, a Celery shard task):
    ``source()`` opens the state store there (it must pickle for a process: ``partial(StateStore.open, ...)``),
    the pins ``cutoff`` carries are what the plan read, and the store is closed when the part ends. ``source``
    None (no state store configured): ``on_batch`` unchanged."""
    state = source() if source is not None else None
    try:
        yield pins_watched(on_batch, state, pins_of(cutoff))
    finally:
        if state is not None:
            state.close()


def pins_added(state: StateStore, pins: Pins) -> list[str]:
    """The run ids and workflow patterns pinned in ``state`` now that ``pins`` (what a purge read) lacks."""
    now = state.pins()
    return sorted(now.runs - pins.runs) + sorted(set(now.workflows) - set(pins.workflows))


def capped(on_batch: OnBatch | None, max_runs: int | None) -> OnBatch | None:
    """``on_batch`` that first stops the purge (:class:`MaxRunsReached`, a loud error) at the batch boundary where
    the runs it deleted plus the batch would pass ``max_runs``. Every batch counts as runs (a sweep's batch
    too): the cap errs on the side of stopping early."""
    if max_runs is None:
        return on_batch
    # The runs of the batches already let through, not ``report.runs``: a backend may approve several batches
    # before any of them is deleted (SQL's parallel batches approve a wave, then run it), so the report lags.
    approved = [0]

    def check(info: BatchInfo) -> None:
        done = max(approved[0], getattr(info.report, "runs", 0))
        if done + len(info.run_ids) > max_runs:
            raise MaxRunsReached(f"this purge would delete more than PYWORKFLOW_RETENTION_MAX_RUNS={max_runs:,} "
                                 f"runs ({done:,} approved, {len(info.run_ids):,} in the next batch): stopped at a "
                                 "batch boundary. Check the retention policy; raise the cap if this is intended")
        approved[0] = done + len(info.run_ids)
        if on_batch is not None:
            on_batch(info)
    return check
