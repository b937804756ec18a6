"""Celery integration: a daily, singleton purge task for an existing Celery app.

``install(app)`` registers the task under the stable name
``workflow_retention.run_retention`` and adds the beat entry
``workflow-retention``. Design choices:

* **One purge at a time.** The task takes a Redis lease
  (:mod:`workflow_retention.lock`) before it opens the store, renews it in the
  background, checks it at every batch boundary (``on_batch``), and releases
  it in ``finally``. When the lock is held it returns ``{"skipped": "locked"}``.
* **Once per scheduled slot.** Several beat processes each send the day's
  message. The entry sets ``expires``, and the task learns from it when beat
  sent the message; after a successful purge it records the completion time in
  Redis (``<lock key>:done``), and a message sent before that completion
  returns ``{"skipped": "already-done"}`` instead of purging again.
  Invocations by hand (``.delay()``) are never deduplicated.
* **Jitter without disagreement.** The daily time gets an offset derived from
  the lock key, not a random one: every beat of one deployment fires at the
  same minute (so the lock and the dedup see them together), while deployments
  sharing infrastructure spread out.
* **A lost lease fails the task.** The purge stops at the next batch boundary,
  the summary is logged at ERROR and the task raises :class:`LeaseLostError`,
  so the run is FAILURE in every monitor (result backend, events, Flower,
  ``task_failure`` handlers). A result flag would be invisible on apps without
  a result backend, such as pyworkflow-engine's default app.
* **The task opens and closes the store itself**, so it works as the first task
  of a fresh worker on every backend.
* **Every purge and orphan sweep is recorded** in the run history
  (:mod:`workflow_retention.history`; the lock's Redis unless
  ``PYWORKFLOW_RETENTION_STATE_URL`` is set), and, with
  ``PYWORKFLOW_RETENTION_PUSHGATEWAY_URL`` set, the metrics are pushed to a
  Pushgateway after the run. Neither can change the task's outcome: a failure
  of either is an ERROR line, and the task's result or error stays the purge's.
* **A start-up line.** When a worker with the task starts (``worker_ready``),
  a background thread audits the store for at most
  ``PYWORKFLOW_RETENTION_STARTUP_AUDIT`` (30s) and logs one line: the store,
  runs by status, runs a purge would delete now, the lag and the next run.
  It never delays or fails the worker's start-up: a failure is a WARNING line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import traceback
from datetime import datetime, timedelta
from typing import Any

from workflow_retention import config, metrics
from workflow_retention.backends import by_url
from workflow_retention.exceptions import (
    ConfigurationError,
    LeaseLostError,
    PurgeStopped,
    RetentionError,
    StorageError,
)
from workflow_retention.history import History, fill_snapshot, record_run
from workflow_retention.lock import Lease, open_lease
from workflow_retention.report import OrphanReport, PurgeReport
from workflow_retention.timeutil import parse_timestamp, utcnow
from workflow_retention.urls import redact_url, remove_secrets

log = logging.getLogger("workflow_retention.celery")

TASK_NAME = "workflow_retention.run_retention"
#: The beat entry's name, whatever its schedule (daily, interval or a crontab of the user's).
ENTRY_NAME = "workflow-retention"
#: pyworkflow-engine's own hourly retention entry (see README: run only one of the two).
PYWORKFLOW_ENTRY = "pyworkflow-data-retention"
MAX_EXPIRES = timedelta(hours=12)
#: Warnings (records left alone, and why) quoted in the summary line; the report holds up to 50.
SUMMARY_WARNINGS = 5
#: How long the completion marker ``<lock key>:done`` is kept (longer than any ``expires``).
DONE_TTL = timedelta(days=2)


# -- the beat entry ---------------------------------------------------------------


def install(
    app: Any,
    *,
    schedule: Any = None,
    jitter: timedelta | None = None,
    expires: float | timedelta | None = None,
    queue: str | None = None,
    entry_name: str = ENTRY_NAME,
    replace_pyworkflow_entry: bool = True,
) -> Any:
    """Register the retention task on ``app`` and add its beat entry; return the task.

    ``schedule`` defaults to ``PYWORKFLOW_RETENTION_SCHEDULE`` (daily at 03:00
    plus a jitter of up to ``PYWORKFLOW_RETENTION_SCHEDULE_JITTER``); it may
    also be any Celery schedule (``crontab(...)``, a ``timedelta``), used as
    is. ``expires`` defaults to half the period, at most 12 hours. ``queue``
    (default ``PYWORKFLOW_RETENTION_QUEUE``, else the app's default queue)
    routes the beat entry's messages. With
    ``replace_pyworkflow_entry`` the app's ``pyworkflow-data-retention`` entry,
    if any, is removed. Call it after the app's configuration is loaded.
    """
    spec = config.load_schedule()
    queue = queue or spec.queue
    sched = schedule if schedule is not None else daily_schedule(spec, jitter)
    window = _seconds(expires) if expires is not None else default_expires(sched)
    options = {"queue": queue} if queue else {}
    task = app.task(bind=True, name=TASK_NAME)(_task_body)
    app.add_periodic_task(sched, app.signature(TASK_NAME, kwargs={"beat_expires_s": window}),
                          name=entry_name, expires=window, **options)
    if replace_pyworkflow_entry:
        _drop_pyworkflow_entry(app)
    _log_at_startup(app, entry_name)
    return task


def daily_schedule(spec: config.ScheduleSettings, jitter: timedelta | None = None) -> Any:
    """The Celery schedule ``spec`` describes, with its lock-key-derived jitter."""
    from celery.schedules import crontab

    if spec.every is not None:
        return spec.every
    assert spec.daily_at is not None
    minutes = int((spec.jitter if jitter is None else jitter).total_seconds() // 60)
    offset = int(hashlib.sha256(spec.lock_key.encode()).hexdigest(), 16) % minutes if minutes > 0 else 0
    hour, minute = divmod((spec.daily_at[0] * 60 + spec.daily_at[1] + offset) % (24 * 60), 60)
    return crontab(minute=minute, hour=hour)


def default_expires(sched: Any) -> float:
    """Half an interval schedule's period, else (daily, crontab) 12 hours: stale purges never pile up.

    A crontab's period is not computed (that would load the app's configuration
    too early); pass ``expires`` for crontabs firing more often than daily.
    Messages that still queue up are harmless: each is skipped as
    ``already-done`` once a purge has completed after it was sent.
    """
    if isinstance(sched, (int, float)):
        period = timedelta(seconds=sched)
    elif isinstance(sched, timedelta):
        period = sched
    else:
        run_every = getattr(sched, "run_every", None)
        period = run_every if isinstance(run_every, timedelta) else 2 * MAX_EXPIRES
    return max(1.0, min(period / 2, MAX_EXPIRES).total_seconds())


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _drop_pyworkflow_entry(app: Any) -> None:
    def drop(sender: Any = None, **_: Any) -> None:
        if sender.conf.beat_schedule.pop(PYWORKFLOW_ENTRY, None) is not None:
            log.info("removed pyworkflow-engine's own beat entry %r: workflow-retention's task replaces it",
                     PYWORKFLOW_ENTRY)

    if app.configured:
        drop(app)
    else:
        app.on_after_configure.connect(drop, weak=False)


# -- the task -----------------------------------------------------------------------


def _task_body(self: Any, beat_expires_s: float | None = None) -> dict[str, Any]:
    sent_at = None
    if beat_expires_s and self.request.expires:
        sent_at = parse_timestamp(self.request.expires) - timedelta(seconds=beat_expires_s)
    return run_retention(broker_url=self.app.conf.broker_url, sent_at=sent_at)


def run_retention(*, broker_url: str | None, sent_at: datetime | None = None) -> dict[str, Any]:
    """Read the settings, take the lock, purge (and sweep orphans), return the report as a dict.

    ``broker_url`` is the lock's Redis unless ``PYWORKFLOW_RETENTION_LOCK_URL``
    is set. ``sent_at``: when beat sent this run; the run is skipped if a purge
    of the same store completed after that. An error whose text, or whose chained
    errors' text, holds a secret of the configuration is raised again with the
    secret removed and without the chain: Celery stores a failed task's message
    and traceback in its result backend and logs them.
    """
    try:
        return _run_retention(broker_url, sent_at)
    except Exception as exc:
        secrets = config.secrets(urls=(broker_url,))
        full = "".join(traceback.format_exception(exc))
        if remove_secrets(full, secrets) == full:
            raise
        clean = remove_secrets(str(exc), secrets)
        cls = type(exc) if isinstance(exc, (ConfigurationError, StorageError, LeaseLostError)) else StorageError
        raise cls(f"{type(exc).__name__}: {clean}" if cls is not type(exc) else clean) from None


def _run_retention(broker_url: str | None, sent_at: datetime | None) -> dict[str, Any]:
    settings = config.load_settings()
    if not settings.enabled:
        log.info("workflow-retention skipped status=disabled reason=%s=false", config.ENABLED)
        return {"skipped": "disabled"}
    if settings.retention_days is None:
        log.debug("workflow-retention skipped status=unconfigured reason=%s unset", config.RETENTION_DAYS)
        return {"skipped": "retention-days-unset"}
    if timedelta(days=settings.retention_days) < settings.min_age:
        raise ConfigurationError(f"{config.RETENTION_DAYS}={settings.retention_days} is shorter than "
                                 f"{config.MIN_AGE} ({settings.min_age}): refusing a purge of runs that "
                                 "finished so recently")
    storage = by_url(settings.require_storage_url(), batch_size=settings.batch_size)
    lease = open_lease(settings.lock_url_for(broker_url), settings.lock_key, settings.lock_ttl)
    history = _open_history(settings, broker_url, storage.url, lease.key)
    try:
        if not lease.acquire():
            holder = lease.holder()
            log.info("workflow-retention skipped status=locked lock=%s holder=%s", lease.key, holder)
            return {"skipped": "locked", "lock_key": lease.key, "holder": holder}
        return _holding(lease, settings, storage, sent_at, history)
    finally:
        lease.client.close()
        if history is not None:
            history.close()


def _open_history(settings: config.Settings, broker_url: str | None, store: str, key: str) -> History | None:
    """The run history of this store (its lock key names it); None, after an ERROR line, if it cannot be used."""
    try:
        return History.open(settings.history_url_for(broker_url), key, store=store, source="celery",
                            secrets=config.secrets(urls=(broker_url,)))
    except RetentionError as exc:
        log.error("workflow-retention run history not recorded: %s", exc)
        return None


def _holding(lease: Lease, settings: config.Settings, storage: Any, sent_at: datetime | None,
             history: History | None = None) -> dict[str, Any]:
    """Under the acquired lease: purge, release, then log the summary line and push the metrics (whatever
    happened)."""
    summary: dict[str, Any] | None = None
    try:
        with lease:
            done = _last_done(lease) if sent_at is not None else None
            if done is not None and sent_at is not None and done >= sent_at:
                log.info("workflow-retention skipped status=already-done lock=%s done_at=%s sent_at=%s",
                         lease.key, done.isoformat(), sent_at.isoformat())
                return {"skipped": "already-done", "lock_key": lease.key, "done_at": done.isoformat()}
            summary = {"status": "failed", "backend": storage.url, "lock": lease.key}
            purge, orphans = _purge(settings, storage, lease, history)
            summary.update(_summary(purge, orphans))
            if summary["status"] == "purged":
                _mark_done(lease)
    except Exception as exc:
        if summary is not None:
            summary["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if summary is not None:
            _log_summary(summary, lease)
            _push_metrics(settings, storage.url, history, summary)
    result = {**purge.to_dict(), "status": summary["status"], "lock": _lock_info(lease)}
    if orphans is not None:
        result["orphans"] = orphans.to_dict()
    if summary["status"] == "stopped":
        raise LeaseLostError(f"purge stopped at a batch boundary: {summary['stopped']}; partial report: "
                             f"{json.dumps(result, default=str)}")
    return result


def _purge(settings: config.Settings, storage: Any, lease: Lease,
           history: History | None = None) -> tuple[PurgeReport, OrphanReport | None]:
    """The purge (and the orphan sweep), each recorded in the history, each batch fenced by the lease."""
    assert settings.retention_days is not None
    days = settings.retention_days

    def purge_run(on_batch: Any) -> PurgeReport:
        storage.open()  # inside the record: a store that cannot be opened is a failed purge too
        return storage.delete_old_runs(utcnow() - timedelta(days=days), on_batch=on_batch)

    try:
        purge = record_run(history, metrics.PURGE, purge_run, then=lease.check, log=log)
        orphans = None
        if settings.repair_orphans and not purge.stopped:
            orphans = record_run(history, metrics.ORPHANS, lambda on_batch: storage.sweep_orphans(
                grace=settings.orphan_grace, on_batch=on_batch), then=lease.check, log=log)
        return purge, orphans
    finally:
        storage.close()


def _push_metrics(settings: config.Settings, store_url: str, history: History | None,
                  summary: dict[str, Any]) -> None:
    """Push the store's metrics to the Pushgateway, if one is configured. Never raises: ERROR lines instead.

    The metrics come from the history (cumulative counters, last success, lag).
    If it cannot be read, the gauges this run knows are pushed with POST, so
    the gateway keeps the counters it had.
    """
    if not settings.pushgateway_url:
        return
    try:
        _push(settings.pushgateway_url, settings, store_url, history, summary)
    except Exception as exc:  # noqa: BLE001 - the push must never replace the purge's own outcome
        log.error("workflow-retention metrics not pushed: %s: %s", type(exc).__name__,
                  remove_secrets(str(exc), config.secrets()))


def _push(url: str, settings: config.Settings, store_url: str, history: History | None,
          summary: dict[str, Any]) -> None:
    store = metrics.store_label(store_url)
    snapshot = metrics.Snapshot(store=store)
    replace = True
    try:
        if history is None:
            raise StorageError("the run history is not available")
        fill_snapshot(snapshot, history, settings.retention_days, utcnow())
    except RetentionError as exc:
        log.error("workflow-retention metrics incomplete (no counters, no last success): %s", exc)
        replace = False
        outcome = {"purged": metrics.SUCCEEDED, "stopped": metrics.LEASE_LOST}.get(summary["status"], metrics.FAILED)
        snapshot.last_runs = {metrics.PURGE: {"finished_at": time.time(), "outcome": outcome,
                                              "duration_s": summary.get("duration_s")}}
        if outcome == metrics.SUCCEEDED:
            snapshot.last_success_at = time.time()
    try:
        metrics.push(url, metrics.registry_for(snapshot), store, replace=replace)
    except RetentionError as exc:
        log.error("workflow-retention metrics not pushed: %s", exc)
        return
    log.info("workflow-retention metrics pushed gateway=%s store=%s", redact_url(url), store)


def _last_done(lease: Lease) -> datetime | None:
    """When a purge of this store last completed (``<lock key>:done``), if within DONE_TTL."""
    value = lease.client.get(f"{lease.key}:done")
    return parse_timestamp(value.decode() if isinstance(value, bytes) else value) if value else None


def _mark_done(lease: Lease) -> None:
    """Record the completion while still holding the lock, so a duplicate waiting for it sees it."""
    from redis.exceptions import RedisError

    try:
        lease.client.set(f"{lease.key}:done", utcnow().isoformat(), px=int(DONE_TTL.total_seconds() * 1000))
    except RedisError:  # only deduplication suffers: a duplicate message would purge again (a no-op)
        log.exception("could not record the completed purge key=%s:done", lease.key)


def _summary(purge: PurgeReport, orphans: OrphanReport | None) -> dict[str, Any]:
    stopped = purge.stopped or (orphans.stopped if orphans else None)
    out: dict[str, Any] = {
        "status": "stopped" if stopped else "purged", "cutoff": purge.cutoff.isoformat() if purge.cutoff else None,
        "runs": purge.runs, "held": purge.held, "changed": purge.changed, "skipped": purge.skipped,
        "batches": purge.batches, "duration_s": purge.duration_s, "counts": dict(sorted(purge.counts.items())),
    }
    if stopped:
        out["stopped"] = stopped
    warnings = purge.warnings + (orphans.warnings if orphans else [])
    if warnings:  # what was left alone, and why: the first few, the total in warnings_total
        out["warnings_total"] = purge.warnings_total + (orphans.warnings_total if orphans else 0)
        out["warnings"] = warnings[:SUMMARY_WARNINGS]
    if orphans is not None:
        out.update(orphans=orphans.total, orphan_counts=dict(sorted(orphans.counts.items())),
                   orphan_bytes=orphans.bytes, orphan_duration_s=orphans.duration_s)
    return out


def _lock_info(lease: Lease) -> dict[str, Any]:
    return {"key": lease.key, "ttl_s": lease.ttl.total_seconds(), "renewals": lease.renewals, "lost": lease.lost}


def _log_summary(summary: dict[str, Any], lease: Lease) -> None:
    """One structured line per run: ``workflow-retention summary key=value ...`` (values JSON-encoded)."""
    summary = {**summary, "renewals": lease.renewals}
    if lease.lost:
        summary["lease_lost"] = lease.lost
    line = " ".join(f"{k}={json.dumps(v, separators=(',', ':'), default=str)}" for k, v in summary.items())
    if summary["status"] != "purged" or lease.lost:
        level = logging.ERROR
    elif summary.get("skipped") or summary.get("warnings"):
        level = logging.WARNING  # done, but records were left alone: an operator must look
    else:
        level = logging.INFO
    log.log(level, "workflow-retention summary %s", line)


# -- the start-up line ---------------------------------------------------------------


class _AuditDeadline(PurgeStopped):
    """The start-up audit's time is up: stop counting at this progress point."""


