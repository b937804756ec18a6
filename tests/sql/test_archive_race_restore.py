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
