"""Metrics: what the collector exposes, the lag figure, batch timing, pushing, and the new settings."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from workflow_retention import config, metrics
from workflow_retention.exceptions import ConfigurationError, StorageError
from workflow_retention.report import OrphanReport, PurgeReport

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
STORE = "postgresql://app:***@db:5432/app"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the text format, keyed by name and sorted labels (parsed by prometheus_client)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def purge_report() -> PurgeReport:
    report = PurgeReport(backend=STORE, dry_run=False, cutoff=NOW - timedelta(days=30))
    report.merge({"runs": 12, "events": 40, "steps": 7})
    report.held, report.changed, report.skipped = 2, 1, 3
    return report


def test_counters_come_from_the_totals_and_the_histogram_is_cumulative() -> None:
    observations = metrics.Observations()
    for seconds in (0.004, 0.2, 0.3, 500.0):
        observations.observe(seconds)
    totals = metrics.increments(metrics.PURGE, metrics.SUCCEEDED, purge_report(), observations)
    orphans = OrphanReport(backend=STORE, dry_run=False)
    orphans.merge({"events": 5})
    for name, amount in metrics.increments(metrics.ORPHANS, metrics.LEASE_LOST, orphans, None).items():
        totals[name] = totals.get(name, 0) + amount
    got = samples(metrics.text(metrics.registry_for(metrics.Snapshot(store=STORE, totals=totals))))
    s = (("store", STORE),)
    assert got[("workflow_retention_runs_deleted_total", s)] == 12
    assert got[("workflow_retention_runs_held_total", s)] == 2
    assert got[("workflow_retention_runs_changed_total", s)] == 1
    assert got[("workflow_retention_records_skipped_total", s)] == 3
    assert got[("workflow_retention_data_deleted_total", (("kind", "events"), *s))] == 40
    assert ("workflow_retention_data_deleted_total", (("kind", "runs"), *s)) not in got  # runs have their own
    assert got[("workflow_retention_orphans_deleted_total", (("kind", "events"), *s))] == 5
    assert got[("workflow_retention_failures_total", (("operation", "orphans"), ("outcome", "lease-lost"), *s))] == 1
    bucket = "workflow_retention_batch_duration_seconds_bucket"
    assert got[(bucket, (("le", "0.01"), ("operation", "purge"), *s))] == 1
    assert got[(bucket, (("le", "0.25"), ("operation", "purge"), *s))] == 2
    assert got[(bucket, (("le", "0.5"), ("operation", "purge"), *s))] == 3
    assert got[(bucket, (("le", "120.0"), ("operation", "purge"), *s))] == 3
    assert got[(bucket, (("le", "+Inf"), ("operation", "purge"), *s))] == 4
    assert got[("workflow_retention_batch_duration_seconds_count", (("operation", "purge"), *s))] == 4
    assert got[("workflow_retention_batch_duration_seconds_sum", (("operation", "purge"), *s))] == \
        pytest.approx(500.504)


def test_a_dry_run_adds_nothing_and_a_failure_counts_once() -> None:
    dry = purge_report()
    dry.dry_run = True
    assert metrics.increments(metrics.PURGE, metrics.SUCCEEDED, dry, None) == {}
    assert metrics.increments(metrics.PURGE, metrics.FAILED, None, None) == {"failures|purge|failed": 1}


def test_without_totals_there_are_no_counters_and_the_gauges_are_there() -> None:
    snapshot = metrics.Snapshot(
        store=STORE, last_success_at=NOW.timestamp(), clean_at=NOW.timestamp(),
        last_runs={"purge": {"finished_at": NOW.timestamp(), "duration_s": 4.5, "outcome": "failed"}},
        audit={"generated_at": NOW.isoformat(), "kinds": {"runs": [10, 2048]}, "runs_by_status": {"running": 3},
               "expired_runs": 7},
        lag=metrics.Lag(90.0, "test"))
    text = metrics.text(metrics.registry_for(snapshot))
    got = samples(text)
    s = (("store", STORE),)
    assert "_total" not in text
    assert got[("workflow_retention_last_success_timestamp_seconds", s)] == NOW.timestamp()
    assert got[("workflow_retention_lag_seconds", s)] == 90.0
    assert got[("workflow_retention_last_duration_seconds", (("operation", "purge"), *s))] == 4.5
    assert got[("workflow_retention_last_run_success", (("operation", "purge"), *s))] == 0
    assert got[("workflow_retention_store_records", (("kind", "runs"), *s))] == 10
    assert got[("workflow_retention_store_bytes", (("kind", "runs"), *s))] == 2048
    assert got[("workflow_retention_store_runs", (("status", "running"), *s))] == 3
    assert got[("workflow_retention_expired_runs", s)] == 7


def test_metrics_never_touch_the_global_registry() -> None:
    before = set(REGISTRY._names_to_collectors)
    registry = metrics.registry_for(metrics.Snapshot(store=STORE, totals={}))
    assert registry is not REGISTRY
    assert set(REGISTRY._names_to_collectors) == before


def test_the_store_label_masks_the_password() -> None:
    assert metrics.store_label("postgresql://app:s3cret-pw@db:5432/app") == "postgresql://app:***@db:5432/app"


def test_batch_timer_times_from_boundary_to_boundary_and_calls_on() -> None:
    seen: list[int] = []
    timer = metrics.BatchTimer(seen.append)
    timer(1)
    time.sleep(0.06)
    timer(2)
    observed = timer.finish()
    assert seen == [1, 2]
    assert observed.count == 2
    assert 0.05 <= observed.total < 5
    assert metrics.BatchTimer().finish().count == 0  # no batch, no observation


# -- the lag ---------------------------------------------------------------------------------------------


def test_lag_is_the_time_since_the_store_last_held_no_expired_run() -> None:
    lag = metrics.retention_lag(NOW, 30, NOW - timedelta(hours=5), None)
    assert lag.seconds == 5 * 3600
    assert metrics.retention_lag(NOW, 30, NOW + timedelta(seconds=1), None).seconds == 0


def test_a_clean_audit_newer_than_the_last_purge_sets_the_lag_to_its_cutoff() -> None:
    audit = {"generated_at": (NOW - timedelta(minutes=10)).isoformat(), "complete": True, "expired_runs": 0,
             "clean_at": (NOW - timedelta(minutes=10)).isoformat()}
    assert metrics.retention_lag(NOW, 30, NOW - timedelta(days=3), audit).seconds == 600


def test_an_audit_that_found_expired_runs_and_no_purge_bounds_the_lag_by_its_oldest_bucket() -> None:
    audit = {"generated_at": NOW.isoformat(), "complete": True, "expired_runs": 4,
             "runs_by_age": {"<1d": 3, "30-90d": 4}}
    lag = metrics.retention_lag(NOW, 30, None, audit)
    assert lag.seconds == (90 - 30) * 86400
    assert "30-90d" in lag.basis
    older = {**audit, "runs_by_age": {">365d": 1}}
    assert metrics.retention_lag(NOW, 30, None, older).seconds is None
    assert metrics.retention_lag(NOW, 30, None, None).seconds is None


def test_an_audit_that_read_the_oldest_terminal_run_gives_the_lag_exactly() -> None:
    audit = {"generated_at": (NOW - timedelta(hours=1)).isoformat(), "complete": True, "expired_runs": 4,
             "runs_by_age": {"30-90d": 4}, "oldest_terminal": (NOW - timedelta(days=40)).isoformat()}
    lag = metrics.retention_lag(NOW, 30, None, audit)
    assert lag.seconds == 10 * 86400 and "oldest terminal run" in lag.basis
    assert metrics.retention_lag(NOW, 60, None, audit).seconds == 0  # not older than that cutoff


def test_an_incomplete_audit_never_claims_the_store_is_clean() -> None:
    audit = {"generated_at": NOW.isoformat(), "complete": False, "expired_runs": 0, "clean_at": NOW.isoformat()}
    assert metrics.retention_lag(NOW, 30, None, audit).seconds is None


# -- pushing and settings ------------------------------------------------------------------------------------


def test_a_push_that_fails_names_the_gateway_without_its_password() -> None:
    registry = metrics.registry_for(metrics.Snapshot(store=STORE))
    with pytest.raises(StorageError) as caught:
        metrics.push("http://user:Pw-secret-9@127.0.0.1:1", registry, STORE, timeout=2)
    assert "Pw-secret-9" not in str(caught.value)
    assert "127.0.0.1:1" in str(caught.value)


@pytest.mark.parametrize("raw", ["pushgateway:9091", "ftp://host:21", "http://", "http://host:9091?x=1",
                                 "http://h:99999"])
def test_a_bad_pushgateway_url_names_the_setting(raw: str) -> None:
    env = {config.PUSHGATEWAY_URL: raw}
    with pytest.raises(ConfigurationError, match=config.PUSHGATEWAY_URL):
        config.load_settings(env)
    lenient = config.load_settings(env, strict=False)  # the command line only warns: the task uses it
    assert lenient.pushgateway_url is None
    assert any(config.PUSHGATEWAY_URL in p for p in lenient.problems)


def test_state_url_must_be_redis_and_names_the_setting() -> None:
    with pytest.raises(ConfigurationError, match=config.STATE_URL):
        config.load_settings({config.STATE_URL: "http://x:1"}, strict=False)
    settings = config.load_settings({config.STATE_URL: "redis://h:6379/3"})
    assert settings.cli_history_url == "redis://h:6379/3"
    assert settings.history_url_for("redis://broker:6379/0") == "redis://h:6379/3"


def test_the_command_line_records_history_only_where_told() -> None:
    assert config.load_settings({}).cli_history_url is None  # the default broker is not a choice
    settings = config.load_settings({config.LOCK_URL: "redis://lock:6379/0"})
    assert settings.cli_history_url == "redis://lock:6379/0"
    assert config.load_settings({}).history_url_for("redis://broker:6379/0") == "redis://broker:6379/0"


def test_startup_audit_is_a_bounded_duration() -> None:
    assert config.load_settings({config.STARTUP_AUDIT: "0s"}).startup_audit == timedelta(0)
    with pytest.raises(ConfigurationError, match=config.STARTUP_AUDIT):
        config.load_settings({config.STARTUP_AUDIT: "2h"})


def test_new_url_settings_are_scrubbed() -> None:
    found = config.secrets({config.PUSHGATEWAY_URL: "https://u:Gw-pass-1@gw:9091",
                            config.STATE_URL: "redis://:St-pass-2@r:6379/0"})
    assert "Gw-pass-1" in found and "St-pass-2" in found


def test_expired_runs_from_an_audit_older_than_the_last_success_are_not_exported() -> None:
    audit = {"generated_at": NOW.isoformat(), "kinds": {}, "expired_runs": 7}
    before = metrics.text(metrics.registry_for(metrics.Snapshot(store=STORE, audit=audit,
                                                                last_success_at=NOW.timestamp() - 60)))
    after = metrics.text(metrics.registry_for(metrics.Snapshot(store=STORE, audit=audit,
                                                               last_success_at=NOW.timestamp() + 60)))
    assert "workflow_retention_expired_runs{" in before
    assert "workflow_retention_expired_runs{" not in after
    assert "workflow_retention_audit_timestamp_seconds{" in after


def test_the_failures_help_names_every_kind_of_stop() -> None:
    """Review of 8f07076: failures_total{outcome="pin-added"} is a legal hold honoured, not a lock problem; its HELP
    said "Runs that failed or stopped on a lost lease"."""
    text = metrics.text(metrics.registry_for(metrics.Snapshot(store=STORE, totals={"failures|purge|pin-added": 1.0})))
    [help_line] = [line for line in text.splitlines() if line.startswith("# HELP workflow_retention_failures")]
    assert "pin" in help_line and "lease" in help_line, help_line
