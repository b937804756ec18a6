"""Restore into the file store: never replaces a file, never writes a file of another run, never half a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workflow_retention.archive import FileArchiveStore, decode_lines, encode_lines
from workflow_retention.cli import main


@pytest.fixture
def purged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[Path, str, list]:
    """A seeded file store, purged into a file archive: (store, archive URL, archived lines)."""
    store = tmp_path / "store"
    monkeypatch.setenv("PYWORKFLOW_RETENTION_STORAGE_URL", f"file://{store}")
    monkeypatch.delenv("PYWORKFLOW_RETENTION_ARCHIVE_URL", raising=False)
    assert main(["seed", "--runs", "40"]) == 0
    folder = tmp_path / "archive"
    folder.mkdir()
    url = f"file://{folder}"
    assert main(["purge", "--days", "30", "--archive", url]) == 0
    capsys.readouterr()
    lines = [line for obj in sorted(folder.rglob("batch-*.jsonl.gz")) for line in decode_lines(obj.read_bytes())]
    return store, url, lines


def _with_files(lines: list, *kinds: str) -> dict:
    """An archived run (no parent: restorable alone) with files of each of ``kinds``."""
    return next(line for line in lines if not line.get("parent_run_id") and all(line["records"].get(k) for k in kinds))


def _names(store: Path) -> set[str]:
    return {p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file()}


def test_a_file_of_the_run_that_exists_is_not_replaced_and_nothing_of_the_run_is_written(
        purged: tuple[Path, str, list], caplog: pytest.LogCaptureFixture) -> None:
    store, url, lines = purged
    line = _with_files(lines, "events", "steps")
    leftover = store / "events" / f"{line['run_id']}.jsonl"
    leftover.write_text("leftover\n")
    before = _names(store)
    assert main(["restore", "--archive", url, "--run", line["run_id"]]) == 1
    assert leftover.read_text() == "leftover\n"  # not replaced
    assert _names(store) == before  # and nothing else of the run written: no half run
    assert line["run_id"] in caplog.text


def test_a_line_naming_another_runs_file_is_refused(purged: tuple[Path, str, list], tmp_path: Path) -> None:
    store, url, lines = purged
    live = sorted((store / "events").iterdir())[0]
    original = live.read_bytes()
    line = json.loads(json.dumps(_with_files(lines, "events")))
    line["archived_at"] = "9999-01-01T00:00:00+00:00"
    line["records"]["events"].append({"name": live.name, "data": {"$bytes": "eA=="}, "mtime": 0.0})
    folder = Path(url[len("file://"):])
    for manifest in folder.rglob("manifest.json"):  # unverified, like the forged object: the newer line wins
        manifest.unlink()
    FileArchiveStore(folder, url).put_new("purges/9999-01-01-forged/batch-000001.jsonl.gz", encode_lines([line]))
    before = _names(store)
    assert main(["restore", "--archive", url, "--run", line["run_id"]]) == 1
    assert live.read_bytes() == original
    assert _names(store) == before


def test_a_failure_midway_removes_what_the_run_had_written(purged: tuple[Path, str, list],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from workflow_retention.backends.file import client

    store, url, lines = purged
    line = _with_files(lines, "events", "steps")
    real = client.Store.write_new
    calls = []

    def failing(self: client.Store, directory: str, name: str, *args: object, **kwargs: object) -> None:
        calls.append(name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(self, directory, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(client.Store, "write_new", failing)
    before = _names(store)
    assert main(["restore", "--archive", url, "--run", line["run_id"]]) == 1
    assert _names(store) == before
    monkeypatch.setattr(client.Store, "write_new", real)
    assert main(["restore", "--archive", url, "--run", line["run_id"]]) == 0  # and a retry restores it
    assert f"runs/{line['run_id']}.json" in _names(store)
