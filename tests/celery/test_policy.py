"""A shortened retention policy is held back by the real Celery task until an operator accepts it (issue 21).

A real worker process (``celery -A tests.celery.testapp worker``), a real Redis (broker, lock, state store) and
a real SQLite store; the operator's side is the command line in this process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.celery.conftest import CeleryEnv
from tests.ops.test_policy_cli import RUNS, seed_runs
from tests.services import clear_retention_env
from workflow_retention import cli, config
from workflow_retention.backends import by_url
from workflow_retention.celery import TASK_NAME

pytestmark = pytest.mark.slow
RESULT_TIMEOUT = 60
LONG = '[retention]\ndefault = "60d"\n[retention.status]\nfailed = "90d"\n'
SHORT = '[retention]\ndefault = "30d"\n[retention.status]\nfailed = "90d"\n'


def left(url: str) -> set[str]:
    backend = by_url(url)
    with backend:
        return set(backend._read_runs(set(RUNS)))


def status(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    cli.main(["status", "--json"])
    return json.loads(capsys.readouterr().out)


def test_a_shortened_policy_is_held_back_until_accepted(celery_env: CeleryEnv, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite://{tmp_path / 'pyworkflow.db'}"
    by_url(url).seed(seed_runs())
    policy = tmp_path / "policy.toml"
    policy.write_text(LONG)
    worker = celery_env.worker(celery_env.env(url, PYWORKFLOW_RETENTION_POLICY=str(policy)))
    worker.wait_for(r"\bready\.")
    client = celery_env.client()
    # the operator's command line: the same store, state store and lock key as the task
    clear_retention_env(monkeypatch)
    for name, value in {config.STORAGE_URL: url, config.STATE_URL: celery_env.redis_url,
                        config.LOCK_KEY: celery_env.lock_key, config.POLICY: str(policy)}.items():
        monkeypatch.setenv(name, value)

    first = client.send_task(TASK_NAME).get(timeout=RESULT_TIMEOUT)
    assert first["status"] == "purged", first
    # 60d: both billing runs (300d, 400d) and both audit runs (60d, 70d) go
    assert left(url) == {"run_orders_new", "run_orders_old", "run_orders_failed", "run_orders_pinned"}

    policy.write_text(SHORT)  # 30d: deletes sooner than the 60d the last purge applied
    second = client.send_task(TASK_NAME).get(timeout=RESULT_TIMEOUT)
    assert second["status"] == "purged", second
    assert {"run_orders_old", "run_orders_pinned"} <= left(url), "the shortened policy was applied unaccepted"
    assert any("held back" in w and "60d -> 30d" in w for w in second["warnings"]), second["warnings"]
    held = status(capsys)["policy_held_back"]
    assert held and "60d -> 30d" in held[0]
    cli.main(["status"])
    assert "HELD BACK" in capsys.readouterr().out

    assert cli.main(["policy", "accept"]) == 0
    third = client.send_task(TASK_NAME).get(timeout=RESULT_TIMEOUT)
    assert third["status"] == "purged" and third["counts"]["runs"] == 2, third
    assert left(url) == {"run_orders_new", "run_orders_failed"}  # failed: 90d
    assert status(capsys)["policy_held_back"] == []
    # applied now: the same policy runs again without a guard
    fourth = client.send_task(TASK_NAME).get(timeout=RESULT_TIMEOUT)
    assert fourth["status"] == "purged" and fourth["counts"].get("runs", 0) == 0
    assert not any("held back" in w for w in fourth.get("warnings", []))


def test_shard_tasks_apply_the_policy_and_the_pins(celery_env: CeleryEnv, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """PYWORKFLOW_RETENTION_SHARDS=2 on a file store: the policy and the pins travel in the shard messages."""
    url = f"file://{tmp_path / 'store'}"
    by_url(url).seed(seed_runs())
    policy = tmp_path / "policy.toml"
    policy.write_text(SHORT)
    clear_retention_env(monkeypatch)
    for name, value in {config.STORAGE_URL: url, config.STATE_URL: celery_env.redis_url,
                        config.LOCK_KEY: celery_env.lock_key, config.POLICY: str(policy)}.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["pin", "add", "run_orders_pinned", "--reason", "legal hold"]) == 0
    worker = celery_env.worker(celery_env.env(url, PYWORKFLOW_RETENTION_POLICY=str(policy),
                                              PYWORKFLOW_RETENTION_SHARDS="2"), concurrency=2)
    worker.wait_for(r"\bready\.")
    client = celery_env.client()
    dispatched = client.send_task(TASK_NAME).get(timeout=RESULT_TIMEOUT)
    assert dispatched["status"] == "dispatched" and dispatched["shards"] == 2, dispatched
    merged = client.AsyncResult(dispatched["callback"]).get(timeout=RESULT_TIMEOUT)
    assert merged["status"] == "purged", merged
    # 30d, failed 90d, the pin: everything older than 30 days goes but the failed run and the pinned one
    assert left(url) == {"run_orders_new", "run_orders_failed", "run_orders_pinned"}
    assert merged["counts"]["runs"] == len(RUNS) - 3
    assert merged["rules"] == {"default = 30d": len(RUNS) - 3}


def test_the_task_applies_the_emergency_rule_under_disk_pressure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 redis_service: Any,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The task body in this process (run_retention), a real Redis and SQLite store: size_above = 1B."""
    import uuid

    from tests.services import delete_keys
    from workflow_retention.celery import run_retention
    from workflow_retention.history import History

    url = f"sqlite://{tmp_path / 'pyworkflow.db'}"
    by_url(url).seed(seed_runs())
    policy = tmp_path / "policy.toml"
    policy.write_text(LONG + '[retention.pressure]\ndefault = "35d"\nsize_above = "1B"\n')
    key = f"wr-test-{uuid.uuid4().hex[:10]}:lock"
    clear_retention_env(monkeypatch)
    for name, value in {config.STORAGE_URL: url, config.LOCK_URL: redis_service.url, config.LOCK_KEY: key,
                        config.POLICY: str(policy)}.items():
        monkeypatch.setenv(name, value)
    try:
        result = run_retention(broker_url=redis_service.url)
        assert result["status"] == "purged", result
        assert left(url) == {"run_orders_new"}  # 35d for every rule, failed included
        assert "disk pressure" in caplog.text
        state = History.open(redis_service.url, key, store=url, source="t").state()
        assert "size_above" in state["pressure"]["why"]
    finally:
        delete_keys(redis_service.url, key.removesuffix(":lock"))


