"""The command line: reports, exit codes, error lines, progress."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from workflow_retention.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Progress, main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_seed_then_purge_json_report(capsys) -> None:
    assert run(capsys, "seed", "--storage", "memory://cli_a", "--runs", "200")[0] == EXIT_OK
    code, out, _ = run(capsys, "purge", "--storage", "memory://cli_a", "--days", "30", "--dry-run", "--json")
    dry = json.loads(out)
    assert code == EXIT_OK and dry["dry_run"] and dry["counts"]["runs"] > 0
    code, out, _ = run(capsys, "purge", "--storage", "memory://cli_a", "--days", "30", "--json")
    real = json.loads(out)
    assert real["counts"] == dry["counts"] and not real["dry_run"]
    code, out, _ = run(capsys, "purge", "--storage", "memory://cli_a", "--days", "30")
    assert "runs deleted" in out and "(nothing)" in out


def test_table_output_and_audit_and_orphans(capsys) -> None:
    run(capsys, "seed", "--storage", "memory://cli_b", "--runs", "100")
    code, out, _ = run(capsys, "purge", "--storage", "memory://cli_b", "--older-than", "2026-01-01T00:00:00+00:00",
                       "--dry-run")
    assert code == EXIT_OK and "[DRY RUN]" in out and "cutoff" in out
    code, out, _ = run(capsys, "audit", "--storage", "memory://cli_b", "--days", "30")
    assert code == EXIT_OK and "runs by status" in out and "runs by age" in out and "orphans found" in out
    code, out, _ = run(capsys, "audit", "--storage", "memory://cli_b", "--json")
    assert json.loads(out)["census"]["kinds"]["runs"]["count"] == 100
    code, out, _ = run(capsys, "orphans", "--storage", "memory://cli_b", "--dry-run", "--grace", "2h", "--json")
    assert code == EXIT_OK and json.loads(out)["grace_s"] == 7200


@pytest.mark.parametrize(("argv", "message"), [
    (["purge", "--storage", "nope://x", "--days", "3"], "unknown storage URL scheme 'nope'"),
    (["purge", "--storage", "memory://", "--older-than", "2026-01-01T00:00:00"], "--older-than must be timezone-aware"),
    (["purge", "--storage", "memory://", "--older-than", "last week"], "--older-than: expected an ISO-8601"),
    (["purge", "--storage", "memory://"], "give --days N or --older-than"),
    (["purge", "--storage", "memory://", "--days", "3", "--batch-size", "0"], "batch_size must be an integer"),
    (["orphans", "--storage", "memory://", "--grace", "soon"], "--grace: expected a duration"),
])
def test_bad_input_exits_2_with_an_error_line(capsys, caplog, argv, message) -> None:
    code = main(argv)
    assert code == EXIT_USAGE
    assert any(message in r.getMessage() and r.levelname == "ERROR" for r in caplog.records), caplog.text


def test_bad_days_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["purge", "--storage", "memory://", "--days", "30d"])
    assert exc.value.code == 2
    assert "--days must be a positive integer" in capsys.readouterr().err


def test_storage_failure_exits_non_zero_with_an_error_line(capsys, caplog, monkeypatch) -> None:
    from workflow_retention.backends.memory import MemoryBackend

    def broken(self, job):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(MemoryBackend, "_purge", broken)
    code = main(["purge", "--storage", "memory://cli_c", "--days", "3"])
    assert code == EXIT_FAILED
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("disk on fire" in m for m in errors)


def test_progress_lines_are_throttled(monkeypatch) -> None:
    import io

    from workflow_retention.cli import time as cli_time

    clock = iter([0.0, 0.5, 1.2, 1.5, 2.4])
    monkeypatch.setattr(cli_time, "monotonic", lambda: next(clock))
    buf = io.StringIO()
    p = Progress("purge", buf, interval=1.0)
    for _ in range(4):
        p.tick("x")
    assert buf.getvalue().count("purge: x") == 2


def test_console_script_is_installed() -> None:
    out = subprocess.run([sys.executable, "-m", "workflow_retention", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "purge" in out.stdout and "audit" in out.stdout


def test_records_left_alone_print_a_warning_line(capsys, caplog) -> None:
    from workflow_retention.backends.memory import get_store

    run(capsys, "seed", "--storage", "memory://cli_warn", "--runs", "60")
    store = get_store("cli_warn")
    victim = next(r for r in store._runs.values() if r.status.value == "completed"
                  and (datetime.now(UTC) - r.updated_at).days > 40)
    victim.status = "COMPLETED"
    code, out, _ = run(capsys, "purge", "--storage", "memory://cli_warn", "--days", "30", "--json")
    assert code == EXIT_OK and json.loads(out)["skipped"] == 1
    assert any(r.levelname == "WARNING" and victim.run_id in r.getMessage() for r in caplog.records)


def test_a_storage_error_is_one_error_line_and_a_traceback_only_with_v(tmp_path, capfd) -> None:
    missing = f"sqlite:///{tmp_path}/no/such.db"
    code = main(["purge", "--storage", missing, "--days", "30"])
    err = capfd.readouterr().err
    assert code == EXIT_FAILED
    assert [line for line in err.splitlines() if line.strip()] == [
        line for line in err.splitlines() if line.startswith("ERROR")], err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "such.db" in err
    assert main(["-v", "purge", "--storage", missing, "--days", "30"]) == EXIT_FAILED
    assert "Traceback" in capfd.readouterr().err


def test_version_verbose_anywhere_and_plain_help(capsys) -> None:
    from workflow_retention import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out
    assert main(["purge", "--storage", "memory://cli_v", "--days", "30", "-v"]) == EXIT_OK
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "``" not in capsys.readouterr().out


def test_a_reader_that_goes_away_does_not_fail_the_command(tmp_path) -> None:
    """``workflow-retention purge ... | head -1``: the purge is done; the closed pipe is not an error."""
    script = ("import subprocess, sys; "
              "p = subprocess.Popen([sys.executable, '-m', 'workflow_retention', 'audit', '--storage', "
              "'memory://x', '--days', '30'], stdout=subprocess.PIPE, stderr=subprocess.PIPE); "
              "p.stdout.close(); err = p.stderr.read(); rc = p.wait(); "
              "print(rc, err.decode())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60).stdout
    assert out.split()[0] == "0", out
    assert "BrokenPipe" not in out and "failed" not in out


def test_check_prints_what_will_be_used_and_checks_each_connection(capsys, monkeypatch) -> None:
    for name in ("PYWORKFLOW_RETENTION_STORAGE_URL", "PYWORKFLOW_STORAGE_TYPE", "PYWORKFLOW_RETENTION_LOCK_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYWORKFLOW_RETENTION_LOCK_URL", "redis://127.0.0.1:6379/0")
    code, out, _ = run(capsys, "check", "--storage", "memory://cli_check")
    assert code == EXIT_OK, out
    assert "Settings(" not in out and "storage_url=None" not in out
    assert "memory://cli_check" in out and "storage: OK" in out and "lock: OK" in out
    monkeypatch.setenv("PYWORKFLOW_RETENTION_LOCK_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    code, out, _ = run(capsys, "check", "--storage", "memory://cli_check")
    assert code == EXIT_FAILED and "lock: FAILED" in out
