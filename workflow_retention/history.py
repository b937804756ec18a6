"""Run history: every purge and orphan sweep, its outcome and counts, in a Redis state store.

Keys, per store (``base`` is the store's lock key, so one Redis serves many stores):

* ``<base>:history``: a list of record ids, newest first, capped at :data:`CAP`;
* ``<base>:history:records``: a hash, record id -> the record (JSON);
* ``<base>:totals``: a hash of cumulative counters (see :func:`workflow_retention.metrics.increments`);
* ``<base>:state``: a hash: the last success, the last run of each operation, the last clean instant;
* ``<base>:audit``: the last audit's snapshot (JSON).

Each transition is one Lua script, so it is atomic and guarded: :meth:`History.start`
creates a record only if its id is new (and trims the list and the records it
drops together); :meth:`History.finish` moves a record from ``started`` to
``finished`` once, and only that first move adds to the totals and the state.
A second finish of the same record (a retried write, a duplicate caller)
changes nothing and returns False.

A record: ``id``, ``operation`` (``purge`` or ``orphans``), ``source``
(``cli`` or ``celery``), ``store`` (masked URL), ``host``, ``pid``, ``state``
(``started`` or ``finished``), ``outcome`` (``succeeded``, ``failed``,
``lease-lost``), ``started_at``, ``finished_at``, ``duration_s``, ``error``
(secrets removed) and ``report`` (the report's summary).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from workflow_retention.exceptions import StorageError
from workflow_retention.metrics import (
    LEASE_LOST,
    ORPHANS,
    PURGE,
    SUCCEEDED,
    BatchTimer,
    Observations,
    Snapshot,
    increments,
    retention_lag,
)
from workflow_retention.report import OrphanReport, PurgeReport
from workflow_retention.timeutil import parse_timestamp, utcnow
from workflow_retention.urls import redact_url, remove_secrets

R = TypeVar("R", PurgeReport, OrphanReport)

#: Records kept per store.
CAP = 100
STARTED, FINISHED = "started", "finished"
#: Socket timeouts of the state store's client: a history write never holds a purge up for long.
TIMEOUT = timedelta(seconds=30)

_START = """
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('LPUSH', KEYS[1], ARGV[1])
local cap = tonumber(ARGV[3])
local dropped = redis.call('LRANGE', KEYS[1], cap, -1)
for _, id in ipairs(dropped) do redis.call('HDEL', KEYS[2], id) end
redis.call('LTRIM', KEYS[1], 0, cap - 1)
return 1
"""

_FINISH = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return -1 end
if cjson.decode(current)['state'] ~= 'started' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
for name, amount in pairs(cjson.decode(ARGV[3])) do redis.call('HINCRBYFLOAT', KEYS[2], name, amount) end
for name, value in pairs(cjson.decode(ARGV[4])) do redis.call('HSET', KEYS[3], name, value) end
return 1
"""


def summary(report: PurgeReport | OrphanReport | None) -> dict[str, Any] | None:
    """The part of a report a history record keeps."""
    if report is None:
        return None
    out: dict[str, Any] = {"dry_run": report.dry_run, "batches": report.batches, "duration_s": report.duration_s,
                           "counts": dict(sorted(report.counts.items())), "warnings_total": report.warnings_total}
    if isinstance(report, PurgeReport):
        out.update(cutoff=report.cutoff.isoformat() if report.cutoff else None, runs=report.runs,
                   held=report.held, changed=report.changed, skipped=report.skipped)
    else:
        out.update(total=report.total, bytes=report.bytes, skipped=report.skipped)
    if report.stopped:
        out["stopped"] = report.stopped
    return out


