"""Archive before delete, and restore (issue 20), on every backend that declares Capability.ARCHIVE.

Each case seeds the standard scenario through pyworkflow-engine's own classes, snapshots the raw store,
purges with an archive (a file folder, and a bucket on moto's S3 server), and checks the archive and the
store raw. Faults: the archive write fails, the read-back differs, the bucket disappears mid-purge, a
crash between archive and delete: nothing is deleted unarchived and a rerun completes without duplicates.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from tests.archive.conftest import s3_bucket, s3_endpoint  # noqa: F401 - fixtures
from tests.conformance.checks import assert_no_orphans, pyworkflow_views, run_ids, snapshot
from tests.harness.base import Harness
from tests.scenario import CUTOFF, Scenario, build
from workflow_retention.archive import (
    ArchiveError,
    ArchiveMismatch,
    ArchiveStore,
    ArchiveWriter,
    FileArchiveStore,
    open_archive,
)
from workflow_retention.archiving import Archiving, purges, read_archive
from workflow_retention.base import Capability


class Crash(BaseException):
    """A process dying between the archive and the delete (not an Exception: nothing catches it)."""


@pytest.fixture
def archived_backend(backend: Harness) -> Harness:
    if Capability.ARCHIVE not in backend.retention().capabilities:
        pytest.skip(f"the {backend.name} backend has no archive primitives yet (issue 20: not built)")
    return backend


@pytest.fixture
def scenario(archived_backend: Harness) -> Scenario:
    return archived_backend.run(build(archived_backend, archived_backend.pyworkflow(), aux=False))


@pytest.fixture
def folder(tmp_path: Any) -> Any:
    """An empty folder for a file archive (the store's own files may live in tmp_path)."""
    made = tmp_path / "archive"
    made.mkdir()
    return made


@pytest.fixture(params=["file", "s3"])
def archive(request: pytest.FixtureRequest, folder: Any) -> ArchiveStore:
    if request.param == "file":
        return open_archive(f"file://{folder}")
    bucket = request.getfixturevalue("s3_bucket")
    endpoint = request.getfixturevalue("s3_endpoint")
    return open_archive(f"s3://{bucket}/retention?endpoint_url={endpoint}&region=us-east-1")


def archived_ids(store: ArchiveStore) -> Counter:
    """How often each run appears in the archive's batch objects (a duplicate counts twice)."""
    from workflow_retention.archiving import lines_of

    seen: Counter = Counter()
    for name in store.names("purges"):
        if name.endswith(".jsonl.gz"):
            seen.update(line["run_id"] for line in lines_of(store, name) if not line.get("part"))
    return seen


def after_each_archive(monkeypatch: pytest.MonkeyPatch, write: Any) -> None:
    """``write(ids)`` runs right after each batch is archived, before anything of it is deleted (the engine
    writing in that window)."""
    original = Archiving.batch

    def archive_then_write(self: Archiving, ids: Any) -> None:
        original(self, ids)
        write(list(ids))

    monkeypatch.setattr(Archiving, "batch", archive_then_write)


def purge(h: Harness, archive: Any, **kwargs: Any):
    return h.retention(batch_size=kwargs.pop("batch_size", 2)).delete_old_runs(CUTOFF, archive=archive, **kwargs)


def test_purge_with_archive_then_restore_gives_back_the_store(archived_backend: Harness, scenario: Scenario,
                                                              archive: ArchiveStore) -> None:
    h = archived_backend
    before = snapshot(h.inventory())
    views = pyworkflow_views(h, scenario.deleted)
    report = purge(h, archive)
    assert report.runs == len(scenario.deleted)
    assert run_ids(h.inventory()) == scenario.kept | scenario.held
    assert archived_ids(archive) == Counter(scenario.deleted)  # each deleted run once, nothing else
    assert report.archive is not None and report.archive["runs"] == len(scenario.deleted)
    [listed] = purges(archive)
    assert listed["outcome"] == "ok" and listed["runs"] == len(scenario.deleted)

    restored = h.retention().restore(archive)
    assert sorted(restored.written) == sorted(scenario.deleted)
    assert not restored.refused
    assert snapshot(h.inventory()) == before  # raw rows, items, files and index entries as before the purge
    assert pyworkflow_views(h, scenario.deleted) == views  # pyworkflow-engine reads every restored run

    again = h.retention().restore(archive, list(scenario.deleted)[:1])
    assert not again.written and list(again.refused.values()) == ["exists in the store"]


def test_a_dry_run_writes_nothing_to_the_archive(archived_backend: Harness, scenario: Scenario,
                                                 folder: Any) -> None:
    store = open_archive(f"file://{folder}")
    report = purge(archived_backend, store, dry_run=True)
    assert report.runs == len(scenario.deleted)
    assert not list(store.names())


class FailingStore(FileArchiveStore):
    """A file archive whose ``fail_at``-th object write fails (``mode`` "write"), or reads back different
    bytes (``mode`` "mismatch")."""

    def __init__(self, root: Any, fail_at: int, mode: str) -> None:
        super().__init__(root, f"file://{root}")
        self.fail_at, self.mode, self.puts = fail_at, mode, 0

    def put_new(self, name: str, data: bytes) -> None:
        self.puts += 1
        if self.mode == "write" and self.puts == self.fail_at:
            raise ArchiveError(f"injected: cannot write {name}")
        super().put_new(name, data)

    def get(self, name: str) -> bytes:
        data = super().get(name)
        if self.mode == "mismatch" and self.puts == self.fail_at and name.endswith(".jsonl.gz"):
            return data[:-1] + bytes([data[-1] ^ 1])
        return data


@pytest.mark.parametrize("mode", ["write", "mismatch"])
def test_an_archive_that_fails_stops_the_purge_before_the_batch_is_deleted(
        archived_backend: Harness, scenario: Scenario, folder: Any, mode: str) -> None:
    tmp_path = folder
    h = archived_backend
    before = snapshot(h.inventory())
    bad = FailingStore(tmp_path, fail_at=2, mode=mode)
    batches: list[tuple[str, ...]] = []
    with pytest.raises(ArchiveMismatch if mode == "mismatch" else ArchiveError):
        purge(h, bad, on_batch=lambda info: batches.append(info.run_ids))
    gone = {k for k in before if k[0] == "runs"} - {k for k in snapshot(h.inventory()) if k[0] == "runs"}
    archived = set(archived_ids(FileArchiveStore(tmp_path, "x")))
    assert {run_id for _, run_id in gone} <= archived, "a run was deleted without a verified archive"
    assert not set(batches[-1]) & {run_id for _, run_id in gone}, "the failing batch was deleted"
    # the rerun, with the archive working again, completes without duplicates
    report = purge(h, FileArchiveStore(tmp_path, f"file://{tmp_path}"))
    assert run_ids(h.inventory()) == scenario.kept | scenario.held
    counts = archived_ids(FileArchiveStore(tmp_path, "x"))
    assert set(counts) >= scenario.deleted and max(counts.values()) == 1 or mode == "mismatch"
    assert report.archive is not None
    restored = h.retention().restore(FileArchiveStore(tmp_path, "x"))
    assert not restored.refused or set(restored.refused.values()) == {"exists in the store"}
    assert snapshot(h.inventory()) == before


def test_a_bucket_removed_mid_purge_stops_it_before_the_next_batch(
        archived_backend: Harness, scenario: Scenario, s3_bucket: str, s3_endpoint: str,  # noqa: F811
        folder: Any) -> None:
    import boto3

    h = archived_backend
    store = open_archive(f"s3://{s3_bucket}?endpoint_url={s3_endpoint}&region=us-east-1")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    present = run_ids(h.inventory())
    seen: list[tuple[str, ...]] = []

    def remove_bucket(info: Any) -> None:
        seen.append(info.run_ids)
        if info.index == 2:
            for obj in client.list_objects_v2(Bucket=s3_bucket).get("Contents", ()):
                client.delete_object(Bucket=s3_bucket, Key=obj["Key"])
            client.delete_bucket(Bucket=s3_bucket)

    with pytest.raises(ArchiveError):
        purge(h, store, on_batch=remove_bucket)
    after = run_ids(h.inventory())
    gone = present - after
    assert gone <= set(seen[0]), "a run was deleted after its archive disappeared"
    assert set(seen[1]) <= after
    # a rerun with a working archive completes (the file store first finishes the batch it had committed)
    store_again = open_archive(f"file://{folder}")
    purge(h, store_again)
    items = h.inventory()
    assert run_ids(items) == scenario.kept | scenario.held
    assert_no_orphans(items)
    assert max(archived_ids(store_again).values()) == 1


@pytest.mark.parametrize("manifest", [False, True], ids=["killed", "failed-manifest"])
def test_a_crash_between_archive_and_delete_then_rerun_writes_no_duplicate(
        archived_backend: Harness, scenario: Scenario, folder: Any, monkeypatch: pytest.MonkeyPatch,
        manifest: bool) -> None:
    h = archived_backend
    before = snapshot(h.inventory())
    store = open_archive(f"file://{folder}")
    original = ArchiveWriter.write_batch
    crashed: list[set[str]] = []

    def write_then_crash(self: ArchiveWriter, lines: list[dict[str, Any]]) -> Any:
        written = original(self, lines)
        if len(self.objects) == 2:
            crashed.append({line["run_id"] for line in lines})
            raise Crash("killed after archiving batch 2")
        return written

    monkeypatch.setattr(ArchiveWriter, "write_batch", write_then_crash)
    if not manifest:  # a killed process writes no manifest at all
        monkeypatch.setattr(Archiving, "abandon", lambda self, report, exc: None)
    with pytest.raises(Crash):
        purge(h, store)
    monkeypatch.setattr(ArchiveWriter, "write_batch", original)
    assert crashed[0] <= run_ids(h.inventory()), "the crashed batch was deleted"

    report = purge(h, store)
    assert run_ids(h.inventory()) == scenario.kept | scenario.held
    counts = archived_ids(store)
    assert set(counts) == scenario.deleted
    assert max(counts.values()) == 1, f"archived twice: {[r for r, n in counts.items() if n > 1]}"
    assert report.archive is not None and report.archive["already_archived"] == len(crashed[0])
    restored = h.retention().restore(store)
    assert sorted(restored.written) == sorted(scenario.deleted)
    assert snapshot(h.inventory()) == before
    assert set(read_archive(store)) == scenario.deleted


def test_a_run_changed_after_it_was_archived_is_kept_and_recorded_superseded(
        archived_backend: Harness, scenario: Scenario, folder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyworkflow.storage.schemas import RunStatus

    from workflow_retention.archiving import archived_runs

    h = archived_backend
    pw = h.pyworkflow()
    store = open_archive(f"file://{folder}")
    touched: dict[str, str] = {}

    def engine_writes(ids: list[str]) -> None:
        if not touched and ids and ids[0] in scenario.deleted:
            victim = "run_tree_grandchild" if "run_tree_grandchild" in ids else ids[0]
            h.run(pw.update_run_status(victim, RunStatus.FAILED))  # after the archive, before the delete
            touched["id"] = victim

    after_each_archive(monkeypatch, engine_writes)
    report = purge(h, store)
    victim = touched["id"]
    assert victim in run_ids(h.inventory()) and report.changed == 1
    assert report.archive is not None and report.archive["superseded"] >= 1
    [listed] = purges(store)
    [shown] = [r for r in archived_runs(store, listed["folder"]) if r["run_id"] == victim]
    assert shown["superseded"]
    restored = h.retention().restore(store)
    assert restored.refused.get(victim) == "exists in the store"  # kept by the purge: never overwritten
