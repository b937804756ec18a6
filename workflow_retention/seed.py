"""A realistic sample store in PyWorkflow's layout, for the quickstart, tests and benchmarks.

:func:`generate` yields backend-neutral :class:`SeedRun` records (the shapes
of pyworkflow-engine's ``to_dict()`` forms); each backend's ``_write_seed``
stores them exactly as pyworkflow-engine 0.4.0 would.
"""

from __future__ import annotations

import hashlib
import random
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from workflow_retention.exceptions import ConfigurationError
from workflow_retention.timeutil import require_aware, utcnow

TERMINAL_MIX = [("completed", 70), ("failed", 12), ("cancelled", 8), ("continued_as_new", 5), ("interrupted", 5)]
LIVE_MIX = [("running", 40), ("suspended", 40), ("pending", 20)]
WORKFLOWS = ["order_fulfilment", "invoice_sync", "user_onboarding", "report_export"]


@dataclass
class SeedRun:
    """One run and everything that belongs to it, in PyWorkflow's dict forms.

    ``events`` are in order, without ``sequence`` (each store numbers them its
    own way); ``checkpoints`` maps ``<run_id>:<step_id>`` to checkpoint data.
    """

    run: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    hooks: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancel_flag: bool = False

    @property
    def run_id(self) -> str:
        return self.run["run_id"]


def _pick(rng: random.Random, mix: list[tuple[str, int]]) -> str:
    return rng.choices([m[0] for m in mix], weights=[m[1] for m in mix])[0]


def _iso(value: datetime) -> str:
    return value.isoformat()


def _run_dict(run_id: str, name: str, status: str, created: datetime, updated: datetime,
              parent: SeedRun | None, idempotency_key: str | None) -> dict[str, Any]:
    finished = status in {"completed", "failed", "cancelled", "continued_as_new"}
    return {
        "run_id": run_id, "workflow_name": name, "status": status,
        "created_at": _iso(created), "updated_at": _iso(updated),
        "started_at": _iso(created + timedelta(seconds=1)),
        "completed_at": _iso(updated) if finished else None,
        "input_args": '["ord-1042"]', "input_kwargs": '{"priority": "normal"}',
        "result": '{"ok": true}' if status == "completed" else None,
        "error": "RuntimeError: upstream timeout" if status == "failed" else None,
        "idempotency_key": idempotency_key, "max_duration": "1h", "context": {"attempt": 1},
        "recovery_attempts": 0, "max_recovery_attempts": 3, "recover_on_worker_loss": True,
        "parent_run_id": parent.run_id if parent else None,
        "nesting_depth": parent.run["nesting_depth"] + 1 if parent else 0,
        "continued_from_run_id": None, "continued_to_run_id": None,
    }


