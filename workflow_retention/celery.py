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
"""

from __future__ import annotations

import hashlib
import json
import logging
import traceback
from datetime import datetime, timedelta
from typing import Any

from workflow_retention import config
from workflow_retention.backends import by_url
from workflow_retention.exceptions import ConfigurationError, LeaseLostError, StorageError
from workflow_retention.lock import Lease, open_lease
from workflow_retention.report import OrphanReport, PurgeReport
from workflow_retention.timeutil import parse_timestamp, utcnow
from workflow_retention.urls import remove_secrets

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
    try:
        if not lease.acquire():
            holder = lease.holder()
            log.info("workflow-retention skipped status=locked lock=%s holder=%s", lease.key, holder)
            return {"skipped": "locked", "lock_key": lease.key, "holder": holder}
        return _holding(lease, settings, storage, sent_at)
    finally:
        lease.client.close()


def _holding(lease: Lease, settings: config.Settings, storage: Any, sent_at: datetime | None) -> dict[str, Any]:
    """Under the acquired lease: purge, release, then log the summary line (whatever happened)."""
    summary: dict[str, Any] | None = None
    try:
        with lease:
            done = _last_done(lease) if sent_at is not None else None
            if done is not None and sent_at is not None and done >= sent_at:
                log.info("workflow-retention skipped status=already-done lock=%s done_at=%s sent_at=%s",
                         lease.key, done.isoformat(), sent_at.isoformat())
                return {"skipped": "already-done", "lock_key": lease.key, "done_at": done.isoformat()}
            summary = {"status": "failed", "backend": storage.url, "lock": lease.key}
            purge, orphans = _purge(settings, storage, lease)
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
    result = {**purge.to_dict(), "status": summary["status"], "lock": _lock_info(lease)}
    if orphans is not None:
        result["orphans"] = orphans.to_dict()
    if summary["status"] == "stopped":
        raise LeaseLostError(f"purge stopped at a batch boundary: {summary['stopped']}; partial report: "
                             f"{json.dumps(result, default=str)}")
    return result


def _purge(settings: config.Settings, storage: Any, lease: Lease) -> tuple[PurgeReport, OrphanReport | None]:
    assert settings.retention_days is not None
    storage.open()
    try:
        cutoff = utcnow() - timedelta(days=settings.retention_days)
        purge = storage.delete_old_runs(cutoff, on_batch=lease.check)
        orphans = None
        if settings.repair_orphans and not purge.stopped:
            orphans = storage.sweep_orphans(grace=settings.orphan_grace, on_batch=lease.check)
        return purge, orphans
    finally:
        storage.close()


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
