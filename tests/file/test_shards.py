"""Sharded file purges from the command line (``purge --shards N --workers N``, in processes)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from workflow_retention import shards
from workflow_retention.backends import by_url
from workflow_retention.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from workflow_retention.seed import generate

NOW = datetime.now(UTC).replace(microsecond=0)
RUNS = 400


def seeded(path: Path) -> str:
    url = f"file://{path}"
    backend = by_url(url)
    backend.seed(generate(RUNS, now=NOW, seed=11))
    return url


def expired_left(url: str) -> int:
    return by_url(url).delete_old_runs(datetime.now(UTC) - timedelta(days=30), dry_run=True).runs


def run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def fail_shard_two(open_backend: Any, cutoff_iso: str, shard: dict[str, Any], dry_run: bool = False,
                   on_batch: Any = None, pins: Any = None) -> dict:
    """Stands in for :func:`shards.purge_one_shard` in the pool's (forked) processes: shard 2/4 fails."""
    if shard["index"] == 1:
        return {"error": "StorageError: injected failure of shard 2"}
    return ORIGINAL(open_backend, cutoff_iso, shard, dry_run, on_batch, pins)


ORIGINAL = shards.purge_one_shard


def test_sharded_purge_in_processes_reports_what_one_purge_reports(tmp_path: Path, capsys: Any) -> None:
    one, four = seeded(tmp_path / "one"), seeded(tmp_path / "four")
    code, out, _ = run(capsys, "purge", "--storage", one, "--days", "30", "--json", "--batch-size", "20")
    assert code == EXIT_OK
    expected = json.loads(out)
    code, out, err = run(capsys, "purge", "--storage", four, "--days", "30", "--json", "--batch-size", "20",
                         "--shards", "4", "--workers", "2")
    assert code == EXIT_OK, err
    got = json.loads(out)
    assert got["counts"] == expected["counts"] and expected["counts"]["runs"] > 0
    assert (got["held"], got["changed"], got["skipped"]) == (expected["held"], 0, 0)
    assert [line for line in err.splitlines() if line.startswith("purge: shard")].__len__() == 4
    assert expired_left(four) == 0
    code, out, _ = run(capsys, "purge", "--storage", four, "--days", "30", "--shards", "4")
    assert code == EXIT_OK and "runs per shard (4 shards)" in out and "final pass" in out


def test_a_failed_shard_fails_the_command_loudly_and_a_rerun_finishes(
        tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    url = seeded(tmp_path / "store")
    total = expired_left(url)
    monkeypatch.setattr(shards, "purge_one_shard", fail_shard_two)
    code, out, err = run(capsys, "purge", "--storage", url, "--days", "30", "--shards", "4", "--workers", "2")
    assert code == EXIT_FAILED
    assert "ERROR" in err and "1 of 4 shards failed" in err and "shard 2/4: StorageError: injected" in err
    assert "FAILED" in out and "(not run)" in out
    left = expired_left(url)
    assert 0 < left < total  # the other shards purged; the final pass did not run
    monkeypatch.setattr(shards, "purge_one_shard", ORIGINAL)
    assert run(capsys, "purge", "--storage", url, "--days", "30", "--shards", "4")[0] == EXIT_OK
    assert expired_left(url) == 0


@pytest.mark.parametrize("argv", [["--shards", "0"], ["--shards", "abc"], ["--shards", "2000"],
                                  ["--shards", "2", "--workers", "0"]])
def test_bad_shards_or_workers_exit_2_naming_the_option(tmp_path: Path, capsys: Any, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["purge", "--storage", f"file://{tmp_path}", "--days", "30", *argv])
    assert stopped.value.code == EXIT_USAGE
    assert argv[-2] in capsys.readouterr().err


def test_a_store_that_cannot_be_split_purges_as_one(capsys: Any) -> None:
    assert run(capsys, "seed", "--storage", "memory://cli_shards", "--runs", "100")[0] == EXIT_OK
    code, out, _ = run(capsys, "purge", "--storage", "memory://cli_shards", "--days", "30", "--shards", "4",
                       "--json")
    assert code == EXIT_OK and json.loads(out)["counts"]["runs"] > 0
