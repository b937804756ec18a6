"""A file archive folder someone else can write into: a symlinked folder never redirects a write or a read."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from workflow_retention import archive as archive_mod
from workflow_retention.archive import FileArchiveStore
from workflow_retention.cli import main
from workflow_retention.exceptions import ArchiveError


def test_a_symlinked_folder_inside_the_archive_is_never_followed(tmp_path: Path) -> None:
    folder, elsewhere = tmp_path / "archive", tmp_path / "elsewhere"
    folder.mkdir()
    (elsewhere / "p").mkdir(parents=True)
    (elsewhere / "p" / "x.jsonl.gz").write_bytes(b"planted")
    os.symlink(elsewhere, folder / "purges")
    archive = FileArchiveStore(folder, f"file://{folder}")
    with pytest.raises(ArchiveError, match="symlink"):
        archive.put_new("purges/p/batch-000001.jsonl.gz", b"data")
    with pytest.raises(ArchiveError, match="symlink"):
        archive.get("purges/p/x.jsonl.gz")
    with pytest.raises(ArchiveError, match="symlink"):
        list(archive.names("purges"))
    assert sorted(p.name for p in (elsewhere / "p").iterdir()) == ["x.jsonl.gz"]  # nothing written there


def test_a_purge_into_an_archive_with_a_symlinked_folder_deletes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store.db"
    monkeypatch.setenv("PYWORKFLOW_RETENTION_STORAGE_URL", f"sqlite:///{store}")
    monkeypatch.delenv("PYWORKFLOW_RETENTION_ARCHIVE_URL", raising=False)
    assert main(["seed", "--runs", "30"]) == 0
    with sqlite3.connect(store) as db:
        before = db.execute("SELECT count(*) FROM workflow_runs").fetchone()[0]
    folder, elsewhere = tmp_path / "archive", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, folder / "purges")
    assert main(["purge", "--days", "30", "--archive", f"file://{folder}"]) == 1
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT count(*) FROM workflow_runs").fetchone()[0] == before
    assert list(elsewhere.iterdir()) == []


def test_an_object_larger_than_any_archive_object_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_mod, "MAX_OBJECT_BYTES", 1000)
    folder = tmp_path / "archive"
    folder.mkdir()
    (folder / "big").write_bytes(b"x" * 5000)
    with pytest.raises(ArchiveError, match="larger"):
        FileArchiveStore(folder, f"file://{folder}").get("big")