def _log_at_startup(app: Any, entry_name: str) -> None:
    """Connect the start-up audit to ``worker_ready`` for workers of ``app``."""
    from celery.signals import worker_ready

    def on_ready(sender: Any = None, **_: Any) -> None:
        if id(getattr(sender, "app", None)) != id(app):  # another app's worker in this process
            return
        try:
            entry = app.conf.beat_schedule.get(entry_name) or {}
            thread = threading.Thread(target=startup_audit, name="workflow-retention-startup-audit", daemon=True,
                                      kwargs={"broker_url": app.conf.broker_url, "schedule": entry.get("schedule")})
            thread.start()
        except Exception as exc:  # noqa: BLE001 - the line must never stop a worker from starting
            log.warning("workflow-retention startup audit not started: %s: %s", type(exc).__name__, exc)

    worker_ready.connect(on_ready, weak=False)


def startup_audit(*, broker_url: str | None, schedule: Any = None) -> dict[str, Any] | None:
    """Audit the store for at most ``PYWORKFLOW_RETENTION_STARTUP_AUDIT`` and log one line; return its fields.

    Logged at INFO (``workflow-retention startup key=value ...``), or WARNING
    when the time ran out before the counts were complete (they are then lower
    bounds, ``complete=false``). Never raises: a failure is a WARNING line. The
    time bound is checked at every progress point of the census and every
    batch boundary of the dry run; the worker never waits for any of it (this
    runs in a thread of its own).
    """
    secrets = config.secrets(urls=(broker_url,))
    try:
        settings = config.load_settings()
        if settings.startup_audit <= timedelta(0):
            log.debug("workflow-retention startup audit disabled (%s=0s)", config.STARTUP_AUDIT)
            return None
        fields = _startup_fields(settings, broker_url, schedule)
    except Exception as exc:  # noqa: BLE001 - a start-up line never crashes a worker: a WARNING instead
        log.warning("workflow-retention startup audit failed: %s",
                    remove_secrets(f"{type(exc).__name__}: {exc}", secrets))
        return None
    line = " ".join(f"{k}={json.dumps(v, separators=(',', ':'), default=str)}" for k, v in fields.items())
    log.log(logging.INFO if fields["complete"] else logging.WARNING, "workflow-retention startup %s",
            remove_secrets(line, secrets))
    return fields


