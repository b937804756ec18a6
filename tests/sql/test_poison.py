"""One poison record blocks nothing: unreadable timestamps, parent cycles and bad settings are reported.

A run whose ``updated_at`` or ``created_at`` cannot be read (SQLite text that is no timestamp
or has no UTC form, PostgreSQL ``infinity``/``-infinity`` and years psycopg cannot load, MySQL's
zero date) is left alone, counted in ``report.skipped`` with a warning naming it, and every
other expired run is purged; ``audit`` describes such a store without failing. Runs whose
``parent_run_id`` links loop are never reached by a plan: they are reported too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from tests.conformance.checks import assert_no_orphans, run_ids
from tests.sql.conftest import insert_rows, run_row
from workflow_retention.backends import by_url
from workflow_retention.exceptions import ConfigurationError

NOW = datetime.now(UTC).replace(microsecond=0)
CUTOFF = NOW - timedelta(days=30)
OLD = NOW - timedelta(days=40)


def _purge_and_audit(harness: Any, poisoned: set[str], batch_size: int = 500) -> None:
    """Every poisoned run is kept and reported once; the other expired runs go; audit works."""
    insert_rows(harness, "workflow_runs", [run_row(harness, f"run_fine_{i}", "completed", OLD) for i in range(3)])
    backend = harness.retention(batch_size=batch_size)
    audit = backend.audit(older_than=CUTOFF)
    dry = audit.purge
    report = backend.delete_old_runs(CUTOFF)
    assert run_ids(harness.inventory()) == poisoned
    assert (report.runs, report.skipped) == (3, len(poisoned))
    for run_id in poisoned:
        assert sum(run_id in w for w in report.warnings) == 1, (run_id, report.warnings)
    assert (dry.runs, dry.skipped) == (report.runs, report.skipped)
    assert sum(audit.census.runs_by_status.values()) == len(poisoned) + 3
    assert backend.delete_old_runs(CUTOFF).runs == 0


def _raw_runs(harness: Any, rows: dict[str, tuple[str, str]], status: str = "completed") -> None:
    """Runs whose updated_at/created_at are written as given (SQL literals, cast by the server)."""
    old = harness.retention().db_time(OLD)
    with harness.raw().begin() as conn:
        for run_id, (updated, created) in rows.items():
            conn.execute(text(
                "INSERT INTO workflow_runs (run_id, workflow_name, status, created_at, updated_at, input_args, "
                f"input_kwargs) VALUES (:r, 'w', :s, {created or ':old'}, {updated or ':old'}, '[]', '{{}}')"),
                {"r": run_id, "s": status, "old": old})


def test_sqlite_timestamps_without_a_utc_form_are_reported(sqlite_harness: Any) -> None:
    h = sqlite_harness
    _raw_runs(h, {"run_year_10000": ("'9999-12-31T23:59:59-14:00'", ""),
                  "run_year_0": ("'0001-01-01T00:00:00+14:00'", ""),
                  "run_created_year_0": ("", "'0001-01-01T00:00:00+14:00'")})
    _purge_and_audit(h, {"run_year_10000", "run_year_0", "run_created_year_0"})


def test_sqlite_created_at_that_is_not_iso_text_is_reported(sqlite_harness: Any) -> None:
    """Text sorts after every ISO timestamp, so the created_at index range alone never finds it."""
    h = sqlite_harness
    _raw_runs(h, {"run_words": ("", "'yesterday'"), "run_empty": ("", "''"), "run_number": ("", "1700000000"),
                  "run_future_garbage": ("", "'99999-01-01'")})
    _purge_and_audit(h, {"run_words", "run_empty", "run_number", "run_future_garbage"})


def test_postgres_infinite_and_unloadable_timestamps_are_reported(postgres_harness: Any) -> None:
    h = postgres_harness
    _raw_runs(h, {"run_upd_minus_inf": ("'-infinity'", ""), "run_upd_plus_inf": ("'infinity'", ""),
                  "run_upd_bc": ("'0044-03-15 BC'", ""), "run_upd_year_20000": ("'20000-01-01'", ""),
                  "run_created_minus_inf": ("", "'-infinity'"), "run_created_plus_inf": ("", "'infinity'")})
    _purge_and_audit(h, {"run_upd_minus_inf", "run_upd_plus_inf", "run_upd_bc", "run_upd_year_20000",
                         "run_created_minus_inf", "run_created_plus_inf"})


def test_postgres_the_keyset_cursor_crosses_infinite_created_at(postgres_harness: Any) -> None:
    """Many runs created at -infinity, more than one page: each is reported once, none loops."""
    h = postgres_harness
    _raw_runs(h, {f"run_inf_{i:02d}": ("", "'-infinity'") for i in range(20)})
    _raw_runs(h, {f"run_pinf_{i:02d}": ("", "'infinity'") for i in range(20)})
    _purge_and_audit(h, {f"run_inf_{i:02d}" for i in range(20)} | {f"run_pinf_{i:02d}" for i in range(20)},
                     batch_size=1)


def test_postgres_an_infinite_event_timestamp_does_not_break_the_audit(postgres_harness: Any) -> None:
    h = postgres_harness
    insert_rows(h, "workflow_runs", [run_row(h, "run_live", "running", OLD)])
    with h.raw().begin() as conn:
        conn.execute(text("INSERT INTO events (event_id, run_id, sequence, type, timestamp, data) VALUES "
                          "('evt_inf', 'run_live', 0, 'workflow.started', 'infinity', '{}'), "
                          "('evt_orphan', 'run_gone', 0, 'workflow.started', '-infinity', '{}')"))
    audit = h.retention().audit(older_than=CUTOFF)
    assert audit.census.kinds["events"].count == 2
    assert audit.orphans.total == 0 and audit.orphans.skipped == 1
    assert any("evt_orphan" in w for w in audit.orphans.warnings)


def test_mysql_zero_dates_are_reported(mysql_harness: Any) -> None:
    h = mysql_harness
    with h.raw().begin() as conn:
        conn.exec_driver_sql("SET SESSION sql_mode = ''")  # lets the zero date in, as old servers did
        _raw_runs_on(conn, h, {"run_upd_zero": ("'0000-00-00 00:00:00'", ""),
                               "run_created_zero": ("", "'0000-00-00 00:00:00'")})
    _purge_and_audit(h, {"run_upd_zero", "run_created_zero"})


def _raw_runs_on(conn: Any, harness: Any, rows: dict[str, tuple[str, str]]) -> None:
    old = harness.retention().db_time(OLD)
    for run_id, (updated, created) in rows.items():
        conn.execute(text(
            "INSERT INTO workflow_runs (run_id, workflow_name, status, created_at, updated_at, input_args, "
            f"input_kwargs) VALUES (:r, 'w', 'completed', {created or ':old'}, {updated or ':old'}, '[]', '{{}}')"),
            {"r": run_id, "old": old})


# -- parent cycles -------------------------------------------------------------------------------


def test_parent_cycles_are_kept_and_reported(sql: Any) -> None:
    """A <-> B loop, a run that is its own parent, and an expired child under the loop: none has a root."""
    insert_rows(sql, "workflow_runs", [
        run_row(sql, "run_loop_a", "completed", OLD, parent="run_loop_b"),
        run_row(sql, "run_loop_b", "failed", OLD, parent="run_loop_a"),
        run_row(sql, "run_self", "completed", OLD, parent="run_self"),
        run_row(sql, "run_under_loop", "completed", OLD, parent="run_loop_a")])
    for run_id in ("run_loop_a", "run_self", "run_under_loop"):  # explain names the loop as the reason
        answer = sql.retention().explain(run_id, CUTOFF)
        assert not answer.deleted and "links loop" in answer.reasons[0], (run_id, answer.reasons)
    _purge_and_audit(sql, {"run_loop_a", "run_loop_b", "run_self", "run_under_loop"})
    assert_no_orphans(sql.inventory())


def test_a_long_chain_is_planned_once_from_its_root(sql: Any) -> None:
    """200 expired generations in one line: all go (children first), with no loop reported."""
    insert_rows(sql, "workflow_runs", [
        run_row(sql, f"run_gen_{i:03d}", "completed", OLD, parent=f"run_gen_{i - 1:03d}" if i else None)
        for i in range(200)])
    report = sql.retention(batch_size=7).delete_old_runs(CUTOFF)
    assert (report.runs, report.skipped, report.held) == (200, 0, 0)
    assert not run_ids(sql.inventory())


# -- settings --------------------------------------------------------------------------------------


def test_an_unknown_mysql_charset_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="charset") as error:
        by_url("mysql://u:s3cret@h:3306/db?charset=bogus")
    assert "s3cret" not in str(error.value) and "bogus" in str(error.value)
    assert by_url("mysql://u@h:3306/db?charset=utf8mb4").dialect.sa_url.query["charset"] == "utf8mb4"


@pytest.mark.parametrize("query, setting", [("sslmode=bogus", "sslmode"), ("connect_timeout=soon", "connect_timeout")])
def test_a_bad_postgres_setting_is_a_configuration_error(query: str, setting: str) -> None:
    """As MySQL's charset and connect_timeout: refused before connecting, naming the setting (exit 2)."""
    with pytest.raises(ConfigurationError, match=setting) as error:
        by_url(f"postgresql://u:s3cret@h:5432/db?{query}")
    assert "s3cret" not in str(error.value)
    assert by_url("postgresql://u@h:5432/db?sslmode=verify-full&connect_timeout=5").dialect.sa_url.query == \
        {"sslmode": "verify-full", "connect_timeout": "5"}
