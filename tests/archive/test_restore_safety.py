"""Restore from an archive that was altered, damaged or built to attack: refused loudly, nothing half-written."""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import pytest

from workflow_retention import archive as archive_mod
from workflow_retention.archive import FileArchiveStore, decode_lines, encode_lines
from workflow_retention.archiving import decode
from workflow_retention.cli import main
from workflow_retention.exceptions import ArchiveError


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "store.db"
    monkeypatch.setenv("PYWORKFLOW_RETENTION_STORAGE_URL", f"sqlite:///{path}")
    monkeypatch.delenv("PYWORKFLOW_RETENTION_ARCHIVE_URL", raising=False)
    assert main(["seed", "--runs", "40"]) == 0
    return path


def _runs(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM workflow_runs").fetchone()[0])


def _objects(folder: Path) -> list[Path]:
    return sorted(folder.rglob("batch-*.jsonl.gz"))


def _rewrite(obj: Path, change: object) -> None:
    """Replace an archived object by one whose lines ``change`` altered (a new valid gzip: only the manifest's
    checksum can tell)."""
    lines = decode_lines(obj.read_bytes())
    change(lines)  # type: ignore[operator]
    obj.unlink()
    obj.write_bytes(encode_lines(lines))


def _purge(tmp_path: Path, capsys: pytest.CaptureFixture) -> tuple[str, Path]:
    folder = tmp_path / "archive"
    folder.mkdir()
    url = f"file://{folder}"
    assert main(["purge", "--days", "30", "--archive", url]) == 0
    capsys.readouterr()
    return url, folder


def _set_status(row: dict, status: str) -> None:
    """Change an archived row's status (rows are ``{"$dict": [[column, value], ...]}``: column order kept)."""
    for pair in row["$dict"]:
        if pair[0] == "status":
            pair[1] = status


def _tamper_status(lines: list[dict]) -> None:
    _set_status(lines[0]["records"]["workflow_runs"][0], "running")


def test_an_object_that_differs_from_its_manifest_is_refused_and_nothing_is_restored(
        store: Path, tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    url, folder = _purge(tmp_path, capsys)
    before = _runs(store)
    _rewrite(_objects(folder)[0], _tamper_status)
    assert main(["restore", "--archive", url, "--all"]) == 1
    assert "checksum" in caplog.text and "batch-000001.jsonl.gz" in caplog.text
    assert _runs(store) == before  # nothing written


def test_an_object_a_rerun_relied_on_is_verified_too(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    url, folder = _purge(tmp_path, capsys)
    # the purge was killed after deleting, before its manifest; a rerun then closed it (continues)
    [manifest] = folder.rglob("manifest.json")
    manifest.unlink()
    assert main(["purge", "--days", "30", "--archive", url, "--json"]) == 0
    rerun = json.loads(capsys.readouterr().out)
    assert rerun["archive"]["runs"] == 0
    before = _runs(store)
    [obj] = _objects(folder)
    good = obj.read_bytes()
    _rewrite(obj, _tamper_status)
    assert main(["restore", "--archive", url, "--all"]) == 1
    assert "checksum" in caplog.text
    assert _runs(store) == before
    obj.unlink()
    obj.write_bytes(good)  # the object as verified: restored
    assert main(["restore", "--archive", url, "--all", "--json"]) == 0
    assert _runs(store) > before


def test_an_object_no_manifest_lists_in_a_finished_purge_is_ignored(
        store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url, folder = _purge(tmp_path, capsys)
    [obj] = _objects(folder)
    lines = decode_lines(obj.read_bytes())
    forged = dict(lines[0], archived_at="9999-01-01T00:00:00+00:00")
    forged["records"] = json.loads(json.dumps(forged["records"]))
    _set_status(forged["records"]["workflow_runs"][0], "running")
    (obj.parent / "batch-000099.jsonl.gz").write_bytes(encode_lines([forged]))
    assert main(["restore", "--archive", url, "--run", forged["run_id"], "--json"]) == 0
    with sqlite3.connect(store) as db:
        [(status,)] = db.execute("SELECT status FROM workflow_runs WHERE run_id = ?", (forged["run_id"],))
    assert status != "running"  # the verified line, not the injected one


@pytest.mark.parametrize("value", [
    {"$enum": "pyworkflow.storage.schemas:dataclass", "value": 1},  # a function, not an enum: never called
    {"$object": "pyworkflow.storage.base:StorageBackend", "fields": {}},  # not a dataclass
    {"$object": "types:FunctionType", "fields": {}},
    {"$object": "os:system", "fields": {}},
    {"$datetime": "not a time"},
    {"$bytes": "***"},
    {"$timedelta": "x"},
    {"$object": "types:SimpleNamespace", "fields": 3},
])
def test_a_tampered_value_is_an_archive_error_and_calls_nothing(value: dict) -> None:
    with pytest.raises(ArchiveError):
        decode({"column": value})


def test_a_gzip_bomb_is_refused_without_inflating_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_mod, "MAX_OBJECT_BYTES", 1 << 20)
    bomb = gzip.compress(b"{" + b" " * (8 << 20) + b"}\n")
    with pytest.raises(ArchiveError, match="larger than"):
        decode_lines(bomb)
    assert decode_lines(encode_lines([{"a": 1}])) == [{"a": 1}]


def test_a_batch_larger_than_restore_accepts_is_not_archived(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_mod, "MAX_OBJECT_BYTES", 1 << 10)
    with pytest.raises(ArchiveError, match="batch"):
        encode_lines([{"a": "x" * 4096}])


def test_a_line_that_is_not_a_run_is_refused_loudly(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "archive"
    folder.mkdir()
    obj = "purges/2026-01-01-x/batch-000001.jsonl.gz"
    FileArchiveStore(folder, f"file://{folder}").put_new(obj, encode_lines([
        {"format": "workflow-retention-archive", "version": 1, "backend": "sqlite", "run_id": ["x"],
         "records": "nope"}]))
    before = _runs(store)
    assert main(["restore", "--archive", f"file://{folder}", "--all"]) == 1
    assert "line 1" in caplog.text and "Traceback" not in caplog.text
    assert _runs(store) == before


def test_a_superseded_version_is_not_restored_as_if_it_had_been_deleted(
        store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from workflow_retention.archiving import Archiving

    folder = tmp_path / "archive"
    folder.mkdir()
    url = f"file://{folder}"
    original = Archiving.batch
    touched: list[str] = []

    def archive_then_engine_writes(self: Archiving, ids: list[str]) -> None:
        original(self, ids)
        if ids and not touched:  # after the archive, before the delete: the engine changes the run
            touched.append(ids[0])
            with sqlite3.connect(store) as db:
                db.execute("UPDATE workflow_runs SET status = 'failed', updated_at = ? WHERE run_id = ?",
                           ("2026-01-01 00:00:00.000000", ids[0]))

    monkeypatch.setattr(Archiving, "batch", archive_then_engine_writes)
    assert main(["purge", "--days", "30", "--archive", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["archive"]["superseded"] == 1
    [victim] = touched
    with sqlite3.connect(store) as db:  # later deleted without an archive: this archive never saw it deleted
        db.execute("PRAGMA foreign_keys = OFF")
        for table in ("events", "steps", "hooks", "cancellation_flags", "workflow_runs"):
            db.execute(f"DELETE FROM {table} WHERE run_id = ?", (victim,))
        db.execute("DELETE FROM checkpoints WHERE step_run_id LIKE ?", (f"{victim}:%",))
    assert main(["restore", "--archive", url, "--run", victim, "--json"]) == 1
    refused = json.loads(capsys.readouterr().out)["refused"]
    assert "superseded" in refused[victim]
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT count(*) FROM workflow_runs WHERE run_id = ?", (victim,)).fetchone()[0] == 0


def test_an_unverified_line_never_wins_over_a_verified_one(store: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    url, folder = _purge(tmp_path, capsys)
    [obj] = _objects(folder)
    forged = json.loads(json.dumps(decode_lines(obj.read_bytes())[0]))
    forged["archived_at"] = "9999-01-01T00:00:00+00:00"
    _set_status(forged["records"]["workflow_runs"][0], "running")
    # a folder with no manifest (as a crashed purge leaves): read unverified, and only for runs nothing verified holds
    FileArchiveStore(folder, url).put_new("purges/9999-01-01-x/batch-000001.jsonl.gz", encode_lines([forged]))
    assert main(["restore", "--archive", url, "--run", forged["run_id"], "--json"]) == 0
    with sqlite3.connect(store) as db:
        [(status,)] = db.execute("SELECT status FROM workflow_runs WHERE run_id = ?", (forged["run_id"],))
    assert status != "running"


def test_restore_all_into_another_kind_of_store_fails(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    url, _folder = _purge(tmp_path, capsys)
    other = f"file://{tmp_path / 'files'}"
    assert main(["seed", "--runs", "5", "--storage", other]) == 0
    assert main(["restore", "--archive", url, "--all", "--storage", other]) == 1  # nothing could be written
    assert "archived from a sqlite store" in capsys.readouterr().out
    assert main(["restore", "--archive", url, "--all"]) == 0
    assert main(["restore", "--archive", url, "--all"]) == 0  # now all exist: expected with --all


def test_a_line_whose_rows_belong_to_another_run_is_refused(store: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    url, folder = _purge(tmp_path, capsys)
    with sqlite3.connect(store) as db:
        live = db.execute("SELECT run_id FROM workflow_runs ORDER BY run_id LIMIT 1").fetchone()[0]
        events = db.execute("SELECT count(*) FROM events WHERE run_id = ?", (live,)).fetchone()[0]
    [obj] = _objects(folder)
    line = json.loads(json.dumps(next(x for x in decode_lines(obj.read_bytes())
                                      if not x.get("parent_run_id") and x["records"].get("events"))))
    old_id = line["run_id"]
    text = json.dumps(line).replace(old_id, "run_forged0000000")
    line = json.loads(text)
    for pair in line["records"]["events"][0]["$dict"]:  # one event row aimed at a live run
        if pair[0] == "run_id":
            pair[1] = live
    FileArchiveStore(folder, url).put_new("purges/2026-01-01-x/batch-000001.jsonl.gz", encode_lines([line]))
    assert main(["restore", "--archive", url, "--run", "run_forged0000000"]) == 1
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT count(*) FROM events WHERE run_id = ?", (live,)).fetchone()[0] == events
        assert db.execute("SELECT count(*) FROM workflow_runs WHERE run_id = 'run_forged0000000'").fetchone()[0] == 0


def test_a_run_the_store_refuses_is_reported_and_the_others_are_restored(store: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    assert main(["seed", "--runs", "300", "--append"]) == 0  # enough runs for purged children
    url, folder = _purge(tmp_path, capsys)
    lines = [x for obj in _objects(folder) for x in decode_lines(obj.read_bytes())]
    child = next(x for x in lines if x.get("parent_run_id") and x["records"].get("events"))
    event = dict(child["records"]["events"][0]["$dict"])
    with sqlite3.connect(store) as db:  # a row in the way of one run
        db.execute("PRAGMA foreign_keys = OFF")
        db.execute("INSERT INTO events (event_id, run_id, sequence, type, timestamp, data) VALUES (?, ?, 1, 'x', "
                   "'2026-01-01 00:00:00', '{}')", (event["event_id"], "run_elsewhere"))
    before = _runs(store)
    assert main(["restore", "--archive", url, "--all", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert "the store refused it" in report["refused"][child["run_id"]]
    below = {x["run_id"] for x in lines if x.get("parent_run_id") == child["run_id"]}
    assert set(report["refused"]) == {child["run_id"], *below}  # and its children, never without it
    assert len(report["written"]) == len(lines) - 1 - len(below) == _runs(store) - before
