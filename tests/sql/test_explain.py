"""``explain`` on rows pyworkflow would not write: the reason is the purge's own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.sql.conftest import insert_rows, run_row

NOW = datetime.now(UTC).replace(microsecond=0)
CUTOFF = NOW - timedelta(days=30)
OLD = NOW - timedelta(days=40)


def test_an_unreadable_created_at_is_named_as_such(sqlite_harness: Any) -> None:
    insert_rows(sqlite_harness, "workflow_runs", [run_row(sqlite_harness, "run_bad", "completed", OLD,
                                                          created="garbage")])
    answer = sqlite_harness.retention().explain("run_bad", CUTOFF)
    assert not answer.deleted and "created_at" in answer.reasons[0], answer.reasons


def test_a_run_created_after_the_cutoff_is_not_selected_and_explain_says_so(sql: Any) -> None:
    """Clock skew: updated_at before created_at. A purge finds expired runs by created_at, so it keeps this one
    until the cutoff passes its created_at; explain must say what the purge does, and why."""
    insert_rows(sql, "workflow_runs", [run_row(sql, "run_skewed", "completed", OLD, created=CUTOFF + timedelta(days=1)),
                                       run_row(sql, "run_plain", "completed", OLD)])
    retention = sql.retention()
    skewed = retention.explain("run_skewed", CUTOFF)
    assert not skewed.deleted and "created_at" in skewed.reasons[0], skewed.reasons
    assert retention.explain("run_plain", CUTOFF).deleted
    assert retention.delete_old_runs(CUTOFF).runs == 1
