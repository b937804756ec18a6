"""A run kept by one purge (superseded) and deleted by the next comes back from the next one's archive."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sql.live_writer import CUTOFF, event_of, fill_heavy
from workflow_retention.archive import open_archive
from workflow_retention.archiving import Archiving


def test_a_run_superseded_with_its_version_unchanged_is_restored_from_the_purge_that_deleted_it(
        sql: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fill_heavy(sql, 2, 3, prefix="run")
    store = open_archive(f"file://{tmp_path}")
    original = Archiving.batch
    pw = sql.pyworkflow()

    def archive_then_engine_writes(self: Archiving, ids: Any) -> None:
        original(self, ids)
        if "run_00000" in ids:  # an event: the run's version (status, updated_at) stays the same
            sql.run(pw.record_event(event_of("run_00000", "hook.received")))

    monkeypatch.setattr(Archiving, "batch", archive_then_engine_writes)
    first = sql.retention(batch_size=2).delete_old_runs(CUTOFF, archive=store)
    assert first.changed == 1
    monkeypatch.setattr(Archiving, "batch", original)
    second = sql.retention(batch_size=2).delete_old_runs(CUTOFF, archive=store)  # deletes it, archived again
    assert second.runs == 1
    restored = sql.retention().restore(store, ["run_00000"])
    assert restored.written == ["run_00000"], restored.refused
    assert sum(1 for i in sql.inventory() if i.kind == "events" and i.run_id == "run_00000") == 4


class Crash(BaseException):
    """The process dies between the archive and the delete."""


def test_a_row_added_between_a_crash_and_the_rerun_is_archived_before_the_rerun_deletes_it(
        sql: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from workflow_retention.archive import ArchiveWriter

    fill_heavy(sql, 2, 3, prefix="run")
    store = open_archive(f"file://{tmp_path}")
    original = ArchiveWriter.write_batch

    def write_then_crash(self: ArchiveWriter, lines: list[dict[str, Any]]) -> Any:
        original(self, lines)
        raise Crash("killed after archiving the first batch")

    monkeypatch.setattr(ArchiveWriter, "write_batch", write_then_crash)
    monkeypatch.setattr(Archiving, "abandon", lambda self, report, exc: None)  # killed: no manifest
    with pytest.raises(Crash):
        sql.retention(batch_size=2).delete_old_runs(CUTOFF, archive=store)
    monkeypatch.setattr(ArchiveWriter, "write_batch", original)
    pw = sql.pyworkflow()
    sql.run(pw.record_event(event_of("run_00000", "hook.received")))  # same version, one more event
    sql.retention(batch_size=2).delete_old_runs(CUTOFF, archive=store)
    restored = sql.retention().restore(store, ["run_00000"])
    assert restored.written == ["run_00000"], restored.refused
    assert sum(1 for i in sql.inventory() if i.kind == "events" and i.run_id == "run_00000") == 4  # none lost
