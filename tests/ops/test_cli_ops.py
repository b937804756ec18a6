"""The command line's history, ``status`` and ``metrics``, against a real Redis and a real SQLite store."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.services import clear_retention_env, delete_keys
from workflow_retention import cli, config
from workflow_retention.backends import by_url
from workflow_retention.history import History
from workflow_retention.lock import open_lease
from workflow_retention.seed import generate

NOW = datetime.now(UTC)


@pytest.fixture
def ops(monkeypatch: pytest.MonkeyPatch, redis_service: Any, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A seeded SQLite store, a state store on the test Redis, a lock key of this test's own."""
    clear_retention_env(monkeypatch)
    uid = uuid.uuid4().hex[:10]
    url = f"sqlite:///{tmp_path}/store.db"
    by_url(url).seed(generate(200, now=NOW, seed=11))
    values = {config.STORAGE_URL: url, config.STATE_URL: redis_service.url, config.LOCK_URL: redis_service.url,
              config.LOCK_KEY: f"wr-test-{uid}:lock", config.RETENTION_DAYS: "30"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    yield values
    delete_keys(redis_service.url, f"wr-test-{uid}")


def history(ops: dict[str, str]) -> History:
    return History.open(ops[config.STATE_URL], ops[config.LOCK_KEY], store=ops[config.STORAGE_URL], source="t")


def status_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = cli.main(["status", "--json", *argv])
    return code, json.loads(capsys.readouterr().out)


def test_status_is_unhealthy_until_a_purge_succeeds(ops: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, before = status_json(capsys)
    assert code == 1 and not before["healthy"] and before["reason"] == "no successful purge on record"
    assert cli.main(["purge", "--dry-run"]) == 0  # a dry run is not a purge: nothing recorded
    assert history(ops).runs() == []
    assert cli.main(["purge"]) == 0
    assert cli.main(["orphans"]) == 0
    capsys.readouterr()
    code, after = status_json(capsys)
    assert code == 0 and after["healthy"]
    assert [(r["operation"], r["source"], r["outcome"]) for r in after["runs"]] == \
        [("orphans", "cli", "succeeded"), ("purge", "cli", "succeeded")]
    assert after["runs"][1]["report"]["runs"] > 0
    assert after["lag"]["seconds"] is not None and after["lag"]["seconds"] < 60
    assert after["next_run_at"] and after["lock"]["holder"] is None


def test_status_exits_1_when_the_last_success_is_older_than_max_age(
        ops: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["purge"]) == 0
    capsys.readouterr()
    h = history(ops)
    h.client.hset(h.state_key, "last_success_at", (NOW - timedelta(days=3)).isoformat())
    code, stale = status_json(capsys)
    assert code == 1 and "more than --max-age 2d" in stale["reason"]
    code, ok = status_json(capsys, "--max-age", "4d")
    assert code == 0 and ok["healthy"]
    code = cli.main(["status", "--max-age", "1d"])
    captured = capsys.readouterr()
    assert code == 1 and "UNHEALTHY" in captured.out and "ERROR" in captured.err


def test_status_shows_a_failed_run_and_the_lease_holder(ops: dict[str, str],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    h = history(ops)
    h.finish(h.start("purge"), "failed", error="StorageError: the store went away")
    lease = open_lease(ops[config.LOCK_URL], ops[config.LOCK_KEY], timedelta(seconds=30))
    assert lease.acquire()
    try:
        assert cli.main(["status"]) == 1
    finally:
        lease.release()
    out = capsys.readouterr().out
    assert "failed" in out and "the store went away" in out
    assert lease.token in out


def test_status_without_a_state_store_says_so(ops: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(config.STATE_URL)
    monkeypatch.delenv(config.LOCK_URL)
    assert cli.main(["purge"]) == 0  # recorded nowhere, and the purge is fine
    capsys.readouterr()
    code, status = status_json(capsys)
    assert code == 1 and status["state_store"] is None
    assert config.STATE_URL in status["reason"]


def test_a_bad_max_age_is_a_usage_error(ops: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["status", "--max-age", "soon"])
    assert exit_.value.code == 2 and "--max-age" in capsys.readouterr().err


def test_metrics_prints_the_text_format_with_the_history(ops: dict[str, str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["purge"]) == 0
    deleted = history(ops).totals()["runs_deleted"]
    capsys.readouterr()
    assert cli.main(["metrics", "--days", "30"]) == 0
    text = capsys.readouterr().out
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for family in text_string_to_metric_families(text) for s in family.samples}
    store = (("store", ops[config.STORAGE_URL]),)
    assert got[("workflow_retention_runs_deleted_total", store)] == deleted
    assert got[("workflow_retention_expired_runs", store)] == 0
    assert got[("workflow_retention_lag_seconds", store)] < 60
    assert got[("workflow_retention_last_run_success", (("operation", "purge"), *store))] == 1
    assert got[("workflow_retention_store_records", (("kind", "runs"), *store))] > 0
    assert history(ops).last_audit()["expired_runs"] == 0


def test_metrics_without_a_state_store_has_gauges_only(ops: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(config.STATE_URL)
    monkeypatch.delenv(config.LOCK_URL)
    assert cli.main(["metrics"]) == 0
    text = capsys.readouterr().out
    assert "workflow_retention_store_records" in text and "_total" not in text
    assert "workflow_retention_expired_runs" in text


def test_metrics_with_an_unreachable_state_store_fails_loudly(ops: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(config.STATE_URL, "redis://127.0.0.1:1/0")
    assert cli.main(["metrics"]) == 1
    captured = capsys.readouterr()
    assert "ERROR" in captured.err and "workflow_retention_store_records" in captured.out


def test_check_pings_a_separate_state_store(ops: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(config.STATE_URL, ops[config.STATE_URL].replace("/0", "/1"))
    assert cli.main(["check"]) == 0
    assert "run history: OK" in capsys.readouterr().out
    monkeypatch.setenv(config.STATE_URL, "redis://127.0.0.1:1/0")
    assert cli.main(["check"]) == 1
    captured = capsys.readouterr()
    assert "run history: FAILED" in captured.out and "ERROR" in captured.err
