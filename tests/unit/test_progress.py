"""Progress on long phases (issue 19, item 7): plain lines when stderr is not a terminal, a redrawn line on one."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pytest

from workflow_retention import cli
from workflow_retention.backends.file.backend import FileBackend
from workflow_retention.backends.memory import MemoryBackend
from workflow_retention.base import OrphanJob, PurgeJob
from workflow_retention.cli import EXIT_OK, Progress, main
from workflow_retention.report import Kind


@pytest.fixture
def fast_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """A line every 20 ms instead of every 5 s, so a test sees the lines a long phase would print."""
    monkeypatch.setattr(cli, "LINE_INTERVAL", 0.02)


def _lines(err: str, label: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"{label}: ")]


def test_seed_prints_how_many_runs_are_written(fast_lines: None, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    write = MemoryBackend._write_seed

    def slow(self: MemoryBackend, runs: list) -> None:
        time.sleep(0.03)
        write(self, runs)

    monkeypatch.setattr(MemoryBackend, "_write_seed", slow)
    assert main(["seed", "--storage", "memory://progress_seed", "--runs", "1200", "--batch-size", "200"]) == EXIT_OK
    out, err = capsys.readouterr()
    lines = _lines(err, "seed")
    assert lines, err
    assert all(re.fullmatch(r"seed: [\d,]+ of 1,200 runs \(\d+%\) \(\d+s\)", line) for line in lines), lines
    assert "\r" not in err and "\x1b" not in err  # plain lines: no terminal control codes in a log
    assert "seeded 1,200 runs" in out


def test_a_phase_without_batches_still_prints_its_progress(fast_lines: None, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A file store's cascade deletes between batch boundaries: the lines count the records as they go."""
    def purge(self: MemoryBackend, job: PurgeJob) -> None:
        job.boundary(["run_a"])
        for _ in range(10):  # the cascade: records deleted with no batch boundary
            job.report.add(Kind.EVENTS, 100)
            time.sleep(0.02)

    monkeypatch.setattr(MemoryBackend, "_purge", purge)
    assert main(["purge", "--storage", "memory://progress_purge", "--days", "30"]) == EXIT_OK
    lines = _lines(capsys.readouterr().err, "purge")
    counted = [int(m.group(1).replace(",", "")) for line in lines
               if (m := re.search(r"batch 1, ([\d,]+) records so far", line))]
    assert len(counted) >= 2 and counted == sorted(counted) and counted[-1] > counted[0], lines


def test_the_audit_names_its_orphan_scan(fast_lines: None, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def scan(self: MemoryBackend, job: OrphanJob) -> None:
        time.sleep(0.2)  # a long scan that finds nothing: no batch at all

    monkeypatch.setattr(MemoryBackend, "_sweep_orphans", scan)
    assert main(["audit", "--storage", "memory://progress_audit", "--days", "30"]) == EXIT_OK
    lines = _lines(capsys.readouterr().err, "audit")
    assert any(line.startswith("audit: orphan scan (") for line in lines), lines


def test_a_file_store_purge_prints_lines(fast_lines: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"file://{tmp_path}/store"
    assert main(["seed", "--storage", url, "--runs", "400"]) == EXIT_OK
    capsys.readouterr()
    assert main(["purge", "--storage", url, "--days", "30", "--batch-size", "20"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert _lines(err, "purge"), err
    assert "runs deleted" in out
    assert FileBackend(tmp_path / "store").space().freed_bytes is None  # measured by the purge, not stored


def test_nothing_is_printed_for_a_command_done_within_the_interval(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["seed", "--storage", "memory://progress_quick", "--runs", "10"]) == EXIT_OK
    assert _lines(capsys.readouterr().err, "seed") == []


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_one_line_is_redrawn_with_a_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = _Terminal()
    with Progress("seed", screen, total=1000, unit="runs", interval=0.0) as progress:
        for done in (250, 500, 1000):
            progress.count(done)
    text = screen.getvalue()
    assert text.count("\r") >= 3 and "\n" not in text
    assert "[######.................." in text and "250 of 1,000 runs (25%)" in text
    assert text.endswith("\r\x1b[K")  # the line is cleared when the command is done


def test_a_log_line_on_a_terminal_erases_the_progress_line_first() -> None:
    import logging

    screen = _Terminal()
    handler = cli._ProgressAwareHandler(screen)
    with Progress("purge", screen, interval=0.0) as progress:
        progress.tick("batch 1")
        handler.emit(logging.LogRecord("x", logging.WARNING, __file__, 1, "a warning", None, None))
    text = screen.getvalue()
    assert "batch 1" in text and "\r\x1b[Ka warning\n" in text
    assert Progress.drawn_on is None
