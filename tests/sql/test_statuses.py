"""One status rule on every SQL dialect: statuses compare exactly as pyworkflow writes them (lower case).

MySQL's ``utf8mb4_unicode_ci`` makes ``'RUNNING' = 'running'`` true in SQL, so every SQL
condition on a status is written to compare exactly; Python decides with
:class:`~workflow_retention.planning.RunRef` (an unknown status is never deleted, holds its
parent and is reported).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conformance.checks import run_ids
from tests.sql.conftest import insert_rows, run_row

NOW = datetime.now(UTC).replace(microsecond=0)
CUTOFF = NOW - timedelta(days=30)
OLD = NOW - timedelta(days=40)


def test_a_live_status_in_another_case_is_reported_like_any_unknown_status(sql: Any) -> None:
    insert_rows(sql, "workflow_runs", [run_row(sql, "run_shout", "RUNNING", OLD),
                                       run_row(sql, "run_title", "Pending", OLD),
                                       run_row(sql, "run_gone", "completed", OLD)])
    dry = sql.retention().delete_old_runs(CUTOFF, dry_run=True)
    report = sql.retention().delete_old_runs(CUTOFF)
    assert run_ids(sql.inventory()) == {"run_shout", "run_title"}
    assert (report.runs, report.skipped) == (1, 2)
    assert "run_shout" in " ".join(report.warnings) and "run_title" in " ".join(report.warnings)
    assert (dry.runs, dry.skipped) == (report.runs, report.skipped)


def test_the_audit_counts_statuses_exactly_as_stored(sql: Any) -> None:
    insert_rows(sql, "workflow_runs", [run_row(sql, "run_a", "completed", OLD), run_row(sql, "run_b", "COMPLETED", OLD),
                                       run_row(sql, "run_c", "COMPLETED", NOW)])
    census = sql.retention().audit().census
    assert dict(census.runs_by_status) == {"completed": 1, "COMPLETED": 2}


def test_schedules_and_subscriptions_go_only_with_the_exact_status(sql: Any) -> None:
    """pyworkflow writes 'deleted', 'completed', 'terminated'; other spellings are kept everywhere."""
    backend = sql.retention()
    ts = backend.db_time(OLD)
    insert_rows(sql, "schedules", [
        {"schedule_id": sid, "workflow_name": "w", "spec": "{}", "spec_type": "cron", "status": status,
         "overlap_policy": "skip", "created_at": ts, "updated_at": ts, "deleted_at": ts,
         "input_args": "[]", "input_kwargs": "{}"}
        for sid, status in (("sched_gone", "deleted"), ("sched_odd", "DELETED"))])
    insert_rows(sql, "stream_subscriptions", [
        {"stream_id": "s", "step_run_id": step, "signal_types": "[]", "status": status, "created_at": ts}
        for step, status in (("step_done", "completed"), ("step_odd", "COMPLETED"), ("step_end", "Terminated"))])
    report = backend.delete_old_runs(CUTOFF)
    assert (report.counts["schedules"], report.counts["subscriptions"]) == (1, 1)
    keys = {(i.kind, i.key) for i in sql.inventory()}
    assert {("schedules", "sched_odd"), ("subscriptions", "s:step_odd"), ("subscriptions", "s:step_end")} <= keys
    assert not {("schedules", "sched_gone"), ("subscriptions", "s:step_done")} & keys
