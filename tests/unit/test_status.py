"""status: the next scheduled run, and when a status is healthy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from celery.schedules import crontab

from workflow_retention import config
from workflow_retention.celery import daily_schedule
from workflow_retention.status import Status, next_run

NOW = datetime(2026, 6, 1, 12, 34, 56, tzinfo=UTC)


def test_a_daily_schedule_fires_next_at_its_minute() -> None:
    assert next_run(crontab(minute=17, hour=3), NOW) == datetime(2026, 6, 2, 3, 17, tzinfo=UTC)
    assert next_run(crontab(minute=40, hour=12), NOW) == datetime(2026, 6, 1, 12, 40, tzinfo=UTC)


def test_the_settings_schedule_includes_its_jitter() -> None:
    spec = config.load_schedule({config.SCHEDULE: "03:00", config.LOCK_KEY: "k"})
    due = next_run(daily_schedule(spec), NOW)
    assert due is not None and due.hour == 3 and due - NOW < timedelta(days=1)
    assert due == next_run(daily_schedule(spec), NOW)  # the same minute every time


def test_an_interval_counts_from_the_last_run_and_skips_missed_slots() -> None:
    every = timedelta(hours=6)
    assert next_run(every, NOW, NOW - timedelta(hours=1)) == NOW + timedelta(hours=5)
    assert next_run(every, NOW, NOW - timedelta(hours=13)) == NOW + timedelta(hours=5)
    assert next_run(every, NOW, None) is None  # beat keeps the last run in its own schedule file
    assert next_run(30.0, NOW, NOW) == NOW + timedelta(seconds=30)


def test_health_needs_a_success_within_max_age() -> None:
    status = Status(store="s", state_store="redis://r", now=NOW, max_age=timedelta(days=2))
    assert not status.healthy and status.reason() == "no successful purge on record"
    status.last_success_at = NOW - timedelta(days=2)
    assert status.healthy and status.reason() == ""
    status.last_success_at = NOW - timedelta(days=2, seconds=1)
    assert not status.healthy and "more than --max-age 2d" in status.reason()
    status.problems.append("cannot read the run history")
    assert not Status(store="s", state_store=None, now=NOW, max_age=timedelta(days=2)).healthy
