"""What a SQL store occupies after a purge, and whether the space came back (issue 19, item 6)."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.scenario import CUTOFF, NOW
from workflow_retention import by_url, cli
from workflow_retention.cli import EXIT_OK, EXIT_USAGE, main
from workflow_retention.seed import generate


def _seeded_sqlite(tmp_path: Path, *, auto_vacuum: str | None = None, runs: int = 400) -> str:
    path = tmp_path / "store.db"
    if auto_vacuum is not None:  # must be set before the first table is created
        db = sqlite3.connect(path)
        db.execute(f"PRAGMA auto_vacuum = {auto_vacuum}")
        db.execute("CREATE TABLE t (x)")
        db.execute("DROP TABLE t")
        db.close()
    url = f"sqlite://{path}"
    by_url(url).seed(generate(runs, now=NOW, seed=4))
    return url


def _purge(capsys: pytest.CaptureFixture[str], url: str, *extra: str) -> dict[str, Any]:
    assert main(["purge", "--storage", url, "--days", "30", "--json", *extra]) == EXIT_OK
    out, err = capsys.readouterr()
    return {**json.loads(out), "stderr": err}


def test_sqlite_pages_freed_by_a_purge_stay_in_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _seeded_sqlite(tmp_path)
    size = (tmp_path / "store.db").stat().st_size
    space = _purge(capsys, url)["space"]
    assert space["known"] and space["bytes"] == size == (tmp_path / "store.db").stat().st_size
    assert space["freed_bytes"] == 0 and space["free_bytes"] > 0 and space["vacuum"] is None
    assert any("--vacuum" in note and "full VACUUM" in note for note in space["notes"]), space["notes"]


def test_sqlite_vacuum_after_the_purge_returns_the_free_pages(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    url = _seeded_sqlite(tmp_path)
    size = (tmp_path / "store.db").stat().st_size
    report = _purge(capsys, url, "--vacuum")
    space = report["space"]
    assert space["vacuum"].startswith("VACUUM") and space["free_bytes"] == 0
    assert space["freed_bytes"] == size - (tmp_path / "store.db").stat().st_size > 0
    assert "rewrites the whole file and holds the write lock" in report["stderr"]
    assert report["counts"]["runs"] > 0


def test_sqlite_incremental_vacuum_where_the_database_allows_it(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    url = _seeded_sqlite(tmp_path, auto_vacuum="INCREMENTAL")
    space = _purge(capsys, url, "--vacuum")["space"]
    assert space["vacuum"].startswith("PRAGMA incremental_vacuum") and space["free_bytes"] == 0
    assert space["freed_bytes"] > 0
    assert any("auto_vacuum=incremental" in note for note in space["notes"])


def test_vacuum_is_refused_where_it_does_not_apply(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = _seeded_sqlite(tmp_path, runs=20)
    assert main(["purge", "--storage", url, "--days", "30", "--vacuum", "--dry-run"]) == EXIT_USAGE
    assert main(["purge", "--storage", "memory://space_vacuum", "--days", "30", "--vacuum"]) == EXIT_USAGE
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and "--dry-run" in errors[0] and "SQLite stores only" in errors[1], errors


def test_audit_shows_bytes_per_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _seeded_sqlite(tmp_path, runs=50)
    assert main(["audit", "--storage", url, "--days", "30"]) == EXIT_OK
    out = capsys.readouterr().out
    section = out[out.index("\nspace"):]
    assert "workflow_runs" in section and "events" in section and "index bytes" in section, section


def test_postgres_reports_sizes_dead_rows_and_a_lagging_autovacuum(postgres_harness: Any) -> None:
    h = postgres_harness
    store = h.retention()
    store.seed(generate(300, now=NOW, seed=6))
    with h.raw().begin() as conn:  # autovacuum will not run on events: its dead rows stay
        conn.execute(text(f"ALTER TABLE {h.schema}.events SET (autovacuum_enabled = false)"))
    assert store.delete_old_runs(CUTOFF).runs > 0
    deadline = time.monotonic() + 10
    while True:  # the statistics reach pg_stat_user_tables within a second or so of the commit
        space = store.space()
        events = next(t for t in space.tables if t.name == "events")
        if events.dead_rows or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert space.known and space.bytes and space.bytes > 0
    assert events.bytes and events.index_bytes and events.dead_rows and events.dead_rows > 100, events
    assert events.last_vacuum is None
    assert any(n.startswith("autovacuum lags on events") and "per-table autovacuum settings" in n
               for n in space.notes), space.notes
    assert any("VACUUM FULL" in n for n in space.notes)


def test_mysql_reports_data_index_and_free_bytes(mysql_harness: Any, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    h = mysql_harness
    h.retention().seed(generate(200, now=NOW, seed=6))
    monkeypatch.setattr(cli, "_backend", lambda args, settings: h.retention())
    assert main(["purge", "--storage", "memory://unused", "--days", "30", "--json"]) == EXIT_OK
    space = json.loads(capsys.readouterr().out)["space"]
    runs = next(t for t in space["tables"] if t["name"] == "workflow_runs")
    assert space["known"] and space["approximate"] and runs["data_bytes"] > 0 and runs["free_bytes"] is not None
    assert any("information_schema" in n for n in space["notes"])


def test_metrics_export_the_bytes_per_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    url = _seeded_sqlite(tmp_path, runs=50)
    assert main(["metrics", "--storage", url, "--days", "30"]) == EXIT_OK
    families = {f.name: f for f in text_string_to_metric_families(capsys.readouterr().out)}
    tables = {s.labels["table"]: s.value for s in families["workflow_retention_store_space_bytes"].samples}
    assert tables["events"] > 0 and tables["workflow_runs"] > 0, tables
    assert [s.value for s in families["workflow_retention_store_free_bytes"].samples] == [0.0]


def test_postgres_purge_report_shows_the_dead_rows_it_left(postgres_harness: Any, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line waits for the server's statistics, so the report right after the purge has them."""
    h = postgres_harness
    h.retention().seed(generate(300, now=NOW, seed=8))
    monkeypatch.setattr(cli, "_backend", lambda args, settings: h.retention())
    report = _purge(capsys, "memory://unused")
    events = next(t for t in report["space"]["tables"] if t["name"] == "events")
    assert report["counts"]["events"] > 0 and events["dead_rows"] >= report["counts"]["events"] * 0.9, events
    assert report["space"]["freed_bytes"] == 0  # PostgreSQL keeps the files: dead rows, not space returned