class History:
    """The run history of one store in a Redis state store (see the module docstring)."""

    def __init__(self, client: Any, base: str, *, store: str, source: str, secrets: list[str] | None = None,
                 cap: int = CAP) -> None:
        self.client, self.base, self.store, self.source, self.cap = client, base, redact_url(store), source, cap
        self.secrets = list(secrets or [])
        self._start = client.register_script(_START)
        self._finish = client.register_script(_FINISH)
        self._started: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"<History {self.base} store={self.store}>"

    @classmethod
    def open(cls, url: str, base: str, *, store: str, source: str, secrets: list[str] | None = None) -> History:
        """A history on the Redis server ``url`` (validated; nothing is sent yet)."""
        from workflow_retention.lock import redis_client

        return cls(redis_client(url, TIMEOUT * 6), base, store=store, source=source, secrets=secrets)

    @property
    def list_key(self) -> str:
        """The list of record ids, newest first."""
        return f"{self.base}:history"

    @property
    def records_key(self) -> str:
        """The hash of records by id."""
        return f"{self.base}:history:records"

    @property
    def totals_key(self) -> str:
        """The hash of cumulative counters."""
        return f"{self.base}:totals"

    @property
    def state_key(self) -> str:
        """The hash of the last success, the last runs and the last clean instant."""
        return f"{self.base}:state"

    @property
    def audit_key(self) -> str:
        """The last audit's snapshot."""
        return f"{self.base}:audit"

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    # -- transitions --------------------------------------------------------------------------

    def start(self, operation: str, *, now: datetime | None = None) -> str:
        """Record that ``operation`` started; return the record's id."""
        now = now or utcnow()
        record_id = f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{uuid.uuid4().hex[:8]}"
        record = {"id": record_id, "operation": operation, "source": self.source, "store": self.store,
                  "host": socket.gethostname(), "pid": os.getpid(), "state": STARTED, "outcome": None,
                  "started_at": now.isoformat(), "finished_at": None, "duration_s": None, "error": None,
                  "report": None}
        with self._errors("record the start of a run"):
            self._start(keys=[self.list_key, self.records_key], args=[record_id, json.dumps(record), self.cap])
        self._started[record_id] = record
        return record_id

    def finish(self, record_id: str, outcome: str, *, report: PurgeReport | OrphanReport | None = None,
               error: BaseException | str | None = None, observations: Observations | None = None,
               now: datetime | None = None) -> bool:
        """Move the record from ``started`` to ``finished`` with ``outcome``; True if this call did it.

        Only that first move adds the run to the totals and the state (last
        success, last run of the operation, last clean instant). False: the
        record was already finished (nothing changes) or is gone (trimmed).
        """
        now = now or utcnow()
        record = dict(self._started.get(record_id) or self._record(record_id) or {})
        if not record:
            return False
        started = datetime.fromisoformat(record["started_at"])
        message = None
        if error is not None:
            message = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
            message = remove_secrets(message, self.secrets)
        record.update(state=FINISHED, outcome=outcome, finished_at=now.isoformat(),
                      duration_s=round((now - started).total_seconds(), 3), error=message, report=summary(report))
        operation = record["operation"]
        state = {f"last_{operation}": json.dumps({k: record[k] for k in ("id", "outcome", "finished_at",
                                                                         "duration_s")})}
        if outcome == SUCCEEDED and operation == PURGE and isinstance(report, PurgeReport) and not report.dry_run:
            state["last_success_at"] = now.isoformat()
            state["last_success_id"] = record_id
            if report.cutoff is not None:  # the instant the cutoff was taken from: no expired run left as of it
                state["clean_at"] = started.isoformat()
        amounts = {k: repr(float(v)) for k, v in increments(operation, outcome, report, observations).items()}
        with self._errors("record the end of a run"):
            done = self._finish(keys=[self.records_key, self.totals_key, self.state_key],
                                args=[record_id, json.dumps(record), json.dumps(amounts), json.dumps(state)])
        self._started.pop(record_id, None)
        return int(done) == 1

    def outcome_of(self, exc: BaseException | None, report: PurgeReport | OrphanReport | None) -> str:
        """The outcome a run ended with: an error, a stop (its kind: ``lease-lost``, ``pin-added``...), or success."""
        from workflow_retention.exceptions import PurgeStopped

        if isinstance(exc, PurgeStopped):
            return exc.outcome
        if exc is None and report is not None and report.stopped:
            return report.stop_outcome or LEASE_LOST
        return "failed" if exc is not None else SUCCEEDED

    def record_audit(self, snapshot: dict[str, Any]) -> None:
        """Keep the last audit's snapshot (see :func:`workflow_retention.metrics.audit_snapshot`)."""
        with self._errors("record the audit"):
            self.client.set(self.audit_key, json.dumps(snapshot))

    def record_pressure(self, why: str | None, *, now: datetime | None = None) -> None:
        """Disk pressure (docs/policy.md): why the emergency rule applies now, or None when it does not."""
        with self._errors("record the disk pressure"):
            if why is None:
                self.client.hdel(self.state_key, "pressure")
            else:
                self.client.hset(self.state_key, "pressure",
                                 json.dumps({"why": why, "at": (now or utcnow()).isoformat()}))

    # -- reading --------------------------------------------------------------------------------------

    def runs(self, limit: int = CAP) -> list[dict[str, Any]]:
        """The last ``limit`` records, newest first."""
        with self._errors("read the run history"):
            ids = [i.decode() for i in self.client.lrange(self.list_key, 0, limit - 1)]
            raw = self.client.hmget(self.records_key, ids) if ids else []
        return [json.loads(r) for r in raw if r]

    def state(self) -> dict[str, Any]:
        """The state hash, JSON values decoded."""
        with self._errors("read the retention state"):
            raw = self.client.hgetall(self.state_key)
        out: dict[str, Any] = {}
        for key, value in raw.items():
            text = value.decode()
            out[key.decode()] = json.loads(text) if text.startswith("{") else text
        return out

    def totals(self) -> dict[str, float]:
        """The cumulative counters."""
        with self._errors("read the totals"):
            raw = self.client.hgetall(self.totals_key)
        return {k.decode(): float(v) for k, v in raw.items()}

    def last_audit(self) -> dict[str, Any] | None:
        """The last audit's snapshot, if any."""
        with self._errors("read the last audit"):
            raw = self.client.get(self.audit_key)
        return json.loads(raw) if raw else None

    def _record(self, record_id: str) -> dict[str, Any] | None:
        with self._errors("read a run record"):
            raw = self.client.hget(self.records_key, record_id)
        return json.loads(raw) if raw else None

    def _errors(self, what: str) -> Any:
        return _RedisErrors(f"cannot {what} in the state store ({self.base})", self.secrets)


