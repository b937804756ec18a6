"""Retention policies on the command line (issue 21): PYWORKFLOW_RETENTION_POLICY, pins in the state store,
``policy show|accept``, PYWORKFLOW_RETENTION_MAX_RUNS; a real Redis and a real SQLite store."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.services import clear_retention_env, delete_keys
from workflow_retention import cli, config
from workflow_retention.backends import by_url
from workflow_retention.exceptions import StorageError
from workflow_retention.rules import StateStore
from workflow_retention.seed import SeedRun, generate

NOW = datetime.now(UTC)
POLICY = """
[retention]
default = "30d"
min = "1d"
keep_last = 1

[retention.status]
failed = "90d"

[retention.workflow]
"billing.*" = "730d"
"""
#: run id -> (workflow, status, age in days)
RUNS = {
    "run_orders_new": ("orders", "completed", 2),
    "run_orders_old": ("orders", "completed", 40),
    "run_orders_failed": ("orders", "failed", 40),
    "run_orders_pinned": ("orders", "completed", 50),
    "run_billing_old": ("billing.invoice", "completed", 400),
    "run_billing_new": ("billing.invoice", "completed", 300),
    "run_audit_old": ("audit.trail", "completed", 60),
    "run_audit_older": ("audit.trail", "completed", 70),
}


def seed_runs() -> list[SeedRun]:
    template = next(generate(1, now=NOW))
    runs = []
    for run_id, (workflow, status, age) in RUNS.items():
        when = (NOW - timedelta(days=age)).isoformat()
        runs.append(replace(template, run={**template.run, "run_id": run_id, "workflow_name": workflow,
                                           "status": status, "created_at": when, "updated_at": when,
                                           "completed_at": when}, events=[], steps=[], hooks=[], checkpoints={}))
    return runs


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch, redis_service: Any, tmp_path: Path) -> Iterator[dict[str, str]]:
    clear_retention_env(monkeypatch)
    uid = uuid.uuid4().hex[:10]
    url = f"sqlite:///{tmp_path}/store.db"
    by_url(url).seed(seed_runs())
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    values = {config.STORAGE_URL: url, config.STATE_URL: redis_service.url, config.LOCK_URL: redis_service.url,
              config.LOCK_KEY: f"wr-test-{uid}:lock", config.POLICY: str(policy)}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    yield values
    delete_keys(redis_service.url, f"wr-test-{uid}")


def left(store: dict[str, str]) -> set[str]:
    backend = by_url(store[config.STORAGE_URL])
    with backend:
        return set(backend._read_runs(set(RUNS)))


def test_the_policy_and_the_pins_decide_a_cli_purge(store: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pin", "add", "run_orders_pinned", "--reason", "INC-42 investigation"]) == 0
    assert cli.main(["pin", "add", "--workflow", "audit.*", "--reason", "legal hold"]) == 0
    capsys.readouterr()
    assert cli.main(["pin", "ls", "--json"]) == 0
    pins = json.loads(capsys.readouterr().out)
    assert [(p["kind"], p["target"], p["reason"]) for p in pins] == [
        ("run", "run_orders_pinned", "INC-42 investigation"), ("workflow", "audit.*", "legal hold")]

    assert cli.main(["purge", "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert cli.main(["purge", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    # billing_old: 730d keeps it; orders_new: recent and keep_last; orders_failed: 90d; the pins
    assert left(store) == set(RUNS) - {"run_orders_old"}
    assert done["counts"]["runs"] == dry["counts"]["runs"] == 1
    assert dry["rules"] == done["rules"] == {"default = 30d": 1}  # what each rule deletes

    assert cli.main(["pin", "rm", "run_orders_pinned", "--workflow", "audit.*"]) == 0
    assert cli.main(["purge"]) == 0
    # unpinned: orders_pinned goes; audit keeps its newest by keep_last = 1
    assert left(store) == set(RUNS) - {"run_orders_old", "run_orders_pinned", "run_audit_older"}


def test_explicit_days_still_honour_the_pins(store: dict[str, str]) -> None:
    assert cli.main(["pin", "add", "run_orders_old", "--reason", "hold"]) == 0
    assert cli.main(["purge", "--days", "30"]) == 0
    assert "run_orders_old" in left(store) and "run_orders_pinned" not in left(store)


@pytest.mark.parametrize(("policy", "key"), [
    ('[retention]\ndefault = "0d"\n', "retention.default"),
    ('[retention]\ndefault = "30d"\n[retention.status]\nrunning = "5d"\n', "unknown key 'running'"),
    ('[retention]\ndefault = "30d"\nkeep_last = -1\n', "retention.keep_last"),
    ('[retention]\ndefault = "30d"\n[retention.workflow]\n"x" = "2x"\n', "retention.workflow.'x'"),
    ('[retention\n', "is not valid TOML"),
])
def test_a_bad_policy_is_exit_2_naming_the_key_before_any_store_is_opened(
        store: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        policy: str, key: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(policy)
    monkeypatch.setenv(config.POLICY, str(bad))
    monkeypatch.setenv(config.STORAGE_URL, f"sqlite:///{tmp_path}/no/such/dir/store.db")
    for argv in (["purge"], ["purge", "--dry-run"], ["audit"], ["pin", "ls"]):
        assert cli.main(argv) == 2
        assert key in caplog.text and config.POLICY in caplog.text
        caplog.clear()
    assert not (tmp_path / "no").exists()


def test_max_runs_stops_the_purge_at_a_batch_boundary_loudly(store: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(config.MAX_RUNS, "1")
    assert cli.main(["purge", "--days", "30", "--batch-size", "1"]) == 1
    assert "PYWORKFLOW_RETENTION_MAX_RUNS=1" in caplog.text
    # one batch of one run went; the cap stopped the next one
    assert len(set(RUNS) - left(store)) == 1


def test_policy_show_and_accept(store: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    state = StateStore.open(store[config.STATE_URL], store[config.LOCK_KEY])
    from workflow_retention.policy import parse_policy
    state.record_applied(parse_policy({"retention": {"default": "60d"}}))
    assert cli.main(["policy", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["held_back"] and "60d -> 30d" in shown["held_back"][0]
    assert cli.main(["policy", "accept"]) == 0
    capsys.readouterr()
    assert cli.main(["policy", "show", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["held_back"] == []
    state.close()


PRESSURE = """
[retention]
default = "60d"
[retention.status]
failed = "90d"
[retention.pressure]
default = "35d"
{trigger}
"""


@pytest.mark.parametrize("trigger", ['free_below = "100%"', 'size_above = "1B"'])
def test_disk_pressure_applies_the_emergency_rule_and_is_dropped_when_it_is_gone(
        store: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str], trigger: str) -> None:
    policy = tmp_path / "pressure.toml"
    monkeypatch.setenv(config.POLICY, str(policy))
    policy.write_text(PRESSURE.format(trigger='free_below = "0.0001%"'))  # no pressure: 60d
    assert cli.main(["purge"]) == 0
    assert left(store) == set(RUNS) - {"run_billing_old", "run_billing_new", "run_audit_old", "run_audit_older"}
    assert "disk pressure" not in caplog.text

    policy.write_text(PRESSURE.format(trigger=trigger))  # under pressure: every rule at most 35d (failed too)
    assert cli.main(["purge", "--dry-run"]) == 0
    assert "disk pressure" in caplog.text and "emergency retention 35d" in caplog.text
    assert cli.main(["purge"]) == 0
    assert left(store) == {"run_orders_new"}
    capsys.readouterr()
    cli.main(["status", "--json"])
    assert "emergency" not in (shown := json.loads(capsys.readouterr().out)) and shown["disk_pressure"]
    assert cli.main(["metrics"]) in (0, 1)
    assert re.search(r"^workflow_retention_disk_pressure\{[^}]*\} 1\.0$", capsys.readouterr().out, re.M)

    policy.write_text(PRESSURE.format(trigger='free_below = "0.0001%"'))  # the pressure is gone
    caplog.clear()
    assert cli.main(["purge"]) == 0
    assert "disk pressure" not in caplog.text
    capsys.readouterr()
    cli.main(["status", "--json"])
    assert json.loads(capsys.readouterr().out)["disk_pressure"] is None


@pytest.mark.parametrize(("pressure", "key"), [
    ('[retention.pressure]\nfree_below = "10%"\n', "retention.pressure.default is required"),
    ('[retention.pressure]\ndefault = "7d"\n', "free_below"),
    ('[retention.pressure]\ndefault = "12h"\nfree_below = "10%"\n', "retention.pressure.default"),
    ('[retention.pressure]\ndefault = "7d"\nfree_below = "110%"\n', "retention.pressure.free_below"),
    ('[retention.pressure]\ndefault = "7d"\nsize_above = "lots"\n', "retention.pressure.size_above"),
])
def test_a_bad_pressure_rule_names_its_key(store: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture, pressure: str, key: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[retention]\ndefault = "30d"\n' + pressure)
    monkeypatch.setenv(config.POLICY, str(bad))
    assert cli.main(["purge"]) == 2 and key in caplog.text


def test_an_unreadable_applied_policy_fails_the_guard_until_accepted(store: dict[str, str]) -> None:
    from workflow_retention.policy import load_policy
    from workflow_retention.rules import guard

    state = StateStore.open(store[config.STATE_URL], store[config.LOCK_KEY])
    configured = load_policy(store[config.POLICY])
    state.client.hset(state.policy_key, "applied", "{not json")
    with pytest.raises(StorageError, match="cannot be read"):
        guard(configured, state)
    state.accept(configured)
    assert guard(configured, state).policy == configured and not guard(configured, state).held
    state.close()


def test_a_sharded_cli_purge_applies_the_policy_and_the_pins(store: dict[str, str]) -> None:
    """purge --shards 4 --workers 2: the policy and the pins reach the shard processes as text."""
    assert cli.main(["pin", "add", "run_orders_pinned", "--reason", "hold"]) == 0
    assert cli.main(["purge", "--shards", "4", "--workers", "2"]) == 0
    # orders_old (30d) and audit_older (keep_last 1 keeps audit_old) go; the pin, failed (90d), billing stay
    assert left(store) == set(RUNS) - {"run_orders_old", "run_audit_older"}
    state = StateStore.open(store[config.STATE_URL], store[config.LOCK_KEY])
    assert state.applied() is not None  # recorded for the Celery task's guard
    state.close()


def test_a_policy_path_that_is_not_a_small_utf8_file_is_exit_2_and_never_blocks(
        store: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Review of issue 21: a non-UTF-8 file was a UnicodeDecodeError (exit 1, the setting not named), a FIFO
    blocked the command forever, a huge file was read whole into memory."""
    import os
    import signal

    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.toml"
    huge.write_bytes(b'[retention]\ndefault = "30d"\n' + b"#" * (2 * 1024 * 1024) + b"\n")
    cases = {"non-UTF-8": (tmp_path / "latin1.toml", "UTF-8"), "FIFO": (fifo, "not a regular file"),
             "directory": (tmp_path, "not a regular file"), "huge": (huge, "larger than")}
    (tmp_path / "latin1.toml").write_bytes(b'[retention]\ndefault = "30d"\n# caf\xe9\n')
    monkeypatch.setenv(config.STORAGE_URL, f"sqlite:///{tmp_path}/no/such/dir/store.db")

    def hang(*_: Any) -> None:
        raise TimeoutError("the policy file's open blocked")

    previous = signal.signal(signal.SIGALRM, hang)
    try:
        for what, (path, message) in cases.items():
            monkeypatch.setenv(config.POLICY, str(path))
            caplog.clear()
            signal.alarm(5)
            try:
                assert cli.main(["purge", "--dry-run"]) == 2, what
            finally:
                signal.alarm(0)
            assert message in caplog.text and config.POLICY in caplog.text, (what, caplog.text)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert not (tmp_path / "no").exists()


