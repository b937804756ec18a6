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
* **Shards.** With ``PYWORKFLOW_RETENTION_SHARDS`` (or ``install(app, shards=N)``) above 1 on a store that
  can be split, the task, under the singleton lease, plans the shards and dispatches them as a Celery
  ``chord``: one ``workflow_retention.purge_shard`` task per shard, then ``workflow_retention.finish_shards``.
  Each shard task holds its own lease (renewed, and checked at every batch boundary), persists its cursor
  in Redis after every batch (a guarded write: only while it holds its lease and the plan is current), and
  is resumed from that cursor by a retry (``acks_late``: a killed worker's shard is delivered again) or by
  the next run of the task. The callback, under the singleton lease again, runs the final whole-store pass,
  merges the reports into one report, one summary line and one history record, and fails if a shard
  failed for good. The fan-out state and design: docs/scaling.md.
* **A start-up line.** When a worker with the task starts (``worker_ready``),
  a background thread audits the store for at most
  ``PYWORKFLOW_RETENTION_STARTUP_AUDIT`` (30s) and logs one line: the store,
  runs by status, runs a purge would delete now, the lag and the next run.
  It never delays or fails the worker's start-up: a failure is a WARNING line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from workflow_retention import config, metrics, rules
from workflow_retention.archive import ArchiveStore, check_archive_url, open_archive
from workflow_retention.backends import by_url
from workflow_retention.base import Shard, validate_shards
from workflow_retention.exceptions import (
    ConfigurationError,
    LeaseLostError,
    LockHeldError,
    PinAdded,
    PurgeStopped,
    RetentionError,
    StorageError,
)
from workflow_retention.history import History, fill_snapshot, record_run
from workflow_retention.lock import Lease, open_lease
from workflow_retention.planning import Expiry
from workflow_retention.policy import Policy, cutoff_text, parse_cutoff, parse_policy
from workflow_retention.report import OrphanReport, PurgeReport
from workflow_retention.shards import counted, merge_reports, report_from_dict
from workflow_retention.timeutil import parse_timestamp, utcnow
from workflow_retention.urls import redact_url, remove_secrets

log = logging.getLogger("workflow_retention.celery")

TASK_NAME = "workflow_retention.run_retention"
#: One shard of a fanned-out purge (see :func:`run_shard`).
SHARD_TASK_NAME = "workflow_retention.purge_shard"
#: The chord's callback: the final pass and the merged report (see :func:`finish_shards`).
FINISH_TASK_NAME = "workflow_retention.finish_shards"
#: Retries of a shard task (a store error, a lost lease, its lease still held by a killed attempt).
SHARD_RETRIES = 10
#: How long the fan-out state (plan, cursors, finished shards' reports) is kept after its last write.
FANOUT_TTL = timedelta(days=7)
#: The beat entry's name, whatever its schedule (daily, interval or a crontab of the user's).
ENTRY_NAME = "workflow-retention"
#: pyworkflow-engine's own hourly retention entry (see README: run only one of the two).
PYWORKFLOW_ENTRY = "pyworkflow-data-retention"
MAX_EXPIRES = timedelta(hours=12)
#: Warnings (records left alone, and why) quoted in the summary line; the report holds up to 50.
SUMMARY_WARNINGS = 5
#: How long the completion marker ``<lock key>:done`` is kept (longer than any ``expires``).
DONE_TTL = timedelta(days=2)
#: How ``install(policy=...)`` is named in the errors of the policy it was given.
POLICY_SOURCE = "install(policy=...)"


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
    shards: int | None = None,
    archive: str | None = None,
    policy: Mapping[str, Any] | None = None,
) -> Any:
    """Register the retention task on ``app`` and add its beat entry; return the task.

    ``schedule`` defaults to ``PYWORKFLOW_RETENTION_SCHEDULE`` (daily at 03:00
    plus a jitter of up to ``PYWORKFLOW_RETENTION_SCHEDULE_JITTER``); it may
    also be any Celery schedule (``crontab(...)``, a ``timedelta``), used as
    is. ``expires`` defaults to half the period, at most 12 hours. ``queue``
    (default ``PYWORKFLOW_RETENTION_QUEUE``, else the app's default queue)
    routes the beat entry's messages. With
    ``replace_pyworkflow_entry`` the app's ``pyworkflow-data-retention`` entry,
    if any, is removed. ``shards`` (default ``PYWORKFLOW_RETENTION_SHARDS``,
    else 1) fans each purge out to that many shard tasks (docs/scaling.md);
    the shard and callback tasks are registered on ``app`` either way. ``archive``
    (default ``PYWORKFLOW_RETENTION_ARCHIVE_URL``) archives every batch there before deleting it
    (docs/archive.md); a URL that cannot be used is a :class:`ConfigurationError` here. Call it
    after the app's configuration is loaded.
    """
    spec = config.load_schedule()
    queue = queue or spec.queue
    sched = schedule if schedule is not None else daily_schedule(spec, jitter)
    window = _seconds(expires) if expires is not None else default_expires(sched)
    options = {"queue": queue} if queue else {}
    fan_out = validate_shards(shards, "install(shards=...)") if shards is not None else None
    archive_url = check_archive_url(archive, "install(archive=...)") if archive is not None else None
    if policy is not None:  # checked here, naming the key; sent with each run as the same plain mapping
        parse_policy(policy, POLICY_SOURCE)
        policy = json.loads(json.dumps(policy))
    task = app.task(bind=True, name=TASK_NAME)(_task_body)
    app.task(bind=True, name=SHARD_TASK_NAME, acks_late=True, reject_on_worker_lost=True,
             max_retries=SHARD_RETRIES)(_shard_body)
    app.task(bind=True, name=FINISH_TASK_NAME, max_retries=SHARD_RETRIES)(_finish_body)
    kwargs: dict[str, Any] = {"beat_expires_s": window}
    if fan_out is not None:
        kwargs["shards"] = fan_out
    if archive_url is not None:
        kwargs["archive"] = archive_url
    if policy is not None:
        kwargs["policy"] = policy
    if queue:
        kwargs["queue"] = queue  # where a fan-out sends its shard tasks and its callback
    app.add_periodic_task(sched, app.signature(TASK_NAME, kwargs=kwargs),
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


def _task_body(self: Any, beat_expires_s: float | None = None, shards: int | None = None,
               queue: str | None = None, archive: str | None = None,
               policy: Mapping[str, Any] | None = None) -> dict[str, Any]:
    sent_at = None
    if beat_expires_s and self.request.expires:
        sent_at = parse_timestamp(self.request.expires) - timedelta(seconds=beat_expires_s)
    return run_retention(broker_url=self.app.conf.broker_url, sent_at=sent_at, app=self.app, shards=shards,
                         queue=queue, archive=archive, policy=policy)


def run_retention(*, broker_url: str | None, sent_at: datetime | None = None, app: Any = None,
                  shards: int | None = None, queue: str | None = None,
                  archive: str | None = None, policy: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read the settings, take the lock, purge (and sweep orphans), return the report as a dict.

    ``broker_url`` is the lock's Redis unless ``PYWORKFLOW_RETENTION_LOCK_URL``
    is set. ``sent_at``: when beat sent this run; the run is skipped if a purge
    of the same store completed after that. An error whose text, or whose chained
    errors' text, holds a secret of the configuration is raised again with the
    secret removed and without the chain: Celery stores a failed task's message
    and traceback in its result backend and logs them.

    ``app``, ``shards`` and ``queue``: the fan-out (see docs/scaling.md): with more than one shard
    (``shards``, else ``PYWORKFLOW_RETENTION_SHARDS``) the shard tasks are sent through ``app`` to ``queue``
    (else ``PYWORKFLOW_RETENTION_QUEUE``, else the app's default queue).

    ``policy``: a retention policy's keys (``install(policy=...)``), else ``PYWORKFLOW_RETENTION_POLICY``; a
    policy that deletes sooner than the one the last successful purge applied is held back until accepted
    (:func:`workflow_retention.rules.guard`, docs/policy.md). The store's pins are always honoured.
    """
    try:
        return _run_retention(broker_url, sent_at, app, shards, queue, archive, policy)
    except Exception as exc:
        _scrubbed(exc, broker_url)
        raise


def _scrubbed(exc: Exception, broker_url: str | None) -> None:
    """Raise ``exc`` again without any secret of the configuration in its text or chain (a no-op if it has none)."""
    if isinstance(exc, _celery_control()):
        return
    secrets = config.secrets(urls=(broker_url,))
    full = "".join(traceback.format_exception(exc))
    if remove_secrets(full, secrets) == full:
        return
    clean = remove_secrets(str(exc), secrets)
    cls = type(exc) if isinstance(exc, (ConfigurationError, StorageError, PurgeStopped)) else StorageError
    raise cls(f"{type(exc).__name__}: {clean}" if cls is not type(exc) else clean) from None


def _celery_control() -> tuple[type[BaseException], ...]:
    """Celery's control-flow exceptions (a retry), which are not errors to scrub."""
    from celery.exceptions import Retry

    return (Retry,)


def _run_retention(broker_url: str | None, sent_at: datetime | None, app: Any = None,
                   shards: int | None = None, queue: str | None = None,
                   archive: str | None = None, policy: Mapping[str, Any] | None = None) -> dict[str, Any]:
    settings = config.load_settings()
    if policy is not None:
        settings = dataclasses.replace(settings, policy=parse_policy(policy, POLICY_SOURCE))
    if not settings.enabled:
        log.info("workflow-retention skipped status=disabled reason=%s=false", config.ENABLED)
        return {"skipped": "disabled"}
    if settings.retention_days is None and settings.policy is None:
        log.debug("workflow-retention skipped status=unconfigured reason=%s unset", config.RETENTION_DAYS)
        return {"skipped": "retention-days-unset"}
    if settings.policy is not None and settings.policy.emergency().shortest() < settings.min_age:
        raise ConfigurationError(f"the retention policy's shortest rule ({settings.policy.emergency().shortest()}, "
                                 "its disk-pressure emergency rule included) is shorter "
                                 f"than {config.MIN_AGE} ({settings.min_age}): refusing a purge of runs that "
                                 "finished so recently")
    if settings.policy is None and timedelta(days=settings.retention_days or 0) < settings.min_age:
        raise ConfigurationError(f"{config.RETENTION_DAYS}={settings.retention_days} is shorter than "
                                 f"{config.MIN_AGE} ({settings.min_age}): refusing a purge of runs that "
                                 "finished so recently")
    if settings.max_runs is not None and (shards or settings.shards) > 1:
        raise ConfigurationError(f"{config.MAX_RUNS} is not enforced across shard tasks yet: nothing is purged; set "
                                 f"{config.SHARDS} to 1, or unset the cap")
    archive_url = archive or settings.archive_url
    store = open_archive(archive_url, "archive" if archive else config.ARCHIVE_URL) if archive_url else None
    if store is not None and (shards or settings.shards) > 1:
        raise ConfigurationError(f"an archive is not supported with {config.SHARDS} above 1 yet (issue 20): "
                                 "nothing is purged; set it to 1 or remove the archive")
    storage = by_url(settings.require_storage_url(), batch_size=settings.batch_size)
    lease = open_lease(settings.lock_url_for(broker_url), settings.lock_key, settings.lock_ttl)
    history = _open_history(settings, broker_url, storage.url, lease.key)
    try:
        if not lease.acquire():
            holder = lease.holder()
            log.info("workflow-retention skipped status=locked lock=%s holder=%s", lease.key, holder)
            return {"skipped": "locked", "lock_key": lease.key, "holder": holder}
        fan_out = FanOut(app, shards or settings.shards, queue) if (shards or settings.shards) > 1 else None
        return _holding(lease, settings, storage, sent_at, history, fan_out, store)
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
             history: History | None = None, fan_out: FanOut | None = None,
             archive: ArchiveStore | None = None) -> dict[str, Any]:
    """Under the acquired lease: purge, release, then log the summary line and push the metrics (whatever
    happened). With ``fan_out`` and a store that splits: plan the shards and dispatch them instead."""
    summary: dict[str, Any] | None = None
    try:
        with lease:
            done = _last_done(lease) if sent_at is not None else None
            if done is not None and sent_at is not None and done >= sent_at:
                log.info("workflow-retention skipped status=already-done lock=%s done_at=%s sent_at=%s",
                         lease.key, done.isoformat(), sent_at.isoformat())
                return {"skipped": "already-done", "lock_key": lease.key, "done_at": done.isoformat()}
            if fan_out is not None:
                dispatched = fan_out.dispatch(lease, settings, storage, sent_at, history)
                if dispatched is not None:
                    return dispatched
            summary = {"status": "failed", "backend": storage.url, "lock": lease.key}
            purge, orphans = _purge(settings, storage, lease, history, archive)
            summary.update(_summary(purge, orphans))
            if summary["status"] == "purged":
                _mark_done(lease)
                FanOutState(lease.client, lease.key).drop()  # a whole purge finishes any unfinished fan-out
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
        raise _stop_error(summary, f"purge stopped at a batch boundary: {summary['stopped']}; partial report: "
                                   f"{json.dumps(result, default=str)}")
    return result


def _stop_error(summary: dict[str, Any], message: str) -> PurgeStopped:
    """The error a task that stopped at a batch boundary fails with: :class:`PinAdded` for a new pin, else
    :class:`LeaseLostError` (the only other stop a task's purge has)."""
    return PinAdded(message) if summary.get("stop_outcome") == metrics.PIN_ADDED else LeaseLostError(message)


def _state(settings: config.Settings, lease: Lease, history: History | None) -> rules.StateStore:
    """The store's pins and policy guard: in the state store (the history's Redis), else the lock's Redis."""
    if history is not None:
        return rules.StateStore(history.client, lease.key, history.secrets)
    if settings.state_url is not None:  # the state store is configured but could not be used: pins unknown
        raise StorageError("the state store could not be used, so the store's pins cannot be read: nothing purged")
    return rules.StateStore(lease.client, lease.key)


def _rule(settings: config.Settings, state: rules.StateStore, storage: Any,
          history: History | None) -> tuple[datetime, Policy, tuple[str, ...]]:
    """The cutoff this run applies (the days cutoff as before, or the guarded policy with the pins, under disk
    pressure its emergency rule), the policy to record as applied when it succeeds, and what is held back."""
    pins = state.pins()
    if settings.policy is None:
        days = settings.retention_days or 0
        return rules.cutoff_for(days=days, policy=None, pins=pins), Policy.days(days), ()
    guarded = rules.guard(settings.policy, state)
    if guarded.held:
        log.warning("workflow-retention policy held back: it deletes sooner than the policy the last successful "
                    "purge applied, which this run applies instead, until `workflow-retention policy accept`: %s",
                    "; ".join(guarded.held))
    cutoff, why = rules.pressured(rules.cutoff_for(days=None, policy=guarded.policy, pins=pins), storage)
    if history is not None and guarded.policy.pressure is not None:
        history.record_pressure(why)
    return cutoff, guarded.policy, guarded.held


def _purge(settings: config.Settings, storage: Any, lease: Lease, history: History | None = None,
           archive: ArchiveStore | None = None) -> tuple[PurgeReport, OrphanReport | None]:
    """The purge (and the orphan sweep), each recorded in the history, each batch fenced by the lease."""
    state = _state(settings, lease, history)
    applied: list[Policy] = []

    def purge_run(on_batch: Any) -> PurgeReport:
        storage.open()  # inside the record: a store that cannot be opened is a failed purge too
        cutoff, policy, held = _rule(settings, state, storage, history)
        state.record_held(held)
        applied.append(policy)
        watched = rules.pins_watched(rules.by_rule(cutoff, on_batch), state, rules.pins_of(cutoff))
        report = storage.delete_old_runs(cutoff, on_batch=rules.capped(watched, settings.max_runs), archive=archive)
        report.rules = rules.rule_counts(cutoff)
        if held:
            report.warn("the retention policy is held back (it deletes sooner than the last one applied) until "
                        f"`workflow-retention policy accept`: {'; '.join(held)}")
        return report

    try:
        purge = record_run(history, metrics.PURGE, purge_run, then=lease.check, log=log)
        if not purge.stopped and applied:
            state.record_applied(applied[0])
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
        outcome = {"purged": metrics.SUCCEEDED, "stopped": summary.get("stop_outcome")}.get(summary["status"]) \
            or metrics.FAILED
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
        by = purge if purge.stopped else orphans
        out["stop_outcome"] = (by.stop_outcome if by is not None else None) or metrics.LEASE_LOST
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


# -- the fan-out over shards ----------------------------------------------------------

# Write one field of the fan-out state only while KEYS[1] (the writer's shard lease) holds ARGV[1] (its
# token) and the state is still plan ARGV[2]: a stale attempt, or one whose lease expired, changes nothing.
_GUARDED_SET = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('HGET', KEYS[2], 'plan') ~= ARGV[2] then return -2 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
"""

_DROP_PLAN = """
if ARGV[1] == '' or redis.call('HGET', KEYS[1], 'plan') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class FanOutState:
    """The persisted state of one store's fanned-out purge: the Redis hash ``<lock key>:fanout``.

    Fields: ``plan`` (its id), ``shards`` (the plan, JSON), ``cutoff``, ``started_at``, ``record`` (the run
    history record the callback finishes), ``cursor:<i>`` (the last key shard ``i`` finished) and
    ``done:<i>`` (shard ``i``'s report, JSON). Shard tasks write only through :meth:`save`: one script that
    writes only while the writer's shard lease (``<lock key>:shard:<plan>:<i>``) holds its token and the plan
    is still the current one, so a write is guarded (a stale attempt changes nothing) and idempotent (the
    same cursor twice is one state). The hash expires :data:`FANOUT_TTL` after its last write; the callback
    deletes it once the purge is complete, and keeps it when a shard failed, for the next run to resume.
    """

    def __init__(self, client: Any, lock_key: str) -> None:
        self.client, self.lock_key, self.key = client, lock_key, f"{lock_key}:fanout"
        self._set = client.register_script(_GUARDED_SET)
        self._drop = client.register_script(_DROP_PLAN)

    def meta(self) -> dict[str, str]:
        """Every field, decoded (empty: no fan-out in progress)."""
        raw = self.client.hgetall(self.key)
        return {k.decode(): v.decode() for k, v in raw.items()}

    def create(self, plan_id: str, shards: list[dict[str, Any]], cutoff: datetime, record: str | None) -> None:
        """Start plan ``plan_id`` (replacing any other state of this store)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.key)
        pipe.hset(self.key, mapping={"plan": plan_id, "shards": json.dumps(shards), "cutoff": cutoff_text(cutoff),
                                     "started_at": utcnow().isoformat(), "record": record or ""})
        pipe.pexpire(self.key, int(FANOUT_TTL.total_seconds() * 1000))
        pipe.execute()

    def resume(self, cutoff: datetime, record: str | None) -> None:
        """A later run takes the unfinished plan over: its cutoff and its history record."""
        self.client.hset(self.key, mapping={"cutoff": cutoff_text(cutoff), "record": record or ""})
        self.client.pexpire(self.key, int(FANOUT_TTL.total_seconds() * 1000))

    def lease_key(self, plan_id: str, index: int) -> str:
        """The Redis key of shard ``index``'s lease."""
        return f"{self.lock_key}:shard:{plan_id}:{index}"

    def save(self, lease: Lease, plan_id: str, field: str, value: str) -> bool:
        """Set ``field`` if ``lease`` still holds its key and ``plan_id`` is current; False (nothing written) if not."""
        done = self._set(keys=[lease.key, self.key],
                         args=[lease.token, plan_id, field, value, int(FANOUT_TTL.total_seconds() * 1000)])
        return int(done) == 1

    def drop(self, plan_id: str | None = None) -> None:
        """Delete the state (of ``plan_id`` only, if given). A Redis error is logged: the state expires anyway."""
        from redis.exceptions import RedisError

        try:
            self._drop(keys=[self.key], args=[plan_id or ""])
        except RedisError as exc:
            log.error("workflow-retention fan-out state %s not deleted (it expires in %s): %s", self.key, FANOUT_TTL,
                      exc)


class FanOut:
    """The daily task's side of a sharded purge: plan (or take over an unfinished plan) and dispatch the chord."""

    def __init__(self, app: Any, shards: int, queue: str | None = None) -> None:
        self.app, self.shards, self.queue = app, validate_shards(shards, config.SHARDS), queue

    def dispatch(self, lease: Lease, settings: config.Settings, storage: Any, sent_at: datetime | None,
                 history: History | None) -> dict[str, Any] | None:
        """Under the singleton lease: dispatch ``chord(group(shard tasks), finish_shards)``; its description.

        None when the store cannot be split: the caller purges it as one, as with one shard. An unfinished
        plan of this store (a shard failed, a chord was lost) is taken over with this run's cutoff: finished
        shards return their stored reports, the others resume from their cursors. A duplicate message of the
        slot that started the plan in progress is skipped (``already-running``).
        """
        backend = getattr(getattr(self.app, "conf", None), "result_backend", None)
        if self.app is None or not backend or backend == "disabled":
            raise ConfigurationError(f"{config.SHARDS}={self.shards} fans the purge out as a Celery chord, which needs "
                                     "a result backend: set the app's result_backend (e.g. redis://localhost:6379/1), "
                                     f"or {config.SHARDS}=1")
        state = FanOutState(lease.client, lease.key)
        meta = state.meta()
        # the shards and the final pass all apply this one
        rules_state = _state(settings, lease, history)
        cutoff, _, held = _rule(settings, rules_state, storage, history)
        rules_state.record_held(held)
        if meta.get("plan"):
            started = parse_timestamp(meta["started_at"])
            if sent_at is not None and started >= sent_at:
                log.info("workflow-retention skipped status=already-running lock=%s plan=%s started_at=%s",
                         lease.key, meta["plan"], started.isoformat())
                return {"skipped": "already-running", "lock_key": lease.key, "plan": meta["plan"]}
            plan_id, shards, resumed = meta["plan"], json.loads(meta["shards"]), True
            record = _start_record(history)
            state.resume(cutoff, record)
        else:
            try:
                plan = storage.shards(self.shards, until=cutoff)
            finally:
                storage.close()
            if len(plan) == 1:
                log.info("workflow-retention %s=%d: the %s backend cannot be split; one purge", config.SHARDS,
                         self.shards, storage.name)
                return None
            plan_id, shards, resumed = uuid.uuid4().hex[:12], [s.to_dict() for s in plan], False
            record = _start_record(history)
            state.create(plan_id, shards, cutoff, record)
        from celery import chord, group

        queue = self.queue or config.load_schedule().queue
        options = {"queue": queue} if queue else {}
        header = group(self.app.signature(SHARD_TASK_NAME, args=(plan_id, s["index"], s, cutoff_text(cutoff)),
                                          **options) for s in shards)
        callback = chord(header)(self.app.signature(FINISH_TASK_NAME, args=(plan_id, cutoff_text(cutoff)),
                                                    **options))
        log.info("workflow-retention fan-out dispatched backend=%s lock=%s plan=%s shards=%d resumed=%s cutoff=%s",
                 storage.url, lease.key, plan_id, len(shards), resumed, cutoff.isoformat())
        return {"status": "dispatched", "backend": storage.url, "lock_key": lease.key, "plan": plan_id,
                "shards": len(shards), "resumed": resumed, "cutoff": cutoff.isoformat(), "callback": callback.id}


def _start_record(history: History | None) -> str | None:
    if history is None:
        return None
    try:
        return history.start(metrics.PURGE)
    except RetentionError as exc:
        log.error("workflow-retention run history not recorded: %s", exc)
        return None


def _finish_record(history: History | None, record: str | None, outcome: str, *, report: PurgeReport | None = None,
                   error: BaseException | str | None = None) -> None:
    """Finish the fan-out's history record; a state store that fails is an ERROR line, never the outcome."""
    if history is None or not record:
        return
    try:
        if not history.finish(record, outcome, report=report, error=error):
            log.warning("run history: record %s was already finished or is gone; left as it was", record)
    except RetentionError as exc:
        log.error("workflow-retention run history not recorded (outcome %s): %s", outcome, exc)


def _retry_after(settings: config.Settings) -> float:
    """Seconds before a shard task tries again: a killed attempt's lease has expired by then."""
    return max(1.0, min(settings.lock_ttl.total_seconds(), 60.0))


def _shard_body(self: Any, plan_id: str, index: int, shard: dict[str, Any], cutoff: str) -> dict[str, Any]:
    broker = self.app.conf.broker_url
    try:
        return run_shard(self, plan_id, index, shard, cutoff, broker_url=broker)
    except Exception as exc:
        _scrubbed(exc, broker)
        raise


def run_shard(task: Any, plan_id: str, index: int, shard_data: dict[str, Any], cutoff_iso: str, *,
              broker_url: str | None) -> dict[str, Any]:
    """One shard of plan ``plan_id``: under its own lease, from its persisted cursor; its partial report.

    Returns ``{"shard": i, "report": {...}, "resumed_after": cursor}``; the stored report if the shard is
    already done (a redelivered or duplicate task); ``{"skipped": "superseded"}`` if the plan is no longer
    current. A store error, a lost lease or a lease still held by an earlier attempt is retried
    (:data:`SHARD_RETRIES`, ``task.retry``) and resumes from the cursor; after the last retry, or for a
    configuration error, ``{"shard": i, "failed": "..."}`` after an ERROR line: the callback fails the purge.
    """
    from workflow_retention.lock import redis_client

    settings = config.load_settings()
    shard = Shard.from_dict(shard_data)
    client = redis_client(settings.lock_url_for(broker_url), settings.lock_ttl)
    state = FanOutState(client, settings.lock_key)
    lease = Lease(client, state.lease_key(plan_id, index), settings.lock_ttl)
    secrets = config.secrets(urls=(broker_url,))
    try:
        if state.meta().get("plan") != plan_id:
            log.warning("workflow-retention shard %s skipped: plan %s is no longer current", shard.label, plan_id)
            return {"shard": index, "skipped": "superseded"}
        if not lease.acquire():
            raise LockHeldError(f"the lease of shard {shard.label} ({lease.key}) is held by {lease.holder()} "
                                f"(an earlier attempt: it expires within {settings.lock_ttl})")
        with lease:
            meta = state.meta()  # read under the lease: the cursor the last holder left
            if meta.get("plan") != plan_id:
                return {"shard": index, "skipped": "superseded"}
            if done := meta.get(f"done:{index}"):
                return {"shard": index, "report": json.loads(done), "already_done": True}
            saved = json.loads(meta.get(f"cursor:{index}") or "null") or {}
            cursor, before = saved.get("cursor"), saved.get("report")

            def on_cursor(value: str, so_far: PurgeReport) -> None:
                lease.check()
                progress = json.dumps({"cursor": value, "report": _added(before, so_far).to_dict()}, default=str)
                if not state.save(lease, plan_id, f"cursor:{index}", progress):
                    raise LeaseLostError(f"the cursor of shard {shard.label} could not be saved: lease or plan gone")

            storage = by_url(settings.require_storage_url(), batch_size=settings.batch_size)
            cutoff = parse_cutoff(cutoff_iso)
            pins = _pins_source(settings, broker_url, secrets)
            try:
                storage.open()
                with rules.watching(pins, lease.check, cutoff) as watched:
                    report = counted(storage, cutoff, watched, shard=shard, resume_after=cursor, on_cursor=on_cursor)
            finally:
                storage.close()
            if report.stopped and report.stop_outcome == metrics.PIN_ADDED:
                # Not retried: every retry would stop again at its first boundary. The callback fails the purge;
                # the next run takes the plan over with a cutoff that carries the new pins.
                return {**_shard_failed(shard, PinAdded(report.stopped), secrets), "stop_outcome": metrics.PIN_ADDED}
            if report.stopped:
                raise LeaseLostError(f"shard {shard.label} stopped at a batch boundary: {report.stopped}")
            report = _added(before, report)
            data = report.to_dict()
            if not state.save(lease, plan_id, f"done:{index}", json.dumps(data, default=str)):
                raise LeaseLostError(f"shard {shard.label} could not record its report: lease or plan gone")
        log.info("workflow-retention shard %s done plan=%s runs=%d batches=%d resumed_after=%s duration_s=%.3f",
                 shard.label, plan_id, report.runs, report.batches, json.dumps(cursor), report.duration_s)
        return {"shard": index, "report": data, "resumed_after": cursor}
    except ConfigurationError as exc:
        return _shard_failed(shard, exc, secrets)
    except (RetentionError, _redis_error()) as exc:
        if task.request.retries < SHARD_RETRIES:
            log.warning("workflow-retention shard %s will be retried in %.0fs (attempt %d of %d): %s", shard.label,
                        _retry_after(settings), task.request.retries + 1, SHARD_RETRIES,
                        remove_secrets(f"{type(exc).__name__}: {exc}", secrets))
            raise task.retry(exc=exc, countdown=_retry_after(settings)) from None
        return _shard_failed(shard, exc, secrets)
    finally:
        client.close()


def _pins_source(settings: config.Settings, broker_url: str | None,
                 secrets: list[str]) -> Callable[[], rules.StateStore]:
    """What opens the store's pins for a part of a fan-out (a shard task, the final pass): where the whole-store
    purge reads them (:func:`_state`: the state store, else the lock's Redis)."""
    return partial(rules.StateStore.open, settings.history_url_for(broker_url), settings.lock_key, secrets)


def _added(before: dict[str, Any] | None, report: PurgeReport) -> PurgeReport:
    """``report`` plus what earlier attempts of the same shard finished (saved with the cursor they left)."""
    if not before:
        return report
    earlier = report_from_dict(before)
    assert report.cutoff is not None
    return merge_reports([earlier, report], None, backend=report.backend, cutoff=report.cutoff,
                         started_at=earlier.started_at, duration_s=earlier.duration_s + report.duration_s)


def _redis_error() -> type[Exception]:
    from redis.exceptions import RedisError

    return RedisError


def _shard_failed(shard: Shard, exc: BaseException, secrets: list[str]) -> dict[str, Any]:
    why = remove_secrets(f"{type(exc).__name__}: {exc}", secrets)
    log.error("workflow-retention shard %s failed for good: %s", shard.label, why)
    return {"shard": shard.index, "failed": why}


def _finish_body(self: Any, results: list[dict[str, Any]], plan_id: str, cutoff: str) -> dict[str, Any]:
    broker = self.app.conf.broker_url
    try:
        return finish_shards(self, results, plan_id, cutoff, broker_url=broker)
    except Exception as exc:
        _scrubbed(exc, broker)
        raise


def finish_shards(task: Any, results: list[dict[str, Any]], plan_id: str, cutoff_iso: str, *,
                  broker_url: str | None) -> dict[str, Any]:
    """The chord's callback: the final pass under the singleton lease, one merged report, summary and record.

    Fails (raises :class:`StorageError`, after an ERROR summary line and a failed history record) when a
    shard failed for good; the fan-out state is kept so that the next run resumes the unfinished shards. When
    every shard that failed was stopped by a new pin: :class:`PinAdded`, and the record says ``pin-added``.
    """
    settings = config.load_settings()
    storage = by_url(settings.require_storage_url(), batch_size=settings.batch_size)
    lease = open_lease(settings.lock_url_for(broker_url), settings.lock_key, settings.lock_ttl)
    history = _open_history(settings, broker_url, storage.url, lease.key)
    state = FanOutState(lease.client, lease.key)
    try:
        meta = state.meta()
        if meta.get("plan") != plan_id:
            log.info("workflow-retention fan-out %s already finished or superseded; nothing to do", plan_id)
            return {"skipped": "superseded", "plan": plan_id}
        plan = [Shard.from_dict(s) for s in json.loads(meta["shards"])]
        outcomes = {r["shard"]: r for r in results if isinstance(r, dict) and isinstance(r.get("shard"), int)}
        parts = {i: report_from_dict(r["report"]) for i, r in outcomes.items() if "report" in r}
        failures = {s.index: (outcomes.get(s.index) or {}).get("failed")
                    or f"no report ({(outcomes.get(s.index) or {}).get('skipped', 'no result')})"
                    for s in plan if s.index not in parts}
        fan = _Finish(settings, storage, lease, history, state, plan_id, plan, parts, parse_cutoff(cutoff_iso),
                      meta, outcomes, broker_url)
        if failures:
            pinned = all((outcomes.get(i) or {}).get("stop_outcome") == metrics.PIN_ADDED for i in failures)
            fan.failed(failures, pinned=pinned)
        if not lease.acquire():
            if task.request.retries < SHARD_RETRIES:
                log.warning("workflow-retention fan-out %s: the lock is held by %s; the final pass waits", plan_id,
                            lease.holder())
                raise task.retry(countdown=_retry_after(settings))
            raise LockHeldError(f"the final pass of fan-out {plan_id} could not take the lock {lease.key}")
        return fan.final_pass()
    finally:
        lease.client.close()
        if history is not None:
            history.close()


@dataclass
class _Finish:
    settings: config.Settings
    storage: Any
    lease: Lease
    history: History | None
    state: FanOutState
    plan_id: str
    plan: list[Shard]
    parts: dict[int, PurgeReport]
    cutoff: datetime
    meta: dict[str, str]
    outcomes: dict[int, dict[str, Any]]
    broker_url: str | None

    def merged(self, final: PurgeReport | None) -> PurgeReport:
        started = parse_timestamp(self.meta["started_at"])
        return merge_reports([self.parts[i] for i in sorted(self.parts)], final, backend=self.storage.url,
                             cutoff=self.cutoff, started_at=started,
                             duration_s=(utcnow() - started).total_seconds())

    def head(self) -> dict[str, Any]:
        return {"status": "failed", "backend": self.storage.url, "lock": self.lease.key, "plan": self.plan_id,
                "shards": len(self.plan)}

    def failed(self, failures: dict[int, str], *, pinned: bool = False) -> None:
        """Log the ERROR summary, record the failure, push the metrics, and raise: the purge failed. ``pinned``:
        every shard that failed was stopped by a new pin, so the purge is recorded as ``pin-added`` (and fails with
        :class:`PinAdded`), as a whole-store purge stopped by a pin is."""
        text = "; ".join(f"shard {self.plan[i].label}: {why}" for i, why in sorted(failures.items()))
        error = (f"{len(failures)} of {len(self.plan)} shards failed for good, so the final pass was not run; the next "
                 f"run resumes them from their cursors: {text}")
        merged = self.merged(None)
        summary = {**self.head(), **_summary(merged, None), "status": "failed", "error": error}
        outcome = metrics.PIN_ADDED if pinned else metrics.FAILED
        if pinned:
            summary.update(status="stopped", stop_outcome=outcome)
        _finish_record(self.history, self.meta.get("record"), outcome, report=merged, error=error)
        _log_summary(summary, self.lease)
        _push_metrics(self.settings, self.storage.url, self.history, summary)
        raise PinAdded(error) if pinned else StorageError(error)

    def final_pass(self) -> dict[str, Any]:
        """Under the acquired singleton lease: the final whole-store pass (and the orphan sweep), then the merge."""
        summary: dict[str, Any] | None = None
        record = self.meta.get("record")
        try:
            with self.lease:
                summary = self.head()
                try:
                    self.storage.open()
                    pins = _pins_source(self.settings, self.broker_url, config.secrets(urls=(self.broker_url,)))
                    with rules.watching(pins, self.lease.check, self.cutoff) as watched:
                        final = counted(self.storage, self.cutoff, watched)
                    orphans = None
                    if self.settings.repair_orphans and not final.stopped:
                        orphans = record_run(self.history, metrics.ORPHANS, lambda on_batch: self.storage.sweep_orphans(
                            grace=self.settings.orphan_grace, on_batch=on_batch), then=self.lease.check, log=log)
                finally:
                    self.storage.close()
                merged = self.merged(final)
                summary.update(_summary(merged, orphans))
                summary["final_pass_runs"] = final.runs
                outcome = metrics.SUCCEEDED if summary["status"] == "purged" else summary["stop_outcome"]
                _finish_record(self.history, record, outcome, report=merged)
                if summary["status"] == "purged":
                    _mark_done(self.lease)
                    self.state.drop(self.plan_id)
                    _state(self.settings, self.lease, self.history).record_applied(  # never the emergency rule
                        self.cutoff.applied if isinstance(self.cutoff, Expiry)
                        else Policy.days(self.settings.retention_days or 0))
        except Exception as exc:
            if summary is not None:
                summary["error"] = f"{type(exc).__name__}: {exc}"
                _finish_record(self.history, record, metrics.FAILED, error=exc)
            raise
        finally:
            if summary is not None:
                _log_summary(summary, self.lease)
                _push_metrics(self.settings, self.storage.url, self.history, summary)
        result = {**merged.to_dict(), "status": summary["status"], "lock": _lock_info(self.lease), "plan": self.plan_id,
                  "final_pass": final.to_dict(),
                  "shards": [{"shard": s.label, "runs": self.parts[s.index].runs,
                              "resumed_after": self.outcomes.get(s.index, {}).get("resumed_after")}
                             for s in self.plan]}
        if orphans is not None:
            result["orphans"] = orphans.to_dict()
        if summary["status"] == "stopped":
            raise _stop_error(summary, f"the final pass stopped at a batch boundary: {summary['stopped']}; the next "
                                       "run finishes it")
        return result


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
    # PYWORKFLOW_RETENTION_POLICY's preview (without pins: a start-up line never waits on the state store)
    cutoff = rules.cutoff_for(days=days, policy=settings.policy, now=now) if days or settings.policy else None
    try:
        with storage:
            report = storage.audit(older_than=cutoff, grace=settings.orphan_grace, on_progress=on_progress)
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