class _RedisErrors:
    """Turns a redis-py error into :class:`StorageError` (chained, secrets removed from the message)."""

    def __init__(self, message: str, secrets: list[str]) -> None:
        self.message, self.secrets = message, secrets

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        from redis.exceptions import RedisError

        if isinstance(exc, RedisError):
            raise StorageError(f"{self.message}: {remove_secrets(f'{type(exc).__name__}: {exc}', self.secrets)}") \
                from exc


def record_run(history: History | None, operation: str, run: Callable[[BatchTimer], R], *,
               then: Callable[[Any], None] | None = None, log: logging.Logger | None = None) -> R:
    """Run ``run(on_batch)`` (a purge or an orphan sweep) with its record in ``history``.

    ``on_batch`` times the batches (the histogram) and then calls ``then``.
    The record is started before and finished after, whatever happened: an
    error is recorded as ``failed`` (and raised again), a stop on a lost lease
    as ``lease-lost``. A state store that fails is an ERROR line; the run's own
    outcome (its report or its error) is never hidden by it.
    """
    log = log or logging.getLogger("workflow_retention.history")
    timer = BatchTimer(then)
    record_id = None
    if history is not None:
        try:
            record_id = history.start(operation)
        except StorageError as exc:
            log.error("run history not recorded: %s", exc)
        except Exception as exc:  # noqa: BLE001 - a history write never stops the run
            log.error("run history not recorded: %s: %s", type(exc).__name__, remove_secrets(str(exc), history.secrets))
    try:
        report = run(timer)
    except BaseException as exc:
        _finish(history, record_id, history.outcome_of(exc, None) if history else "failed", log,
                error=exc, observations=timer.finish())
        raise
    _finish(history, record_id, history.outcome_of(None, report) if history else SUCCEEDED, log,
            report=report, observations=timer.finish())
    return report


def _finish(history: History | None, record_id: str | None, outcome: str, log: logging.Logger,
            **details: Any) -> None:
    if history is None or record_id is None:
        return
    try:
        if not history.finish(record_id, outcome, **details):
            log.warning("run history: record %s was already finished or is gone; left as it was", record_id)
    except StorageError as exc:
        log.error("run history not recorded (outcome %s): %s", outcome, exc)
    except Exception as exc:  # noqa: BLE001 - a history write never replaces the run's own outcome
        log.error("run history not recorded (outcome %s): %s: %s", outcome, type(exc).__name__,
                  remove_secrets(str(exc), history.secrets))


def fill_snapshot(snapshot: Snapshot, history: History, retention_days: int | None, now: datetime) -> None:
    """Fill a metrics snapshot from the history: counters, last success, last runs, last audit, lag.

    Raises :class:`StorageError` when the state store cannot be read.
    """
    state = history.state()
    snapshot.totals = history.totals()
    if state.get("last_success_at"):
        snapshot.last_success_at = parse_timestamp(state["last_success_at"]).timestamp()
    clean = parse_timestamp(state["clean_at"]) if state.get("clean_at") else None
    snapshot.clean_at = clean.timestamp() if clean else None
    snapshot.last_runs = {op: {"finished_at": parse_timestamp(run["finished_at"]).timestamp(),
                               "duration_s": run.get("duration_s"), "outcome": run.get("outcome")}
                          for op in (PURGE, ORPHANS)
                          if isinstance(run := state.get(f"last_{op}"), dict) and run.get("finished_at")}
    snapshot.audit = snapshot.audit or history.last_audit()
    snapshot.lag = retention_lag(now, retention_days, clean, snapshot.audit)
    snapshot.pressure = 1.0 if state.get("pressure") else 0.0