def _startup_fields(settings: config.Settings, broker_url: str | None, schedule: Any) -> dict[str, Any]:
    from workflow_retention.status import next_run

    storage = by_url(settings.require_storage_url(), batch_size=settings.batch_size)
    days = settings.retention_days
    budget = settings.startup_audit.total_seconds()
    started = time.monotonic()

    def on_progress(what: str, n: int) -> None:
        if time.monotonic() - started > budget:
            raise _AuditDeadline(f"the start-up audit stopped after {budget:g}s ({config.STARTUP_AUDIT})")

    now = utcnow()
    fields: dict[str, Any] = {"store": storage.url, "enabled": settings.enabled,
                              "retention_days": days, "complete": True}
    report = None
    try:
        with storage:
            report = storage.audit(older_than=now - timedelta(days=days) if days else None,
                                   grace=settings.orphan_grace, on_progress=on_progress)
    except _AuditDeadline as exc:
        fields.update(complete=False, stopped=str(exc))
    if report is not None:
        preview = report.purge
        fields["runs_by_status"] = dict(sorted(report.census.runs_by_status.items()))
        fields["would_delete"] = preview.runs if preview is not None else None
        fields["held"] = preview.held if preview is not None else None
        if preview is not None and preview.stopped:
            fields.update(complete=False, stopped=preview.stopped)
    history = _open_history(settings, broker_url, storage.url, settings.lock_key)
    lag, last_started = None, None
    if history is not None:
        try:
            if report is not None:
                history.record_audit(metrics.audit_snapshot(report, days, complete=fields["complete"]))
            state = history.state()
            clean = parse_timestamp(state["clean_at"]) if state.get("clean_at") else None
            lag = metrics.retention_lag(utcnow(), days, clean, history.last_audit())
            runs = [r for r in history.runs(20) if r.get("source") == "celery"]
            last_started = parse_timestamp(runs[0]["started_at"]) if runs else None
        except RetentionError as exc:
            fields["history_error"] = str(exc)
        finally:
            history.close()
    elif report is not None:
        lag = metrics.retention_lag(utcnow(), days, None, metrics.audit_snapshot(report, days,
                                                                                  complete=fields["complete"]))
    fields["lag_s"] = round(lag.seconds, 3) if lag is not None and lag.seconds is not None else None
    fields["lag_basis"] = lag.basis if lag is not None else None
    if schedule is None:
        from workflow_retention.status import schedule_text

        spec = config.load_schedule()
        schedule = daily_schedule(spec)
        fields["schedule"] = schedule_text(spec)
    due = next_run(schedule, utcnow(), last_started)
    fields["next_run"] = due.isoformat() if due else None
    fields["audit_s"] = round(time.monotonic() - started, 3)
    return fields
