"""The archive sink: objects written once and never replaced, verified by reading back, fail-closed.

Each behaviour runs on a file archive and on a real S3 server (moto's standalone server, or
``TEST_S3_ENDPOINT_URL``).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from workflow_retention.archive import (
    FORMAT_VERSION,
    ArchiveCollision,
    ArchiveMismatch,
    ArchiveStore,
    ArchiveWriter,
    FileArchiveStore,
    S3ArchiveStore,
    archived_versions,
    decode_lines,
    encode_lines,
    open_archive,
    put_verified,
    run_line,
)
from workflow_retention.exceptions import ArchiveError, ConfigurationError

NOW = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)


@pytest.fixture(params=["file", "s3"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> ArchiveStore:
    if request.param == "file":
        return open_archive(f"file://{_folder(tmp_path)}")
    endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_bucket")
    return open_archive(f"s3://{bucket}/retention/prod?endpoint_url={endpoint}&region=us-east-1")


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "archive"
    folder.mkdir(exist_ok=True)
    return folder


def test_an_object_is_written_once_and_never_replaced(archive: ArchiveStore) -> None:
    archive.check()
    digest = put_verified(archive, "purges/x/batch-000001.jsonl.gz", b"first")
    with pytest.raises(ArchiveCollision):
        archive.put_new("purges/x/batch-000001.jsonl.gz", b"second")
    assert archive.get("purges/x/batch-000001.jsonl.gz") == b"first"
    assert len(digest) == 64
    assert sorted(archive.names("purges")) == ["purges/x/batch-000001.jsonl.gz"]


def test_a_read_back_that_differs_is_refused(archive: ArchiveStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "get", lambda name: b"bit rot")
    with pytest.raises(ArchiveMismatch, match="reads back different"):
        put_verified(archive, "purges/y/batch-000001.jsonl.gz", b"payload")


def test_a_missing_object_is_an_archive_error(archive: ArchiveStore) -> None:
    with pytest.raises(ArchiveError):
        archive.get("purges/none/manifest.json")


def test_object_names_cannot_leave_the_archive(archive: ArchiveStore) -> None:
    for name in ("../escape", "/abs", "a//b", "a/./b", ""):
        with pytest.raises(ArchiveError):
            archive.put_new(name, b"x")


def test_lines_round_trip_deterministically() -> None:
    lines = [run_line("sqlite", "run_1", "2026-01-01T00:00:00+00:00",
                      {"workflow_runs": [{"run_id": "run_1", "status": "completed"}], "events": []}),
             run_line("sqlite", "run_2", "v2", {"workflow_runs": [{"run_id": "run_2", "note": "é\n"}]})]
    data = encode_lines(lines)
    assert encode_lines(lines) == data  # same content, same bytes (no gzip timestamp)
    assert decode_lines(data) == lines
    assert decode_lines(data)[0]["version"] == FORMAT_VERSION
    with pytest.raises(ArchiveError, match="cannot be decoded"):
        decode_lines(b"not gzip")


def test_a_purge_writes_batches_then_its_manifest_and_an_unfinished_one_is_found(archive: ArchiveStore) -> None:
    crashed = ArchiveWriter(archive, backend="sqlite:///x.db", cutoff=NOW, started_at=NOW)
    crashed.write_batch([run_line("sqlite", "run_a", "v1", {}), run_line("sqlite", "run_b", "v1", {})])
    assert archived_versions(archive) == {"run_a": {"v1"}, "run_b": {"v1"}}  # no manifest: unfinished

    done = ArchiveWriter(archive, backend="sqlite:///x.db", cutoff=NOW, started_at=NOW)
    obj = done.write_batch([run_line("sqlite", "run_c", "v1", {})])
    done.supersede({"run_c": "v1"}, obj)
    manifest = done.finish("ok", {"runs": 0})
    assert manifest.endswith("/manifest.json")
    assert archived_versions(archive) == {"run_a": {"v1"}, "run_b": {"v1"}}  # finished purges are not pending
    names = set(archive.names("purges"))
    assert {o.name for o in done.objects} <= names and manifest in names


@pytest.mark.parametrize("url", [
    "", "ftp://host/x", "file://relative/dir", "file:///a/../b", "file:///x?y=1", "s3://", "s3:///prefix",
    "s3://bucket?bogus=1", "s3://bucket?endpoint_url=127.0.0.1:9000", "s3://AKIA:s3cr3tpw@bucket/p",
    "s3://key:s3cr3tpw#@bucket/p",
])
def test_a_bad_archive_url_names_the_setting_and_never_echoes_a_secret(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_archive(url)
    message = str(caught.value)
    assert "PYWORKFLOW_RETENTION_ARCHIVE_URL" in message
    assert "s3cr3tpw" not in message and "s3cr3tpw" not in repr(caught.value.__cause__ or "")


def test_an_unreachable_or_missing_archive_fails_the_check(tmp_path: Path, s3_endpoint: str, s3_bucket: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S3ArchiveStore, "max_attempts", 1)
    with pytest.raises(ArchiveError, match="does not exist"):
        open_archive(f"file://{tmp_path}/nowhere").check()
    with pytest.raises(ArchiveError):
        open_archive(f"s3://no-such-bucket-{os.getpid()}?endpoint_url={s3_endpoint}&region=us-east-1").check()
    with pytest.raises(ArchiveError):
        open_archive("s3://b?endpoint_url=http://127.0.0.1:1&region=us-east-1").put_new("a", b"x")


def test_a_file_archive_reads_only_regular_files_and_never_blocks(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    archive = FileArchiveStore(folder, f"file://{folder}")
    os.mkfifo(folder / "fifo")
    (tmp_path / "outside").write_bytes(b"secret")
    os.symlink(tmp_path / "outside", folder / "link")
    with pytest.raises(ArchiveError, match="not a regular file"):
        archive.get("fifo")
    with pytest.raises(ArchiveError):
        archive.get("link")
