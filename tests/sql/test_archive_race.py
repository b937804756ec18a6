"""An archive holds everything the purge deletes, even when the engine writes between the two (issue 20).

The archive hook gathers a batch at its boundary, outside the delete's transaction. A row the engine adds
to one of the batch's runs after that (an event, a hook, a cancellation flag: writes that change neither
the run's status nor its updated_at) must not be deleted unarchived: under the delete's lock the purge
counts each run's rows again, and a run whose rows differ from the archived ones is kept (and recorded
superseded), like a run whose version changed.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.sql.live_writer import CUTOFF, event_of, fill_heavy
from workflow_retention.archive import open_archive
from workflow_retention.archiving import Archiving, archived_runs, purges


def test_an_event_appended_after_the_archive_keeps_the_run(sql: Any, tmp_path: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fill_heavy(sql, 4, 3, prefix="run")  # run_00000 .. run_00003, three events each
    store = open_archive(f"file://{tmp_path}")
    original = Archiving.batch
    pw = sql.pyworkflow()

    def archive_then_engine_writes(self: Archiving, ids: Any) -> None:
        original(self, ids)
        if "run_00000" in ids:
            sql.run(pw.record_event(event_of("run_00000", "hook.received")))  # after the archive, before the delete

    monkeypatch.setattr(Archiving, "batch", archive_then_engine_writes)
    report = sql.retention(batch_size=2).delete_old_runs(CUTOFF, archive=store)
    left = sql.inventory()
    assert {i.run_id for i in left if i.kind == "runs"} == {"run_00000"}
    assert sum(1 for i in left if i.kind == "events" and i.run_id == "run_00000") == 4  # nothing of it lost
    assert report.runs == 3 and report.changed == 1
    [listed] = purges(store)
    [shown] = [r for r in archived_runs(store, listed["folder"]) if r["run_id"] == "run_00000"]
    assert shown["superseded"]
