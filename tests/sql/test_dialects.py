"""Dialect differences: step-checkpoint matching, stored timestamps, collations, URLs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conformance.checks import run_ids
from tests.sql.conftest import insert_rows, run_row
from workflow_retention.backends import by_url
from workflow_retention.exceptions import ConfigurationError

NOW = datetime.now(UTC).replace(microsecond=0)
CUTOFF = NOW - timedelta(days=30)
OLD = NOW - timedelta(days=40)


def checkpoint_rows(harness: Any, keys: list[str]) -> list[dict[str, Any]]:
    backend = harness.retention()
    ts = backend.db_time(OLD)
    return [{"step_run_id": k, "data": backend.dialect.json({"k": k}), "created_at": ts, "updated_at": ts}
            for k in keys]


def checkpoint_keys(harness: Any) -> set[str]:
    return {i.key for i in harness.inventory() if i.kind == "checkpoints"}


#: run_a goes; the other runs stay. Keys that a wildcard, a byte range or a collation could confuse.
GOING = ["run_a:step_1", "run_a:", "run_a:x:y"]
STAYING = ["runXa:step_1", "run_ab:step_1", "run_a;step", "run_a", "run-a:step", "run_a.b:s", "stream_step_x_run_a"]


def _hostile_store(harness: Any) -> None:
    recent = NOW - timedelta(days=1)
    insert_rows(harness, "workflow_runs", [
        run_row(harness, "run_a", "completed", OLD), run_row(harness, "runXa", "completed", recent),
        run_row(harness, "run_ab", "completed", recent), run_row(harness, "run-a", "completed", recent),
        run_row(harness, "run_a.b", "completed", recent)])
    insert_rows(harness, "checkpoints", checkpoint_rows(harness, GOING + STAYING))


def test_step_checkpoints_match_exactly_their_run(sql: Any) -> None:
    _hostile_store(sql)
    report = sql.retention().delete_old_runs(CUTOFF)
    assert report.runs == 1 and report.counts["checkpoints"] == len(GOING)
    assert checkpoint_keys(sql) == set(STAYING)


def test_a_linguistic_collation_falls_back_to_an_exact_like(postgres_harness: Any) -> None:
    h = postgres_harness
    with h.raw().begin() as conn:
        conn.exec_driver_sql('ALTER TABLE checkpoints ALTER COLUMN step_run_id TYPE text COLLATE "en-x-icu"')
    _hostile_store(h)
    backend = h.retention()
    assert backend.dialect.codepoint_collation() is False
    backend.delete_old_runs(CUTOFF)
    assert checkpoint_keys(h) == set(STAYING)
    # Why: under this collation ':' sorts after ';', so the byte range would have matched nothing.
    with h.raw().connect() as conn:
        assert conn.exec_driver_sql("SELECT 'run_a:s' < 'run_a;' COLLATE \"en-x-icu\"").scalar_one() is False


def test_sqlite_text_timestamps_compare_as_instants(sqlite_harness: Any) -> None:
    h = sqlite_harness
    cut = CUTOFF
    cases = {  # run_id -> (stored updated_at text, expired?)
        "run_plus14": ((cut - timedelta(seconds=1)).astimezone(_tz(14)).isoformat(), True),
        "run_minus12": ((cut - timedelta(seconds=1)).astimezone(_tz(-12)).isoformat(), True),
        "run_at_cutoff_530": (cut.astimezone(_tz(5.5)).isoformat(), False),
        "run_after_minus12": ((cut + timedelta(seconds=1)).astimezone(_tz(-12)).isoformat(), False),
        "run_zulu": ((cut - timedelta(microseconds=1)).isoformat().replace("+00:00", "Z"), True),
        "run_naive_utc": ((cut - timedelta(minutes=1)).replace(tzinfo=None).isoformat(), True),
        "run_space_sep": ((cut - timedelta(minutes=1)).isoformat(sep=" "), True),
        "run_plus14_after": ((cut + timedelta(minutes=1)).astimezone(_tz(14)).isoformat(), False),
    }
    insert_rows(h, "workflow_runs", [run_row(h, r, "failed", text, created=text) for r, (text, _) in cases.items()])
    report = h.retention(batch_size=3).delete_old_runs(cut)
    assert run_ids(h.inventory()) == {r for r, (_, gone) in cases.items() if not gone}
    assert report.runs == sum(gone for _, gone in cases.values())


def test_typed_timestamps_are_exact_to_the_microsecond(server: Any) -> None:
    insert_rows(server, "workflow_runs", [
        run_row(server, "run_just_before", "completed", CUTOFF - timedelta(microseconds=1)),
        run_row(server, "run_at_cutoff", "completed", CUTOFF)])
    report = server.retention().delete_old_runs(CUTOFF)
    assert report.runs == 1 and run_ids(server.inventory()) == {"run_at_cutoff"}


def _tz(hours: float) -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=hours))


# -- schema fidelity -------------------------------------------------------------------------


def test_mysql_ddl_uses_only_mysql_8_text_defaults() -> None:
    """MySQL 8 rejects a literal DEFAULT on TEXT columns; only expression defaults are allowed."""
    from sqlalchemy.dialects import mysql
    from sqlalchemy.schema import CreateTable

    from workflow_retention.backends.sql.layout import build_metadata
    from workflow_retention.backends.sql.mysql import MySQLDialect

    for table in build_metadata(MySQLDialect.types).sorted_tables:
        ddl = str(CreateTable(table).compile(dialect=mysql.dialect()))
        for line in ddl.splitlines():
            if "TEXT" in line and "DEFAULT" in line:
                assert "DEFAULT ('" in line, line


# -- URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["sqlite:relative.db", "sqlite://host/abs.db", "sqlite:///abs/dir/",
                                 "sqlite:///abs.db?mode=ro", "postgresql://host", "postgresql://h/db?bogus=1",
                                 "postgresql://h/db?schema=Bad-Name", "mysql://h", "mysql://h/db?x=1",
                                 "mysql://h/db/extra"])
def test_malformed_urls_name_the_expected_form(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"must|unknown parameter"):
        by_url(url)


def test_passwords_never_show(tmp_path: Any) -> None:
    for url in ("postgresql://u:s3cr%40t@h:5432/db?schema=wr", "mysql://u:s3cr%40t@h:3306/db"):
        backend = by_url(url)
        assert "s3cr" not in repr(backend) and "s3cr" not in backend.url
    assert by_url("sqlite:////abs/path/x.db").path.as_posix() == "/abs/path/x.db"
    for url in ("postgresql://u:s3cr%40t@h:5432", "mysql://u:s3cr%40t@h:3306/db/x",
                "mysql://u:s3cr%40t@h:3306/db?connect_timeout=soon"):
        with pytest.raises(ConfigurationError, match="must") as error:
            by_url(url)
        assert "s3cr" not in str(error.value) and "***" in str(error.value)


def test_a_missing_sqlite_file_is_an_error_and_is_not_created(tmp_path: Any) -> None:
    from workflow_retention.exceptions import StorageError

    target = tmp_path / "typo.db"
    with pytest.raises(StorageError, match="unable to open"):
        by_url(f"sqlite://{target}").delete_old_runs(CUTOFF)
    assert not target.exists()


def test_pyworkflow_environment_variables_reach_the_sql_backends(tmp_path: Any) -> None:
    from workflow_retention.config import load_settings

    pg = by_url(load_settings({"PYWORKFLOW_STORAGE_TYPE": "postgres", "PYWORKFLOW_POSTGRES_HOST": "db.internal",
                               "PYWORKFLOW_POSTGRES_PASSWORD": "p@ss:w/rd", "PYWORKFLOW_POSTGRES_DATABASE": "wf"})
                .require_storage_url())
    pg_url = pg.dialect.sa_url
    assert (pg_url.host, pg_url.port, pg_url.username, pg_url.password, pg_url.database) == \
        ("db.internal", 5432, "pyworkflow", "p@ss:w/rd", "wf")
    my = by_url(load_settings({"PYWORKFLOW_STORAGE_BACKEND": "mysql", "PYWORKFLOW_MYSQL_PORT": "3307"})
                .require_storage_url())
    my_url = my.dialect.sa_url
    assert (my_url.host, my_url.port, my_url.database) == ("localhost", 3307, "pyworkflow")
    lite = by_url(load_settings({"PYWORKFLOW_STORAGE_TYPE": "sqlite",
                                 "PYWORKFLOW_STORAGE_PATH": str(tmp_path / "a b.db")}).require_storage_url())
    assert lite.path == tmp_path / "a b.db"
