"""Stores created by older pyworkflow-engine releases: missing tables are skipped and reported, missing
indexes are named with the statement that adds them, and the purge stays linear or refuses.

The DDL of each release is in ``old_schemas/<dialect>-<release>.sql``, extracted verbatim from the
release's wheel (see ``old_schemas/README.md``), so a clean clone needs no network. A store is
made by running it statement by statement and stopping at the first failure, as the release's
own ``connect()`` did (its 0.3.2 MySQL ``signals`` DDL has a trailing comma, so such a store has
no ``signals``, ``stream_subscriptions`` or ``signal_acknowledgments``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, inspect, text

from tests.conformance.checks import assert_no_orphans, run_ids
from tests.harness.mysql import MySQLHarness
from tests.harness.postgres import PostgresHarness
from tests.harness.sqlite import SQLiteHarness
from tests.sql.conftest import insert_rows, run_row
from tests.sql.live_writer import CUTOFF, NOW, OLD
from workflow_retention.exceptions import StorageError

SCHEMAS = Path(__file__).parent / "old_schemas"
RELEASES = sorted(p.stem for p in SCHEMAS.glob("*.sql"))
DISCOVERY_INDEX = "CREATE INDEX idx_runs_created_at_run_id ON workflow_runs (created_at DESC, run_id DESC)"


def statements(path: Path) -> list[str]:
    body = "\n".join(line for line in path.read_text().splitlines() if not line.startswith("--"))
    return [s.strip() for s in re.split(r";\s*$", body, flags=re.M) if s.strip()]


def create(harness: Any, path: Path) -> str | None:
    """Run a release's DDL until its first failure (as its connect() did); that failure, if any."""
    mysql8 = False
    with harness.raw().connect() as conn:
        if harness.name == "mysql":
            mysql8 = "mariadb" not in conn.exec_driver_sql("SELECT VERSION()").scalar_one().lower()
        for ddl in statements(path):
            if mysql8:  # MySQL 8 takes text defaults only as expressions (MariaDB and old MySQL took both)
                ddl = re.sub(r"(TEXT[^,\n]*?DEFAULT )('[^']*')", r"\1(\2)", ddl)
            try:
                conn.exec_driver_sql(ddl)
                conn.commit()
            except Exception as exc:
                conn.rollback()
                return str(exc)
    return None


@pytest.fixture(params=RELEASES)
def old_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """An empty store with the schema a release created (each in its own file, schema or database)."""
    dialect = request.param.split("-")[0]
    if dialect == "sqlite":
        harness: Any = SQLiteHarness(tmp_path)
    elif dialect == "postgres":
        harness = PostgresHarness(request.getfixturevalue("postgres_service").url,
                                  request.getfixturevalue("postgres_schema"))
    else:
        harness = MySQLHarness(request.getfixturevalue("mysql_service").url, request.getfixturevalue("mysql_database"))
    harness.release = request.param.split("-", 1)[1]
    harness.ddl_failure = create(harness, SCHEMAS / f"{request.param}.sql")
    yield harness
    harness.close()


def tables(harness: Any) -> set[str]:
    with harness.raw().connect() as conn:
        return set(inspect(conn).get_table_names())


def fill(harness: Any) -> dict[str, set[str]]:
    """Runs written with only the columns every release has: expired (a parent and child), live, recent."""
    backend = harness.retention()
    have = tables(harness)
    runs = {"run_old": ("completed", OLD, None), "run_old_child": ("failed", OLD, "run_old"),
            "run_live": ("running", OLD, None), "run_recent": ("completed", NOW - timedelta(days=1), None)}
    insert_rows(harness, "workflow_runs", [run_row(harness, r, s, t, parent=p) for r, (s, t, p) in runs.items()])
    ts = backend.db_time(OLD)
    for run_id in runs:
        insert_rows(harness, "events", [{"event_id": f"evt_{run_id}_{n}", "run_id": run_id, "sequence": n,
                                         "type": "step.completed", "timestamp": ts, "data": "{}"} for n in range(3)])
        insert_rows(harness, "steps", [{"step_id": f"step_{run_id}", "run_id": run_id, "step_name": "s",
                                        "status": "completed", "created_at": ts, "input_args": "[]",
                                        "input_kwargs": "{}"}])
        insert_rows(harness, "hooks", [{"hook_id": f"hook_{run_id}", "run_id": run_id, "token": f"{run_id}:hook",
                                        "created_at": ts, "status": "received", "metadata": "{}"}])
        insert_rows(harness, "cancellation_flags", [{"run_id": run_id, "created_at": ts}])
        if "checkpoints" in have:
            insert_rows(harness, "checkpoints", [{"step_run_id": f"{run_id}:step_{n}",
                                                  "data": backend.dialect.json({"n": n}),
                                                  "created_at": ts, "updated_at": ts} for n in range(2)])
    return {"gone": {"run_old", "run_old_child"}, "kept": {"run_live", "run_recent"}}


