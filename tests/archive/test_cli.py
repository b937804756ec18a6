"""The command line's archive: purge --archive, archive ls/show, restore; a bad archive setting is exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workflow_retention.cli import main


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("PYWORKFLOW_RETENTION_STORAGE_URL", url)
    monkeypatch.delenv("PYWORKFLOW_RETENTION_ARCHIVE_URL", raising=False)
    assert main(["seed", "--runs", "40"]) == 0
    return url


def test_purge_with_archive_lists_and_restores(store: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "archive"
    folder.mkdir()
    archive = f"file://{folder}"
    assert main(["purge", "--days", "30", "--archive", archive, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["archive"]["runs"] == report["counts"]["runs"] > 0
    assert main(["archive", "ls", "--archive", archive, "--json"]) == 0
    [purge] = json.loads(capsys.readouterr().out)
    assert purge["outcome"] == "ok" and purge["runs"] == report["counts"]["runs"]
    assert main(["archive", "show", purge["folder"], "--archive", archive, "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert len(runs) == report["counts"]["runs"]
    assert main(["restore", "--archive", archive, "--all", "--json"]) == 0
    restored = json.loads(capsys.readouterr().out)
    assert len(restored["written"]) == len(runs) and not restored["refused"]
    assert main(["restore", "--archive", archive, "--run", runs[0]["run_id"]]) == 1  # exists now: refused


@pytest.mark.parametrize("how", ["flag", "setting"])
def test_a_bad_archive_url_is_exit_2_naming_it_before_anything_is_read(
        store: str, how: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    args = ["purge", "--days", "30"]
    if how == "flag":
        args += ["--archive", "s3://KEY:s3cr3t@bucket/x"]
    else:
        monkeypatch.setenv("PYWORKFLOW_RETENTION_ARCHIVE_URL", "s3://KEY:s3cr3t@bucket/x")
    assert main(args) == 2
    text = caplog.text
    assert ("--archive" if how == "flag" else "PYWORKFLOW_RETENTION_ARCHIVE_URL") in text
    assert "s3cr3t" not in text


def test_an_unreachable_archive_fails_the_purge_and_deletes_nothing(store: str, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    assert main(["purge", "--days", "30", "--archive", f"file://{tmp_path}/missing"]) == 1
    assert main(["purge", "--days", "30", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["runs"] > 0  # still all there


def test_a_child_is_not_restored_without_its_parent(store: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    assert main(["seed", "--runs", "400", "--append"]) == 0  # enough families whose runs all expire
    folder = tmp_path / "archive"
    folder.mkdir()
    archive = f"file://{folder}"
    assert main(["purge", "--days", "30", "--archive", archive]) == 0
    capsys.readouterr()
    assert main(["archive", "ls", "--archive", archive, "--json"]) == 0
    [purge] = json.loads(capsys.readouterr().out)
    assert main(["archive", "show", purge["folder"], "--archive", archive, "--json"]) == 0
    runs = {r["run_id"]: r for r in json.loads(capsys.readouterr().out)}
    child = next(r for r in runs.values() if r["parent_run_id"] in runs)
    family = [child["run_id"]]
    while runs[family[-1]]["parent_run_id"] in runs:
        family.append(runs[family[-1]]["parent_run_id"])
    assert main(["restore", "--archive", archive, "--run", child["run_id"], "--json"]) == 1
    refused = json.loads(capsys.readouterr().out)["refused"]
    assert child["parent_run_id"] in refused[child["run_id"]]
    assert main(["restore", "--archive", archive, *(a for r in family for a in ("--run", r)), "--json"]) == 0
    assert sorted(json.loads(capsys.readouterr().out)["written"]) == sorted(family)
