"""Fixtures of the SQL-specific tests: one store per test on each SQL backend."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event

SQL_BACKENDS = ["sqlite", "postgres", "mysql"]


@pytest.fixture(params=SQL_BACKENDS)
def sql(request: pytest.FixtureRequest) -> Any:
    """A fresh store on each SQL backend (its harness)."""
    return request.getfixturevalue(f"{request.param}_harness")


@pytest.fixture(params=["postgres", "mysql"])
def server(request: pytest.FixtureRequest) -> Any:
    """A fresh store on each SQL server backend (its harness)."""
    return request.getfixturevalue(f"{request.param}_harness")


def engine_like_pyworkflow(harness: Any) -> Engine:
    """A SQLAlchemy engine on the harness's store that behaves like the engine's writers:
    foreign keys enforced, autocommit-sized transactions, default isolation."""
    if harness.name == "sqlite":
        engine = create_engine(f"sqlite:///{harness.path}", connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def fks(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.execute("PRAGMA foreign_keys = ON")

        return engine
    if harness.name == "postgres":
        return create_engine("postgresql+psycopg://" + harness.server_url.split("://", 1)[1],
                             connect_args={"options": f"-c search_path={harness.schema}"})
    return create_engine("mysql+pymysql://" + harness.url().split("://", 1)[1],
                         connect_args={"charset": "utf8mb4"})


def insert_rows(harness: Any, table: str, rows: list[dict[str, Any]]) -> None:
    """Raw rows through the harness's raw engine (values as the dialect stores them)."""
    from sqlalchemy import insert

    backend = harness.retention()
    with harness.raw().begin() as conn:
        conn.execute(insert(backend.table(table)), rows)


def run_row(harness: Any, run_id: str, status: str, updated: Any, created: Any = None,
            parent: str | None = None) -> dict[str, Any]:
    """A workflow_runs row; datetimes are bound as the dialect stores them, strings are stored as given."""
    backend = harness.retention()

    def ts(value: Any) -> Any:
        return value if isinstance(value, str) else backend.db_time(value)

    return {"run_id": run_id, "workflow_name": "t", "status": status, "updated_at": ts(updated),
            "created_at": ts(created if created is not None else updated), "parent_run_id": parent,
            "input_args": "[]", "input_kwargs": "{}", "nesting_depth": 1 if parent else 0}


def holds_nothing(harness: Any, backend: Any) -> bool:
    """True when ``backend`` holds no transaction, hence no lock, on the store.

    Asked from outside where the server can tell (PostgreSQL ``pg_stat_activity``,
    InnoDB's transaction list); for SQLite, from the sqlite3 connection's own state.
    """
    session = backend.client._session
    if session is None:
        return True
    driver = session.connection.driver_connection
    if harness.name == "sqlite":
        return not driver.in_transaction
    with harness.raw().connect() as conn:
        if harness.name == "postgres":
            state = conn.exec_driver_sql(f"SELECT state FROM pg_stat_activity WHERE pid = {driver.info.backend_pid}")
            return state.scalar_one() == "idle"
        trx = conn.exec_driver_sql("SELECT COUNT(*) FROM information_schema.innodb_trx "
                                   f"WHERE trx_mysql_thread_id = {driver.thread_id()}")
        return trx.scalar_one() == 0