def test_the_release_schema_is_what_the_release_created(old_store: Any) -> None:
    """The fixture itself: the tables each release did and did not create."""
    have = tables(old_store)
    release = tuple(int(x) for x in old_store.release.split("."))
    assert {"workflow_runs", "events", "steps", "hooks", "cancellation_flags"} <= have
    assert ("checkpoints" in have) == (release >= (0, 2, 0))
    assert ("signals" in have) == (release >= (0, 2, 5) and old_store.ddl_failure is None)
    assert ("scheduled_signals" in have) == (old_store.name == "postgres" and release >= (0, 2, 7))
    if old_store.name == "mysql" and release >= (0, 2, 5):
        assert old_store.ddl_failure and "signals" not in have  # its trailing comma


def test_check_names_what_is_missing_with_the_statement_that_adds_it(old_store: Any) -> None:
    facts = old_store.retention().check()
    missing = {k: v for k, v in facts.items() if k.startswith("missing")}
    have = tables(old_store)
    for name in ("checkpoints", "signals", "stream_subscriptions", "signal_acknowledgments"):
        assert (f"missing table {name}" in missing) == (name not in have), missing
    assert DISCOVERY_INDEX in missing["missing index on workflow_runs (created_at, run_id)"]
    assert not any("refuses" in v for v in missing.values()), missing


def test_purge_audit_and_orphan_sweep_work_and_report_what_is_missing(old_store: Any) -> None:
    expected = fill(old_store)
    have = tables(old_store)
    backend = old_store.retention(batch_size=1)
    audit = backend.audit(older_than=CUTOFF, grace=timedelta(0))
    report = backend.delete_old_runs(CUTOFF)
    items = old_store.inventory()
    assert run_ids(items) == expected["kept"]
    assert not [i for i in items if i.run_id in expected["gone"]]
    assert (report.runs, report.skipped) == (2, 0)
    assert report.counts["events"] == 6 and report.counts["hooks"] == 2
    assert report.counts["checkpoints"] == (4 if "checkpoints" in have else 0)
    warned = " | ".join(report.warnings)
    assert DISCOVERY_INDEX in warned, warned
    if "checkpoints" not in have:
        assert "table checkpoints does not exist" in warned
        assert any("checkpoints" in w for w in audit.orphans.warnings)
    if "signals" not in have:
        assert "table signals does not exist" in warned
    assert (audit.purge.runs, audit.purge.counts["events"]) == (2, 6)
    assert DISCOVERY_INDEX in " ".join(audit.purge.warnings)
    assert sum(audit.census.runs_by_status.values()) == 4
    assert_no_orphans(items)
    assert backend.delete_old_runs(CUTOFF).runs == 0
    assert backend.sweep_orphans(grace=timedelta(0)).total == 0


def test_without_the_discovery_index_candidates_are_read_in_primary_key_order(old_store: Any) -> None:
    """Linear: one scan of the primary key, never an ORDER BY created_at that has no index to walk."""
    fill(old_store)
    backend = old_store.retention(batch_size=1)
    selects: list[tuple[str, Any]] = []

    def candidates(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if "AS p_run_id" in statement:
            selects.append((statement, parameters))

    event.listen(backend.engine, "before_cursor_execute", candidates)
    backend.delete_old_runs(CUTOFF)
    assert selects and all(re.search(r"ORDER BY workflow_runs\.run_id\s+LIMIT", s) for s, _ in selects), selects[0]
    if old_store.name == "mysql":  # the server's own word: the primary key, in order, no filesort
        with old_store.raw().connect() as conn:
            plan = conn.exec_driver_sql("EXPLAIN " + selects[-1][0], selects[-1][1]).mappings().all()
        first = plan[0]
        assert first["key"] == "PRIMARY" and "filesort" not in (first["Extra"] or ""), plan


NEEDED = [("idx_steps_run_id", "steps"), ("idx_runs_parent_run_id", "workflow_runs"),
          ("idx_events_run_id_sequence", "events")]


@pytest.mark.parametrize("index, table", NEEDED)
def test_the_purge_refuses_when_an_index_it_needs_is_missing(sql: Any, index: str, table: str) -> None:
    """Without it every batch would scan a whole table. (MySQL keeps an index on every foreign-key
    column, except that with FOREIGN_KEY_CHECKS=0, as the harness's raw connection has, it can be
    dropped: a restore can leave a store so.)"""
    on = f" ON {table}" if sql.name == "mysql" else ""
    drops = [index]
    if index == "idx_events_run_id_sequence":  # pyworkflow made three indexes that start with run_id
        drops = ["idx_events_run_id_type", "idx_events_run_id_step_id_type", index]
    with sql.raw().begin() as conn:
        present = {i["name"] for i in inspect(conn).get_indexes(table)}
        for name in drops:
            if name in present:
                conn.execute(text(f"DROP INDEX {name}{on}"))
    insert_rows(sql, "workflow_runs", [run_row(sql, "run_old", "completed", OLD)])
    backend = sql.retention()
    with pytest.raises(StorageError, match=rf"purge refused.*add it with: CREATE INDEX {index}") as refused:
        backend.delete_old_runs(CUTOFF)
    assert run_ids(sql.inventory()) == {"run_old"}
    assert table in str(refused.value)
    preview = backend.audit(older_than=CUTOFF).purge
    assert preview.runs == 0 and any(f"CREATE INDEX {index}" in w for w in preview.warnings)
    facts = backend.check()
    assert any("refuses" in str(v) and index in str(v) for v in facts.values()), facts

