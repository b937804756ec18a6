"""What an operator asks first: did retention run, did it succeed, when is the next run, who holds the lease.

:func:`collect` gathers it from the run history (:mod:`workflow_retention.history`),
the schedule settings and the singleton lock; ``workflow-retention status``
prints it and exits non-zero when the last success is too old (a health check).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from workflow_retention import config, values
from workflow_retention.exceptions import RetentionError
from workflow_retention.history import History
from workflow_retention.metrics import Lag, retention_lag
from workflow_retention.rules import StateStore
from workflow_retention.timeutil import parse_timestamp

#: Runs listed by ``status``.
SHOWN_RUNS = 10


def next_run(schedule: Any, now: datetime, last_started: datetime | None = None) -> datetime | None:
    """When the beat entry fires next after ``now``: a Celery schedule (crontab) or an interval.

    An interval counts from the last run's start when the history knows it
    (beat's own record of it lives in its schedule file); without it the next
    run is unknown (None).
    """
    if isinstance(schedule, (int, float)):
        schedule = timedelta(seconds=schedule)
    if isinstance(schedule, timedelta):
        if last_started is None:
            return None
        due = last_started + schedule
        while due < now:  # missed slots: beat runs the next one when it is due
            due += schedule
        return due
    if hasattr(schedule, "remaining_delta"):  # a crontab: the first slot after ``now``, in its own timezone
        last, delta, _ = schedule.remaining_delta(now)
        return (last + delta).astimezone(now.tzinfo)
    remaining = getattr(schedule, "remaining_estimate", None)  # another Celery schedule: from the real clock
    return now + remaining(now) if remaining is not None else None


def schedule_text(spec: config.ScheduleSettings) -> str:
    """The schedule settings in words."""
    if spec.daily_at is not None:
        return (f"daily at {spec.daily_at[0]:02d}:{spec.daily_at[1]:02d} plus a jitter of up to "
                f"{values.human(spec.jitter)} (fixed per lock key)")
    assert spec.every is not None
    return f"every {values.human(spec.every)}"


@dataclass
class Status:
    """The status of one store's retention; ``healthy`` decides the exit code."""

    store: str
    state_store: str | None
    now: datetime
    max_age: timedelta
    runs: list[dict[str, Any]] = field(default_factory=list)
    last_success_at: datetime | None = None
    next_run_at: datetime | None = None
    schedule: str = ""
    lock_key: str = ""
    holder: str | None = None
    holder_error: str | None = None
    lag: Lag | None = None
    problems: list[str] = field(default_factory=list)
    #: What the Celery task holds back of a shortened retention policy until it is accepted (docs/policy.md).
    policy_held: list[str] = field(default_factory=list)
    #: Disk pressure: why the policy's emergency rule applied at the last purge (None: it did not).
    pressure: str | None = None

    @property
    def healthy(self) -> bool:
        """A success within ``max_age`` (none at all, or an older one, is unhealthy)."""
        return self.last_success_at is not None and self.now - self.last_success_at <= self.max_age

    def reason(self) -> str:
        """Why the status is unhealthy (empty when healthy)."""
        if self.healthy:
            return ""
        if self.state_store is None:
            return (f"no run history: no state store is configured (set {config.STATE_URL} or "
                    f"{config.LOCK_URL})")
        if self.last_success_at is None:
            return f"the run history could not be read: {self.problems[0]}" if self.problems else \
                "no successful purge on record"
        age = values.human(self.now - self.last_success_at)
        return f"the last successful purge finished {age} ago, more than --max-age {values.human(self.max_age)}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"store": self.store, "state_store": self.state_store, "now": self.now.isoformat(),
                "healthy": self.healthy, "reason": self.reason() or None, "max_age_s": self.max_age.total_seconds(),
                "last_success_at": self.last_success_at.isoformat() if self.last_success_at else None,
                "next_run_at": self.next_run_at.isoformat() if self.next_run_at else None,
                "schedule": self.schedule, "lock": {"key": self.lock_key, "holder": self.holder,
                                                    "error": self.holder_error},
                "lag": self.lag.to_dict() if self.lag else None, "runs": self.runs, "problems": self.problems,
                "policy_held_back": self.policy_held, "disk_pressure": self.pressure}


def collect(*, store: str, history: History | None, state_store: str | None, lease: Any | None,
            lock_key: str, retention_days: int | None, max_age: timedelta, now: datetime,
            spec: config.ScheduleSettings, schedule: Any) -> Status:
    """Read the history, the lease holder and the schedule into a :class:`Status`.

    Errors of the state store or the lock's Redis are recorded in
    ``problems`` (and ``holder_error``), never raised: a health check says what
    it could not read.
    """
    status = Status(store=store, state_store=state_store, now=now, max_age=max_age, lock_key=lock_key,
                    schedule=schedule_text(spec))
    last_started = None
    if history is not None:
        try:
            status.runs = history.runs(SHOWN_RUNS)
            state = history.state()
            if state.get("last_success_at"):
                status.last_success_at = parse_timestamp(state["last_success_at"])
            clean = parse_timestamp(state["clean_at"]) if state.get("clean_at") else None
            status.lag = retention_lag(now, retention_days, clean, history.last_audit())
            purges = [r for r in status.runs if r.get("source") == "celery"]
            last_started = parse_timestamp(purges[0]["started_at"]) if purges else None
            status.policy_held = StateStore(history.client, history.base, history.secrets).held()
            pressure = state.get("pressure")
            status.pressure = str(pressure.get("why")) if isinstance(pressure, dict) else None
        except RetentionError as exc:
            status.problems.append(str(exc))
    status.next_run_at = next_run(schedule, now, last_started)
    if lease is not None:
        try:
            status.holder = lease.holder()
        except RetentionError as exc:
            status.holder_error = str(exc)
    return status