def test_install_checks_the_policy_and_sends_it_with_each_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery import Celery

    from workflow_retention.celery import install
    from workflow_retention.exceptions import ConfigurationError

    clear_retention_env(monkeypatch)
    app = Celery("wr_policy_test", broker="memory://")
    with pytest.raises(ConfigurationError, match=r"install\(policy=...\): retention.status: unknown key 'running'"):
        install(app, policy={"retention": {"default": "30d", "status": {"running": "1d"}}})
    policy = {"retention": {"default": "30d", "status": {"failed": "90d"}}}
    install(app, policy=policy)
    entry = next(e for e in app.conf.beat_schedule.values() if e["task"] == TASK_NAME)
    assert entry["kwargs"]["policy"] == policy


def test_a_pin_added_while_the_task_purges_stops_it_before_the_next_batch(
        monkeypatch: pytest.MonkeyPatch, redis_service: Any) -> None:
    """Review of issue 21: the task read the pins once, at its start; a legal hold placed during a long purge did not
    protect its run. Now the task stops at the next batch boundary (a failed task, nothing more deleted), and says
    why: the task fails with PinAdded and the run history (hence the metrics) records ``pin-added``, not a lost
    lease that would send an operator after the lock."""
    import uuid
    from datetime import UTC, datetime, timedelta

    from tests.services import delete_keys
    from workflow_retention import rules
    from workflow_retention.celery import run_retention
    from workflow_retention.exceptions import PinAdded
    from workflow_retention.history import History
    from workflow_retention.rules import RUN, StateStore
    from workflow_retention.seed import generate

    clear_retention_env(monkeypatch)
    uid = uuid.uuid4().hex[:10]
    url = f"memory://pins-{uid}"
    for name, value in {config.RETENTION_DAYS: "30", config.STORAGE_URL: url, config.LOCK_URL: redis_service.url,
                        config.LOCK_KEY: f"wr-test-{uid}:lock", config.BATCH_SIZE: "5"}.items():
        monkeypatch.setenv(name, value)
    by_url(url).seed(generate(60, now=datetime.now(UTC), seed=3))
    doomed: list[str] = []
    by_url(url).delete_old_runs(datetime.now(UTC) - timedelta(days=30), dry_run=True,
                                on_batch=lambda b: doomed.extend(b.run_ids))
    assert len(doomed) > 10, doomed
    held = doomed[-1]  # deleted last: a later batch
    real = rules.capped

    def capped(on_batch: Any, max_runs: Any) -> Any:
        inner = real(on_batch, max_runs)

        def hold_placed(info: Any) -> None:
            state = StateStore.open(redis_service.url, f"wr-test-{uid}:lock")
            state.pin(RUN, [held], "legal hold placed mid-purge")
            state.close()
            inner(info)
        return hold_placed

    monkeypatch.setattr(rules, "capped", capped)
    try:
        with pytest.raises(PinAdded, match="pin"):
            run_retention(broker_url=None)
        [record] = History.open(redis_service.url, f"wr-test-{uid}:lock", store=url, source="t").runs()
        assert record["outcome"] == "pin-added", record
        with by_url(url) as backend:
            assert held in backend._read_runs({held})
            assert set(backend._read_runs(set(doomed))) == set(doomed)  # stopped before the first batch went
    finally:
        delete_keys(redis_service.url, f"wr-test-{uid}")
