"""The task body and ``install()``, in this process, against a real Redis (lock) and real stores."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery
from celery.schedules import crontab

from tests.celery.conftest import BATCH, NOW, wait_until
from tests.services import clear_retention_env
from workflow_retention import config
from workflow_retention.backends import by_url
from workflow_retention.celery import ENTRY_NAME, PYWORKFLOW_ENTRY, TASK_NAME, install, run_retention
from workflow_retention.exceptions import ConfigurationError, LeaseLostError
from workflow_retention.lock import open_lease
from workflow_retention.seed import generate

CUTOFF_DAYS = 30


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, redis_service: Any) -> Iterator[dict[str, str]]:
    """A clean retention environment with its own memory store, lock key and fault key."""
    clear_retention_env(monkeypatch)
    uid = uuid.uuid4().hex[:10]
    values = {
        config.RETENTION_DAYS: str(CUTOFF_DAYS),
        config.STORAGE_URL: f"memory://celery-{uid}",
        config.LOCK_URL: redis_service.url,
        config.LOCK_KEY: f"wr-test-{uid}:lock",
        config.BATCH_SIZE: str(BATCH),
        "TEST_FAULTS_REDIS": redis_service.url,
        "TEST_FAULTS_KEY": f"wr-test-{uid}:faults",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    yield values
    client = redis.Redis.from_url(redis_service.url)
    client.delete(*client.keys(f"wr-test-{uid}*") or ["none"])


def seeded(url: str, n: int = 120) -> int:
    backend = by_url(url)
    backend.seed(generate(n, now=NOW, seed=3))
    return expired(url)


def expired(url: str) -> int:
    return by_url(url).delete_old_runs(datetime.now(UTC) - timedelta(days=CUTOFF_DAYS), dry_run=True).runs


def lock_value(env: dict[str, str]) -> bytes | None:
    return redis.Redis.from_url(env[config.LOCK_URL]).get(env[config.LOCK_KEY])


# -- settings -------------------------------------------------------------------------


def test_unset_retention_days_skips_with_a_debug_line(env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(config.RETENTION_DAYS)
    with caplog.at_level(logging.DEBUG, logger="workflow_retention"):
        assert run_retention(broker_url=None) == {"skipped": "retention-days-unset"}
    assert any(r.levelno == logging.DEBUG and config.RETENTION_DAYS in r.getMessage() for r in caplog.records)


def test_kill_switch_turns_it_off(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    total = seeded(env[config.STORAGE_URL])
    monkeypatch.setenv(config.ENABLED, "false")
    assert run_retention(broker_url=None) == {"skipped": "disabled"}
    assert expired(env[config.STORAGE_URL]) == total


@pytest.mark.parametrize(("name", "value", "message"), [
    (config.RETENTION_DAYS, "thirty", "PYWORKFLOW_DATA_RETENTION_DAYS must be a positive integer"),
    (config.RETENTION_DAYS, "0", "PYWORKFLOW_DATA_RETENTION_DAYS must be a positive integer"),
    (config.ENABLED, "perhaps", "PYWORKFLOW_RETENTION_ENABLED must be true or false"),
    (config.LOCK_TTL, "1s", "PYWORKFLOW_RETENTION_LOCK_TTL: .*from 3s to 1d"),
    (config.LOCK_URL, "amqp://guest@rabbit//", "PYWORKFLOW_RETENTION_LOCK_URL must be a Redis URL"),
    (config.STORAGE_URL, "oracle://db", "unknown storage URL scheme 'oracle'"),
    (config.REPAIR_ORPHANS, "sometimes", "PYWORKFLOW_RETENTION_REPAIR_ORPHANS must be true or false"),
])
def test_invalid_settings_fail_loudly_naming_the_variable(env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                          name: str, value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=message):
        run_retention(broker_url="redis://127.0.0.1:6379/0")
    assert lock_value(env) is None


def test_the_lock_defaults_to_a_redis_broker_and_otherwise_asks_for_a_lock_url(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.LOCK_URL)
    with pytest.raises(ConfigurationError, match="PYWORKFLOW_RETENTION_LOCK_URL is not set and the Celery broker "
                                                 r"\(amqp://guest:\*\*\*@rabbit//\) is not Redis"):
        run_retention(broker_url="amqp://guest:secret@rabbit//")
    with pytest.raises(ConfigurationError, match=r"PYWORKFLOW_RETENTION_LOCK_URL is not set .*\(unset\)"):
        run_retention(broker_url=None)
    assert run_retention(broker_url=env["TEST_FAULTS_REDIS"])["status"] == "purged"


def test_no_storage_configured_names_the_variable(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.STORAGE_URL)
    with pytest.raises(ConfigurationError, match="set PYWORKFLOW_RETENTION_STORAGE_URL"):
        run_retention(broker_url=None)


# -- the run ------------------------------------------------------------------------------


def test_a_run_purges_returns_the_report_logs_one_summary_and_releases(
        env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    total = seeded(env[config.STORAGE_URL])
    with caplog.at_level(logging.INFO, logger="workflow_retention.celery"):
        result = run_retention(broker_url=None)
    assert result["status"] == "purged" and result["counts"]["runs"] == total > 0
    assert result["batches"] >= total // BATCH
    assert result["lock"] == {"key": env[config.LOCK_KEY], "ttl_s": 300.0, "renewals": result["batches"],
                              "lost": None}
    assert expired(env[config.STORAGE_URL]) == 0
    assert lock_value(env) is None
    lines = [r.getMessage() for r in caplog.records if "summary" in r.getMessage()]
    assert len(lines) == 1 and f"runs={total}" in lines[0] and 'status="purged"' in lines[0]


def test_records_left_alone_make_the_summary_a_warning_that_names_them(
        env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    """A purge that skipped records is not a silent green: the summary is a WARNING with the reasons."""
    from workflow_retention.backends.memory import get_store

    seeded(env[config.STORAGE_URL])
    store = get_store(env[config.STORAGE_URL].removeprefix("memory://"))
    victim = next(r for r in store._runs.values() if r.status.value == "completed"
                  and r.updated_at < NOW - timedelta(days=40))
    victim.status = "COMPLETED"  # a status pyworkflow never writes: kept and reported
    with caplog.at_level(logging.INFO, logger="workflow_retention.celery"):
        result = run_retention(broker_url=None)
    assert result["status"] == "purged" and result["skipped"] == 1
    [line] = [r for r in caplog.records if "summary" in r.getMessage()]
    assert line.levelname == "WARNING"
    assert "skipped=1" in line.getMessage() and victim.run_id in line.getMessage()


def test_a_held_lock_returns_skipped_locked_and_touches_nothing(env: dict[str, str]) -> None:
    total = seeded(env[config.STORAGE_URL])
    other = open_lease(env[config.LOCK_URL], env[config.LOCK_KEY], timedelta(seconds=30))
    assert other.acquire()
    try:
        result = run_retention(broker_url=None)
        assert result == {"skipped": "locked", "lock_key": env[config.LOCK_KEY], "holder": other.token}
        assert expired(env[config.STORAGE_URL]) == total
    finally:
        assert other.release()


def test_a_lost_lease_stops_at_the_next_batch_and_fails_loudly(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        faulty_scheme: None) -> None:
    url = env[config.STORAGE_URL]
    total = seeded(url)
    monkeypatch.setenv(config.STORAGE_URL, "faulty+" + url)
    client = redis.Redis.from_url(env[config.LOCK_URL])
    client.set(env["TEST_FAULTS_KEY"], '{"delay": 0.2}')

    def steal() -> None:  # once the purge is under way, the lock is taken over
        wait_until(lambda: client.llen(env["TEST_FAULTS_KEY"] + ":batches") >= 2, 10, "two batches")
        client.set(env[config.LOCK_KEY], "intruder")

    thief = threading.Thread(target=steal)
    thief.start()
    with caplog.at_level(logging.INFO, logger="workflow_retention"), \
            pytest.raises(LeaseLostError, match="stopped at a batch boundary.*no longer ours"):
        run_retention(broker_url=None)
    thief.join()
    assert client.get(env[config.LOCK_KEY]) == b"intruder"  # not released by the former owner
    left = expired(url)
    assert 0 < left < total  # some batches went, the rest was left for the next run
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "summary" in r.getMessage()]
    assert len(errors) == 1 and 'status="stopped"' in errors[0]
    assert client.get(env[config.LOCK_KEY] + ":done") is None
    client.delete(env[config.LOCK_KEY], env["TEST_FAULTS_KEY"])
    assert run_retention(broker_url=None)["counts"]["runs"] == left


def test_orphan_repair_runs_after_the_purge_under_the_same_lock(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    url = env[config.STORAGE_URL]
    seeded(url)
    store = by_url(url).store
    live = [r for r in store._runs.values() if r.status not in ("completed", "failed", "cancelled")][:3]
    for run in live:  # as if an earlier purge removed only the run records
        del store._runs[run.run_id]
    monkeypatch.setenv(config.REPAIR_ORPHANS, "true")
    monkeypatch.setenv(config.ORPHAN_GRACE, "0s")
    with caplog.at_level(logging.INFO, logger="workflow_retention.celery"):
        result = run_retention(broker_url=None)
    assert result["status"] == "purged" and result["orphans"]["counts"]["events"] > 0
    assert not any(run.run_id in store._events for run in live)
    line = next(r.getMessage() for r in caplog.records if "summary" in r.getMessage())
    assert f"orphans={result['orphans']['counts'] and sum(result['orphans']['counts'].values())}" in line
    assert "orphan_counts=" in line


def test_a_beat_message_sent_before_the_last_completion_is_a_duplicate(env: dict[str, str]) -> None:
    seeded(env[config.STORAGE_URL])
    before = datetime.now(UTC)
    assert run_retention(broker_url=None)["status"] == "purged"
    skipped = run_retention(broker_url=None, sent_at=before)
    assert skipped["skipped"] == "already-done"
    assert run_retention(broker_url=None, sent_at=datetime.now(UTC))["status"] == "purged"
    assert run_retention(broker_url=None)["status"] == "purged"  # by hand: never deduplicated


# -- install() ---------------------------------------------------------------------------------


def fresh_app(**conf: Any) -> Celery:
    app = Celery("user_app", broker="redis://127.0.0.1:6379/0")
    app.conf.update(conf)
    return app


def test_install_registers_the_task_and_a_daily_entry_with_jitter_and_expires(env: dict[str, str]) -> None:
    app = fresh_app()
    task = install(app)
    assert task.name == TASK_NAME and app.tasks[TASK_NAME].name == TASK_NAME
    entry = app.conf.beat_schedule[ENTRY_NAME]
    assert entry["task"] == TASK_NAME
    assert entry["options"]["expires"] == 12 * 3600 == entry["kwargs"]["beat_expires_s"]
    sched = entry["schedule"]
    assert isinstance(sched, crontab)
    (hour,), (minute,) = sched.hour, sched.minute
    assert 3 * 60 <= hour * 60 + minute < 4 * 60
    again = fresh_app()
    install(again)
    assert again.conf.beat_schedule[ENTRY_NAME]["schedule"] == sched  # same lock key -> same minute


def test_jitter_spreads_deployments_and_can_be_disabled(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    minutes = set()
    for i in range(12):
        monkeypatch.setenv(config.LOCK_KEY, f"deployment-{i}")
        app = fresh_app()
        install(app)
        minutes.add(app.conf.beat_schedule[ENTRY_NAME]["schedule"]._orig_minute)
    assert len(minutes) > 3
    monkeypatch.setenv(config.SCHEDULE, "22:15")
    monkeypatch.setenv(config.SCHEDULE_JITTER, "0s")
    app = fresh_app()
    install(app)
    assert app.conf.beat_schedule[ENTRY_NAME]["schedule"] == crontab(minute=15, hour=22)


def test_interval_and_explicit_schedules(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.SCHEDULE, "6h")
    monkeypatch.setenv(config.QUEUE, "maintenance")
    app = fresh_app()
    install(app)
    entry = app.conf.beat_schedule[ENTRY_NAME]
    assert entry["schedule"] == timedelta(hours=6)
    assert entry["options"] == {"expires": 3 * 3600, "queue": "maintenance"}
    app = fresh_app()
    install(app, schedule=crontab(minute=0, hour=5))
    assert app.conf.beat_schedule[ENTRY_NAME]["options"]["expires"] == 12 * 3600
    app = fresh_app()
    install(app, schedule=crontab(minute=0), expires=timedelta(minutes=20), queue="q2")
    entry = app.conf.beat_schedule[ENTRY_NAME]
    assert entry["schedule"] == crontab(minute=0) and entry["options"] == {"expires": 1200, "queue": "q2"}


@pytest.mark.parametrize(("name", "value", "message"), [
    (config.SCHEDULE, "3am", "PYWORKFLOW_RETENTION_SCHEDULE must be a daily time HH:MM"),
    (config.SCHEDULE, "25:00", "PYWORKFLOW_RETENTION_SCHEDULE must be a daily time HH:MM"),
    (config.SCHEDULE, "0s", "from 1s to 30d"),
    (config.SCHEDULE_JITTER, "2d", "PYWORKFLOW_RETENTION_SCHEDULE_JITTER: .*from 0s to 23h"),
    (config.SCHEDULE_JITTER, "soon", "PYWORKFLOW_RETENTION_SCHEDULE_JITTER: expected a duration"),
])
def test_invalid_schedule_settings_fail_at_install(env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                   name: str, value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=message):
        install(fresh_app())


def test_install_before_the_app_is_configured(env: dict[str, str]) -> None:
    app = Celery("late")

    class Conf:
        broker_url = "redis://127.0.0.1:6379/0"
        beat_schedule = {PYWORKFLOW_ENTRY: {"task": "pyworkflow.run_data_retention", "schedule": 3600}}

    install(app)
    assert not app.configured
    app.config_from_object(Conf)
    assert ENTRY_NAME in app.conf.beat_schedule
    assert PYWORKFLOW_ENTRY not in app.conf.beat_schedule


def test_install_replaces_pyworkflow_engines_own_entry(env: dict[str, str]) -> None:
    from pyworkflow.celery.app import create_celery_app

    app = create_celery_app(broker_url="redis://127.0.0.1:6379/0")
    assert PYWORKFLOW_ENTRY in app.conf.beat_schedule
    install(app)
    assert PYWORKFLOW_ENTRY not in app.conf.beat_schedule
    assert {ENTRY_NAME, "pyworkflow-streams-drain-scheduled"} <= set(app.conf.beat_schedule)
    kept = create_celery_app(broker_url="redis://127.0.0.1:6379/0")
    install(kept, replace_pyworkflow_entry=False)
    assert {ENTRY_NAME, PYWORKFLOW_ENTRY} <= set(kept.conf.beat_schedule)
