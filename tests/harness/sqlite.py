"""Harness: pyworkflow-engine's SQLite store in a temporary file of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine

from tests.harness.sql import SQLHarness
from workflow_retention.backends.sql.sqlite import SQLiteBackend


class SQLiteHarness(SQLHarness):
    name = "sqlite"
    capabilities = SQLiteBackend.capabilities  # pyworkflow writes all of them there
    pyworkflow_modules = ("pyworkflow.storage.sqlite",)

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.path = directory / "pyworkflow.db"

    def url(self) -> str:
        return f"sqlite://{self.path}"

    async def _make_pyworkflow(self) -> Any:
        from pyworkflow.storage.sqlite import SQLiteStorageBackend

        pw = SQLiteStorageBackend(db_path=str(self.path))
        await pw.connect()
        return pw

    def make_raw_engine(self) -> Engine:
        # A plain sqlite3 connection: foreign keys are off unless a connection turns them on.
        return create_engine(f"sqlite:///{self.path}")


@pytest.fixture
def sqlite_harness(tmp_path: Path) -> Iterator[SQLiteHarness]:
    harness = SQLiteHarness(tmp_path)
    harness.pyworkflow()  # pyworkflow-engine creates the schema, as in production
    yield harness
    harness.close()


HARNESS_CLASS = SQLiteHarness
