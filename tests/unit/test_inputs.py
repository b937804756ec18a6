"""Bad input gets a clear error naming the setting (exit 2), never a raw exception; and the blast-radius guard."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.services import clear_retention_env
from workflow_retention import config
from workflow_retention.cli import EXIT_OK, EXIT_USAGE, main
from workflow_retention.exceptions import ConfigurationError

NON_ASCII_DIGITS = ["٣٠", "３０", "²", "3٠"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_retention_env(monkeypatch)


def usage_error(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, *argv: str) -> str:
    """Run the CLI; it must exit 2 with the reason on stderr or in an ERROR line, and no traceback."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    text = err + "\n".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert code == EXIT_USAGE, (argv, code, out, text)
    assert "Traceback" not in err and "OverflowError" not in text and "AttributeError" not in text
    caplog.clear()
    return text


@pytest.mark.parametrize(("argv", "named"), [
    (["purge", "--storage", "memory://", "--days", str(10**12)], "--days"),
    (["purge", "--storage", "memory://", "--days", "36501"], "--days"),
    (["purge", "--storage", "memory://", "--older-than", "9999-12-31T23:59:59-14:00"], "--older-than"),
    (["purge", "--storage", "memory://", "--older-than", "0001-01-01T00:00:00+14:00"], "--older-than"),
    (["orphans", "--storage", "memory://", "--grace", f"{10**12}d"], "--grace"),
    (["orphans", "--storage", "memory://", "--grace", "99999999999999999999w"], "--grace"),
    (["audit", "--storage", "memory://", "--grace", f"{10**9}w"], "--grace"),
    (["seed", "--storage", "memory://", "--runs", "-5"], "--runs"),
    (["seed", "--storage", "memory://", "--max-age-days", "nan"], "--max-age-days"),
    (["seed", "--storage", "memory://", "--max-age-days", "inf"], "--max-age-days"),
])
def test_out_of_range_arguments_name_the_argument(capsys, caplog, argv: list[str], named: str) -> None:
    assert named in usage_error(capsys, caplog, *argv)


@pytest.mark.parametrize("digits", NON_ASCII_DIGITS)
def test_only_ascii_digits_are_numbers(capsys, caplog, monkeypatch: pytest.MonkeyPatch, digits: str) -> None:
    assert "--days" in usage_error(capsys, caplog, "purge", "--storage", "memory://", "--days", digits)
    assert "batch_size" in usage_error(capsys, caplog, "purge", "--storage", "memory://", "--days", "30",
                                       "--batch-size", digits)
    assert "--runs" in usage_error(capsys, caplog, "seed", "--storage", "memory://", "--runs", digits)
    assert "--grace" in usage_error(capsys, caplog, "orphans", "--storage", "memory://", "--grace", f"{digits}m")
    for name, value in ((config.RETENTION_DAYS, digits), (config.BATCH_SIZE, digits),
                        (config.ORPHAN_GRACE, f"{digits}m"), (config.LOCK_TTL, f"{digits}m"),
                        ("PYWORKFLOW_POSTGRES_PORT", digits)):
        env = {name: value, config.STORAGE_URL: "memory://"}
        if name.startswith("PYWORKFLOW_POSTGRES"):
            env = {name: value, "PYWORKFLOW_STORAGE_TYPE": "postgres"}
        with pytest.raises(ConfigurationError, match=name):
            settings = config.load_settings(env)
            settings.require_storage_url()


@pytest.mark.parametrize(("name", "value"), [
    (config.RETENTION_DAYS, str(10**12)),
    (config.LOCK_TTL, f"{10**12}d"),
    (config.LOCK_TTL, "2d"),
    (config.ORPHAN_GRACE, "99999999999999999999w"),
    (config.MIN_AGE, f"{10**12}d"),
    (config.BATCH_SIZE, str(10**30)),
])
def test_out_of_range_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        config.load_settings({name: value, config.STORAGE_URL: "memory://"})


@pytest.mark.parametrize("value", [f"{10**12}d", "99999999999999999999s", "0s", "31d"])
def test_an_out_of_range_schedule_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigurationError, match=config.SCHEDULE):
        config.load_schedule({config.SCHEDULE: value})


def test_a_bad_celery_only_setting_does_not_stop_a_cli_purge_but_is_named(
        capsys, caplog, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line takes no lock: a broken lock TTL is warned about, not fatal; check refuses it."""
    monkeypatch.setenv(config.LOCK_TTL, f"{10**12}d")
    code = main(["purge", "--storage", "memory://inputs", "--days", "30"])
    assert code == EXIT_OK
    assert any(config.LOCK_TTL in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    caplog.clear()
    assert config.LOCK_TTL in usage_error(capsys, caplog, "check", "--storage", "memory://inputs")


# -- the blast-radius guard ----------------------------------------------------------------


def _seed_recent(store: str) -> None:
    from pyworkflow.storage.schemas import RunStatus, WorkflowRun

    from workflow_retention.backends.memory import get_store

    now = datetime.now(UTC)
    get_store(store)._runs["run_just_finished"] = WorkflowRun(
        run_id="run_just_finished", workflow_name="w", status=RunStatus.COMPLETED,
        created_at=now - timedelta(minutes=10), updated_at=now - timedelta(minutes=5))


@pytest.mark.parametrize("cutoff", [timedelta(days=1), timedelta(minutes=1), timedelta(0)])
def test_a_cutoff_newer_than_the_minimum_age_is_refused(capsys, caplog, cutoff: timedelta) -> None:
    _seed_recent("guard_a")
    when = (datetime.now(UTC) + cutoff).isoformat()
    text = usage_error(capsys, caplog, "purge", "--storage", "memory://guard_a", "--older-than", when)
    assert "--allow-recent-cutoff" in text and config.MIN_AGE in text
    from workflow_retention.backends.memory import get_store
    assert "run_just_finished" in get_store("guard_a")._runs


def test_the_guard_yields_to_an_explicit_flag_or_setting(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from workflow_retention.backends.memory import get_store

    _seed_recent("guard_b")
    now = datetime.now(UTC).isoformat()
    assert main(["purge", "--storage", "memory://guard_b", "--older-than", now, "--allow-recent-cutoff"]) == EXIT_OK
    assert "run_just_finished" not in get_store("guard_b")._runs
    _seed_recent("guard_c")
    monkeypatch.setenv(config.MIN_AGE, "0s")
    assert main(["purge", "--storage", "memory://guard_c", "--older-than", now]) == EXIT_OK
    assert "run_just_finished" not in get_store("guard_c")._runs


def test_a_minimum_age_longer_than_the_retention_is_refused(capsys, caplog, monkeypatch) -> None:
    monkeypatch.setenv(config.MIN_AGE, "10d")
    assert config.MIN_AGE in usage_error(capsys, caplog, "purge", "--storage", "memory://", "--days", "3")