def _build(rng: random.Random, index: int, now: datetime, max_age_days: float,
           parent: SeedRun | None, outlive_share: float, salt: str | None = None) -> SeedRun:
    salted = f"{salt}:" if salt else ""
    run_id = "run_" + hashlib.sha256(f"{salted}{rng.random()}:{index}".encode()).hexdigest()[:16]
    name = parent.run["workflow_name"] + "_child" if parent else rng.choice(WORKFLOWS)
    live = rng.random() < 0.15
    outlives = parent is not None and rng.random() < outlive_share
    status = _pick(rng, LIVE_MIX if live and (outlives or not parent) else TERMINAL_MIX)
    if parent:
        updated = datetime.fromisoformat(parent.run["updated_at"]) - timedelta(seconds=rng.randint(1, 60))
        if outlives:  # a child that outlives its parent: recent, sometimes still live
            updated = now - timedelta(hours=rng.uniform(0, 24))
    else:
        updated = now - timedelta(days=rng.uniform(0, max_age_days))
    created = updated - timedelta(seconds=rng.randint(5, 3600))
    key = (f"order-{salt}-{index}" if salt else f"order-{index}") if rng.random() < 0.3 else None
    seed = SeedRun(run=_run_dict(run_id, name, status, created, updated, parent, key))
    clock = created
    events = seed.events

    def event(kind: str, data: dict[str, Any]) -> None:
        nonlocal clock
        clock += timedelta(milliseconds=rng.randint(5, 900))
        events.append({"event_id": "evt_" + hashlib.md5(f"{run_id}{len(events)}".encode()).hexdigest()[:16],
                       "run_id": run_id, "type": kind, "timestamp": _iso(min(clock, updated)), "data": data})

    event("workflow.started", {"workflow_name": name, "args": ["ord-1042"], "kwargs": {"priority": "normal"}})
    for n in range(rng.randint(1, 4)):
        step_id = f"step_charge_{hashlib.md5(f'{run_id}{n}'.encode()).hexdigest()[:12]}"
        event("step.started", {"step_id": step_id, "step_name": "charge", "args": [n], "kwargs": {}, "attempt": 1})
        event("step.completed", {"step_id": step_id, "result": {"amount": 10 * n}, "step_name": "charge"})
        seed.checkpoints[f"{run_id}:{step_id}"] = {"cursor": n, "items_done": 10 * n}
        if rng.random() < 0.25:
            seed.steps.append({
                "step_id": step_id, "run_id": run_id, "step_name": "charge", "status": "completed",
                "attempt": 1, "max_retries": 3, "created_at": _iso(created), "updated_at": _iso(updated),
                "started_at": _iso(created), "completed_at": _iso(updated), "input_args": "[]",
                "input_kwargs": "{}", "result": '{"amount": 10}', "error": None,
                "retry_after": None, "retry_delay": None})
    for n in range(rng.choice([0, 1, 1, 2])):
        hook_id = f"hook_approval_{salt}_{n + 1}" if salt else f"hook_approval_{n + 1}"
        token = f"{run_id}:{hook_id}"
        event("hook.created", {"hook_id": hook_id, "token": token, "url": "", "name": "approval"})
        seed.hooks.append({
            "hook_id": hook_id, "run_id": run_id, "url": "", "token": token,
            "status": "received" if status != "suspended" else "pending", "created_at": _iso(created),
            "received_at": _iso(updated) if status != "suspended" else None, "expires_at": None,
            "payload": '{"approved": true}' if status != "suspended" else None, "name": "approval",
            "payload_schema": None, "metadata": {}})
    if status == "cancelled" or rng.random() < 0.05:
        seed.cancel_flag = True
        event("cancellation.requested", {"reason": "operator request"})
    terminal_event = {"completed": "workflow.completed", "failed": "workflow.failed",
                      "cancelled": "workflow.cancelled", "interrupted": "workflow.interrupted",
                      "continued_as_new": "workflow.continued_as_new"}.get(status)
    if terminal_event:
        event(terminal_event, {"result": {"ok": status == "completed"}})
    return seed


def generate(n: int, *, now: datetime | None = None, seed: int = 42,
             max_age_days: float = 120.0, child_share: float = 0.1,
             outlive_share: float = 0.2, salt: str | None = None) -> Iterator[SeedRun]:
    """Yield ``n`` runs with ages spread uniformly over ``max_age_days``.

    About 85 % are terminal; about ``child_share`` are child runs of an
    earlier run, ``outlive_share`` of which outlive their parent (recent, and
    sometimes still live), so an expired parent is held. The other children
    are terminal and finished before their parent.
    The output depends only on ``n``, ``now``, ``seed`` and ``salt``.

    ``salt`` (see :func:`fresh_salt`) goes into every run id and idempotency key: runs generated with a
    salt never reuse the ids of runs generated without one or with another salt (``seed --append``).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    now = require_aware(now, "now") if now is not None else utcnow()
    rng = random.Random(seed)
    last_root: SeedRun | None = None
    for index in range(n):
        parent = last_root if last_root is not None and rng.random() < child_share else None
        run = _build(rng, index, now, max_age_days, parent, outlive_share, salt)
        if parent is None:
            last_root = run
        yield run


def fresh_salt() -> str:
    """A salt for :func:`generate` that no earlier seeding used: 64 random bits (``secrets``).

    Run ids stay in pyworkflow's form (``run_`` and 16 hex digits, a hash of the salt, the random seed and
    the index), so ids of two seedings with different salts coincide only by a 64-bit hash collision
    (about 1 in 10^8 for 100,000 runs appended to a store of 10 million); file and memory stores also check
    every appended run id before writing it, and SQL's primary key refuses a duplicate.
    """
    return secrets.token_hex(8)


#: ``count_runs`` counts up to this many runs when a seed checks that the store is empty.
SEED_COUNT_LIMIT = 100_000


class StoreNotEmpty(ConfigurationError):
    """``seed`` into a store that already holds runs, without ``--append`` (exit 2)."""

    def __init__(self, store: str, runs: int, exact: bool) -> None:
        self.store, self.runs, self.exact = store, runs, exact
        held = f"{runs:,} run{'' if runs == 1 else 's'}" if exact else f"at least {runs:,} runs"
        super().__init__(f"{store} already holds {held}: seeding it would mix sample runs into real data. Pass "
                         "--append to add sample runs with fresh ids beside them, or seed an empty store")
