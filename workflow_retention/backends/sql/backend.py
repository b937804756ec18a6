"""The SQL backends' shared class: options, and the operations of the backend contract on a :class:`Client`.

One SQLAlchemy Core implementation serves SQLite, PostgreSQL and MySQL/MariaDB;
what differs is a :class:`~.dialect.Dialect` object (``backend.dialect``).
The design is in docs/backends/sql.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import Engine, Table, func, select
from sqlalchemy.engine import Connection

from workflow_retention import values
from workflow_retention.backends.sql import archive, runs, shards
from workflow_retention.backends.sql.census import census, count_runs
from workflow_retention.backends.sql.client import Client
from workflow_retention.backends.sql.dialect import Dialect
from workflow_retention.backends.sql.layout import OPTIONAL_TABLES
from workflow_retention.backends.sql.orphans import sweep_orphans
from workflow_retention.backends.sql.purge import Purge
from workflow_retention.backends.sql.seed import prepare_seed, write_seed
from workflow_retention.backends.sql.space import SETTLE_S, space
from workflow_retention.base import Capability, CensusJob, OrphanJob, PurgeJob, Shard, StorageBackend
from workflow_retention.planning import RunRef
from workflow_retention.report import SpaceReport

if TYPE_CHECKING:
    from workflow_retention.seed import SeedRun

#: The largest ``max_rows`` accepted.
MAX_ROWS = 10_000_000
#: The longest ``transaction_s`` accepted, in seconds.
MAX_TRANSACTION_S = 600.0
#: The backend option (and URL query parameter) that sets the time a write transaction aims at.
TRANSACTION_S = "transaction_s"


def url_options(params: dict[str, str], options: dict[str, Any]) -> dict[str, Any]:
    """``options`` plus the URL's ``transaction_s`` (taken out of ``params``); the constructor checks it."""
    if TRANSACTION_S in params:
        options = {TRANSACTION_S: params.pop(TRANSACTION_S), **options}
    return options


#: The longest ``statement_timeout`` / ``lock_timeout`` accepted, in seconds.
MAX_TIMEOUT_S = 86_400.0


def timeout(value: object, name: str) -> float:
    """A ``statement_timeout`` / ``lock_timeout`` option: a positive number of seconds (or a duration)."""
    return values.seconds(value, name, maximum=MAX_TIMEOUT_S)


class SQLBackend(StorageBackend):
    """Base of :class:`~.sqlite.SQLiteBackend`, :class:`~.postgres.PostgresBackend` and
    :class:`~.mysql.MySQLBackend` (not registered itself)."""

    capabilities: ClassVar[frozenset[str]] = frozenset({Capability.SCHEDULES, Capability.STREAMS, Capability.SHARDS,
                                                        Capability.ARCHIVE, Capability.ARCHIVE_RECHECK})

    def __init__(self, *, url: str, dialect: Dialect, batch_size: int | None = None,
                 max_rows: int | None = None, transaction_s: object = None) -> None:
        super().__init__(url=url, batch_size=batch_size)
        rows = values.integer(max_rows if max_rows is not None else dialect.default_max_rows, "max_rows",
                              maximum=MAX_ROWS, example=dialect.default_max_rows)
        target = Client.transaction_target if transaction_s is None else \
            values.seconds(transaction_s, "transaction_s", maximum=MAX_TRANSACTION_S)
        #: What differs between SQL dialects (every hook the shared code calls).
        self.dialect = dialect
        #: The engine, transactions and the store's layout.
        self.client = Client(dialect, self.url, rows, target)

    # -- what tests, benchmarks and tools use -------------------------------------------

    @property
    def max_rows(self) -> int:
        """Rows one write transaction deletes at most (the ``max_rows`` option)."""
        return self.client.max_rows

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (built on first use)."""
        return self.client.engine

    def table(self, name: str) -> Table:
        """pyworkflow's table ``name`` in this dialect's types."""
        return self.client.table(name)

    def db_time(self, when: datetime) -> Any:
        """An aware datetime as this dialect binds it to a timestamp column."""
        return self.dialect.db_time(when)

    def session(self) -> AbstractContextManager[None]:
        """One connection for everything inside (see :meth:`Client.session`)."""
        return self.client.session()

    def read(self) -> AbstractContextManager[Connection]:
        """A short read transaction (see :meth:`Client.read`)."""
        return self.client.read()

    # -- the backend contract ---------------------------------------------------------------

    def open(self) -> None:
        self.client.engine  # noqa: B018 - builds the engine; connections are made on first use

    def close(self) -> None:
        self.client.close()

    def _check(self) -> dict[str, object]:
        client = self.client
        with client.translated("check"), client.read() as conn:
            layout = client.inspect_layout(conn)
            runs = conn.execute(select(func.count()).select_from(client.table("workflow_runs"))).scalar_one()
            facts: dict[str, object] = {"runs": runs, "server": self.dialect.server_version(conn)}
        for name in layout.missing_tables:
            facts[f"missing table {name}"] = f"skipped (pyworkflow-engine before {OPTIONAL_TABLES[name]})"
        for need in layout.missing_indexes:
            facts[f"missing index on {need.table} ({', '.join(need.columns)})"] = (
                f"{'the purge refuses' if need.refuse else 'slower purge'}; add it with: {need.create}")
        return facts

    def _shards(self, n: int, until: datetime | None) -> list[Shard]:
        """``n`` ranges of ``(created_at, run_id)`` cut at the index ends, below ``until`` (see :mod:`.shards`)."""
        with self.client.translated("shards"):
            return shards.plan(self.client, n, until)

    def _purge(self, job: PurgeJob) -> None:
        Purge(self.client, job).run()

    def _read_runs(self, run_ids: set[str]) -> dict[str, RunRef]:
        with self.client.translated("explain"), self.client.read() as conn:
            found = runs.refs(self.client, conn, sorted(run_ids))
        for ref in found.values():
            if ref.data is runs.UNREADABLE_CREATED_AT:
                ref.unreadable = "its created_at is not a timestamp"
        return found

    def _read_children(self, parent_ids: Sequence[str]) -> dict[str, list[RunRef]]:
        with self.client.translated("explain"), self.client.read() as conn:
            return runs.children(self.client, conn, parent_ids)

    def _gather(self, run_ids: Sequence[str]) -> dict[str, Any]:
        return archive.gather(self.client, run_ids)

    def _restore(self, lines: list[dict[str, Any]]) -> None:
        archive.restore(self.client, lines)

    def filesystem_path(self) -> str | None:
        """SQLite's database file (``SQLiteBackend.path``); None for PostgreSQL and MySQL servers."""
        path = getattr(self, "path", None)
        return str(path) if path is not None else None

    ranks_whole_store = True

    def _newest_runs(self, names: set[str], n: int) -> dict[str, list[str]]:
        with self.client.translated("keep_last"), self.client.read() as conn:
            return runs.newest(self.client, conn, n)

    def _sweep_orphans(self, job: OrphanJob) -> None:
        sweep_orphans(self.client, job)

    def _census(self, job: CensusJob) -> None:
        census(self.client, job)

    def _prepare_seed(self) -> None:
        prepare_seed(self.client)

    def _write_seed(self, runs: list[SeedRun]) -> None:
        write_seed(self.client, runs)

    @property
    def space_settle_s(self) -> float:  # type: ignore[override]
        return SETTLE_S.get(self.dialect.name, 0.0)

    def _space(self) -> SpaceReport:
        return space(self.client)

    def _count_runs(self, limit: int) -> tuple[int, bool]:
        return count_runs(self.client, limit)