def test_a_purge_under_disk_pressure_records_the_configured_policy_not_the_emergency_one(
        store: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of issue 21: the command line recorded the emergency rule as the applied policy, so the guard then
    compared a shortened policy with the emergency one and let it through unconfirmed."""
    from workflow_retention.policy import load_policy
    from workflow_retention.rules import guard

    policy = tmp_path / "pressure.toml"
    policy.write_text(PRESSURE.format(trigger='size_above = "1B"'))  # under pressure: 35d
    monkeypatch.setenv(config.POLICY, str(policy))
    assert cli.main(["purge"]) == 0
    state = StateStore.open(store[config.STATE_URL], store[config.LOCK_KEY])
    try:
        assert state.applied() == load_policy(policy)
        shorter = tmp_path / "shorter.toml"
        shorter.write_text('[retention]\ndefault = "40d"\n[retention.status]\nfailed = "90d"\n')
        held = guard(load_policy(shorter), state)
        assert held.held and "60d -> 40d" in held.held[0]
    finally:
        state.close()


def test_a_purge_that_cannot_read_the_pins_refuses_or_says_so(
        store: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Review of issue 21: without a state store configured, a command-line purge read no pins and deleted a
    pinned run without a word. With a policy it now refuses (exit 2, nothing read) unless --no-pins; by the days
    setting alone (as before issue 21, when no pin can have been written by this configuration) it purges as before;
    with --days or --older-than beside a policy, with a WARNING that pins were not read."""
    assert cli.main(["pin", "add", "run_orders_old", "--reason", "legal hold"]) == 0
    monkeypatch.delenv(config.STATE_URL)
    monkeypatch.delenv(config.LOCK_URL)
    assert cli.main(["purge"]) == 2
    assert config.STATE_URL in caplog.text and "--no-pins" in caplog.text
    assert left(store) == set(RUNS)
    caplog.clear()
    assert cli.main(["purge", "--dry-run"]) == 0  # a preview is not refused, but says so
    assert "pins" in caplog.text and "WARNING" in caplog.text
    caplog.clear()
    assert cli.main(["purge", "--no-pins"]) == 0
    assert "run_orders_old" not in left(store) and "not read" in caplog.text

    caplog.clear()
    assert cli.main(["purge", "--days", "30"]) == 0  # explicit: purged, and said at WARNING
    assert "pins and legal holds not read" in caplog.text and "WARNING" in caplog.text


def test_pin_add_of_a_run_the_store_does_not_hold_is_kept_and_said(
        store: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Review of issue 21: a mistyped run id was pinned without a word (the run meant stayed unprotected). It is
    still pinned (a pin never waits for the store), with a WARNING naming it; so is a pin rm of no pin."""
    assert cli.main(["pin", "add", "run_orders_old", "run_ordres_old", "--reason", "legal hold"]) == 0
    assert "run_ordres_old" in caplog.text and "WARNING" in caplog.text and "run_orders_old'" not in caplog.text
    assert "pinned 2 new of 2" in capsys.readouterr().out
    caplog.clear()
    monkeypatch.setenv(config.STORAGE_URL, f"sqlite:///{tmp_path}/no/such/dir/store.db")  # the store is down
    assert cli.main(["pin", "add", "run_x", "--reason", "hold"]) == 0  # pinned all the same
    assert "cannot check" in caplog.text
    caplog.clear()
    assert cli.main(["pin", "rm", "run_nope", "run_x"]) == 0
    assert "unpinned 1 of 2" in capsys.readouterr().out and "run_nope" in caplog.text


def test_a_pin_added_while_a_purge_runs_stops_it_before_the_next_batch(
        store: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Review of issue 21: pins were read once, when the purge started, so a legal hold placed during a long purge
    did not protect its run for the rest of it. A pin added meanwhile now stops the purge at the next batch
    boundary (exit 3, STOPPED), before that batch is deleted; the next purge honours it."""
    from workflow_retention import rules
    from workflow_retention.rules import RUN

    real = rules.capped
    added: list[int] = []

    def capped(on_batch: Any, max_runs: Any) -> Any:
        inner = real(on_batch, max_runs)

        def hold_placed(info: Any) -> None:
            added.append(info.index)
            if len(added) == 2:  # an operator pins a run the purge would delete later, as the 2nd batch is approved
                state = StateStore.open(store[config.STATE_URL], store[config.LOCK_KEY])
                state.pin(RUN, ["run_orders_pinned"], "legal hold placed mid-purge")
                state.close()
            inner(info)
        return hold_placed

    monkeypatch.setattr(rules, "capped", capped)
    assert cli.main(["purge", "--batch-size", "1"]) == cli.EXIT_STOPPED
    assert "STOPPED" in capsys.readouterr().out and len(added) == 2
    assert "run_orders_pinned" in left(store) and len(set(RUNS) - left(store)) == 1  # the first batch went
    from workflow_retention.history import History

    history = History.open(store[config.STATE_URL], store[config.LOCK_KEY], store=store[config.STORAGE_URL], source="t")
    assert history.runs()[0]["outcome"] == "pin-added"  # a legal hold honoured, not a lost lease
    monkeypatch.setattr(rules, "capped", real)
    assert cli.main(["purge"]) == 0
    assert left(store) == set(RUNS) - {"run_orders_old", "run_audit_older"}


def test_pins_of_another_store_are_never_read_or_written_under_this_ones_key(
        store: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Review of issue 21: with PYWORKFLOW_RETENTION_LOCK_KEY set (it names one store's lock, pins and guard),
    ``--storage`` naming another store used that key all the same: ``pin add --storage B`` wrote B's legal hold
    among A's pins (B's own purges never saw it) and ``purge --storage B`` applied A's pins to B. Refused now."""
    other = f"sqlite:///{tmp_path}/other.db"
    by_url(other).seed(seed_runs())
    for argv in (["pin", "add", "run_orders_old", "--storage", other, "--reason", "hold"],
                 ["pin", "ls", "--storage", other], ["purge", "--storage", other],
                 ["policy", "accept", "--storage", other]):
        caplog.clear()
        assert cli.main(argv) == 2, argv
        assert config.LOCK_KEY in caplog.text, argv
    assert cli.main(["pin", "ls", "--storage", store[config.STORAGE_URL]]) == 0  # the store the key names
    with by_url(other) as backend:
        assert set(backend._read_runs(set(RUNS))) == set(RUNS)


def test_a_purge_whose_state_store_is_down_deletes_nothing(
        store: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Pins cannot be read: the purge fails (exit 1, one ERROR line, no password), by the policy and by --days."""
    monkeypatch.setenv(config.STATE_URL, "redis://:Sup3rSecretPw@127.0.0.1:1/0")
    monkeypatch.setenv(config.LOCK_URL, "redis://:Sup3rSecretPw@127.0.0.1:1/0")
    for argv in (["purge"], ["purge", "--days", "30"], ["purge", "--no-pins"], ["audit"]):
        caplog.clear()
        assert cli.main(argv) == 1, argv
        assert "pins" in caplog.text and "Sup3rSecretPw" not in caplog.text, argv
    assert left(store) == set(RUNS)


def test_an_emergency_rule_shorter_than_the_minimum_age_is_refused(
        store: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Review of issue 21: PYWORKFLOW_RETENTION_MIN_AGE (the blast-radius guard) was checked against the policy's
    rules only; under disk pressure an emergency rule of 10 minutes (min lowered to 0s) deleted runs that had just
    finished, without --allow-recent-cutoff."""
    policy = tmp_path / "emergency.toml"
    policy.write_text('[retention]\ndefault = "30d"\nmin = "0s"\n[retention.pressure]\ndefault = "10m"\n'
                      'free_below = "100%"\n')
    monkeypatch.setenv(config.POLICY, str(policy))
    assert cli.main(["purge"]) == 2
    assert config.MIN_AGE in caplog.text and left(store) == set(RUNS)
    assert cli.main(["purge", "--allow-recent-cutoff"]) == 0


def test_pin_text_cannot_forge_lines_in_pin_ls(store: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    """Review of issue 21: a reason or a pattern with a line break printed as extra lines of ``pin ls`` (a forged
    pin an operator would trust). A pattern with a control character is refused; a reason's become spaces."""
    assert cli.main(["pin", "add", "--workflow", "a\nrun      run_forged", "--reason", "x"]) == 2
    assert cli.main(["pin", "add", "run_orders_old", "--reason", "hold\nrun      run_forged  pinned now: fake"]) == 0
    capsys.readouterr()
    assert cli.main(["pin", "ls"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "run_orders_old" in lines[0], lines


def test_days_given_beside_a_policy_says_it_replaces_it(store: dict[str, str],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Review of issue 21: ``purge --days 30`` beside a policy silently dropped its workflow rules and keep_last
    (the 730-day billing runs went at 30 days). It still does what it is told, and says so at WARNING."""
    assert cli.main(["purge", "--days", "30", "--dry-run"]) == 0
    assert "WARNING" in caplog.text and "replaces the retention policy" in caplog.text
