"""The SQL backends' shared core: engine, transactions, retries, error translation, dialect hooks.

One SQLAlchemy Core implementation serves SQLite, PostgreSQL and MySQL; a
dialect subclass supplies only what really differs (see the "dialect hooks"
section): how timestamps are bound and compared, keyset predicates, the
step-checkpoint match, row locking, timeouts and which driver errors are
worth a retry. The purge, orphan sweep, census and seeder live in the
mixins of :mod:`.purge`, :mod:`.sweeps` and :mod:`.seeding`.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime
from functools import cached_property
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    ColumnElement,
    Engine,
    MetaData,
    Select,
    TextClause,
    and_,
    delete,
    func,
    inspect,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from workflow_retention.backends.sql.purge import PurgeMixin
from workflow_retention.backends.sql.schema import (
    INDEX_NEEDS,
    OPTIONAL_TABLES,
    REQUIRED_TABLES,
    Layout,
    Types,
    build_metadata,
)
from workflow_retention.backends.sql.seeding import SeedMixin
from workflow_retention.backends.sql.sweeps import SweepMixin
from workflow_retention.base import StorageBackend
from workflow_retention.exceptions import ConfigurationError, StorageError

log = logging.getLogger("workflow_retention.sql")
T = TypeVar("T")


def like_prefix(run_id: str) -> str:
    """``LIKE`` pattern for ``<run_id>:...`` with ``!`` as the escape character."""
    return re.sub(r"([!%_])", r"!\1", run_id) + ":%"


def power_of_two(n: int) -> int:
    size = 1
    while size < n:
        size *= 2
    return size


def positive(value: object, name: str) -> float:
    """A timeout or delay option: a positive number of seconds."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = -1.0
    if isinstance(value, bool) or not number > 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds; got {value!r}")
    return number


def whole(value: object, name: str) -> int:
    """A count option: a positive whole number."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive whole number; got {value!r}")
    return value


class SQLBackend(PurgeMixin, SweepMixin, SeedMixin, StorageBackend):
    """Base of the SQLite, PostgreSQL and MySQL backends (not registered itself)."""

    capabilities = frozenset({"schedules", "streams"})
    #: Column types of the dialect's pyworkflow schema.
    types: ClassVar[Types]
    #: True when ``column < value`` in SQL is the exact instant comparison (typed timestamps).
    exact_time: ClassVar[bool] = True
    #: Attempts of a batch transaction that hits a deadlock or serialization failure.
    retry_attempts: ClassVar[int] = 6
    #: Ids per statement (IN lists, OR terms): well under every driver's parameter limit.
    id_chunk: ClassVar[int] = 1000
    #: Run ids per step-checkpoint statement (each adds one range or LIKE term).
    checkpoint_chunk: ClassVar[int] = 256
    #: Rows one write transaction deletes at most (the ``max_rows`` option), whatever the runs hold.
    default_max_rows: ClassVar[int] = 40_000
    #: Seconds a write transaction should take at most: a longer one shrinks the row budget.
    transaction_target: ClassVar[float] = 0.5
    #: The row budget never shrinks below this (nor grows above ``max_rows``).
    min_rows: ClassVar[int] = 1000

    def __init__(self, *, url: str, statement_timeout: float = 30.0, lock_timeout: float = 10.0,
                 batch_size: int | None = None, max_rows: int | None = None) -> None:
        super().__init__(url=url, batch_size=batch_size)
        self.statement_timeout = positive(statement_timeout, "statement_timeout")
        self.lock_timeout = positive(lock_timeout, "lock_timeout")
        self.max_rows = whole(max_rows if max_rows is not None else self.default_max_rows, "max_rows")
        self._row_budget = self.max_rows
        #: The store's tables and missing indexes, read at the start of each operation.
        self.layout = Layout(frozenset(self.metadata.tables), (), ())
        self._engine: Engine | None = None
        self._session: Connection | None = None
        self._checkpoint_sql: dict[tuple[int, bool], TextClause] = {}
        #: Transactions retried after a deadlock or serialization failure (for logs and tests).
        self.retries = 0

    # -- connection -------------------------------------------------------------

    @cached_property
    def metadata(self) -> MetaData:
        return build_metadata(self.types)

    def table(self, name: str) -> Any:
        return self.metadata.tables[name]

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._create_engine()
        return self._engine

    def open(self) -> None:
        self.engine  # noqa: B018 - builds the engine; connections are made on first use

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _check(self) -> dict[str, object]:
        with self.translated("check"), self.read() as conn:
            layout = self.inspect_layout(conn)
            runs = conn.execute(select(func.count()).select_from(self.table("workflow_runs"))).scalar_one()
            facts: dict[str, object] = {"runs": runs, "server": self.server_version(conn)}
        for name in layout.missing_tables:
            facts[f"missing table {name}"] = f"skipped (pyworkflow-engine before {OPTIONAL_TABLES[name]})"
        for need in layout.missing_indexes:
            facts[f"missing index on {need.table} ({', '.join(need.columns)})"] = (
                f"{'the purge refuses' if need.refuse else 'slower purge'}; add it with: {need.create}")
        return facts

    def inspect_layout(self, conn: Connection) -> Layout:
        """Read which of pyworkflow's tables and of the indexes the purge relies on the store has.

        Kept as :attr:`layout` for the operation that asked. A store without one of
        :data:`REQUIRED_TABLES` is not a PyWorkflow store (StorageError).
        """
        tables, indexes = self.catalog(conn)
        missing = [name for name in REQUIRED_TABLES if name not in tables]
        if missing:
            raise StorageError(f"{self.url} is not a PyWorkflow store: table(s) {', '.join(missing)} missing")
        lacking = [need for need in INDEX_NEEDS
                   if not any(cols[:len(need.columns)] == need.columns for cols in indexes.get(need.table, ()))]
        self.layout = Layout(tables, tuple(n for n in OPTIONAL_TABLES if n in self.metadata.tables and n not in tables),
                             tuple(lacking))
        return self.layout

    def catalog(self, conn: Connection) -> tuple[frozenset[str], dict[str, list[tuple[str, ...]]]]:
        """The store's tables, and the columns of each table's indexes (primary key included), in order."""
        inspector = inspect(conn)
        tables = frozenset(inspector.get_table_names())
        indexes: dict[str, list[tuple[str, ...]]] = {}
        for need in INDEX_NEEDS:
            if need.table in tables and need.table not in indexes:
                indexes[need.table] = [tuple(inspector.get_pk_constraint(need.table)["constrained_columns"])]
                indexes[need.table] += [tuple(str(c) for c in i["column_names"])
                                        for i in inspector.get_indexes(need.table)]
        return tables, indexes

    def has(self, name: str) -> bool:
        """True when the store has table ``name`` (per the last :meth:`inspect_layout`)."""
        return name in self.layout.tables

    @contextmanager
    def session(self) -> Iterator[None]:
        """Use one connection for a whole purge, sweep or census (one pool checkout and ping).

        Between transactions it is idle: it holds no lock and no transaction while
        ``on_batch`` runs.
        """
        if self._session is not None:
            yield
            return
        with self.engine.connect() as conn:
            self._session = conn
            try:
                yield
            finally:
                self._session = None

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        if self._session is not None:
            yield self._session
        else:
            with self.engine.connect() as conn:
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A short read (closed before any ``on_batch`` call)."""
        with self._connection() as conn:
            conn.execution_options(**self.read_options())
            with conn.begin():
                yield conn

    def write(self, body: Callable[[Connection], T], cascade: bool = True) -> T:
        """Run ``body`` in one write transaction; retry it on deadlock or serialization failure.

        ``cascade=False``: the transaction runs without the engine's ON DELETE CASCADE
        (:meth:`without_cascade`; only where :attr:`can_defer_cascade`).
        """
        for attempt in range(1, self.retry_attempts + 1):
            try:
                with self._connection() as conn:
                    conn.execution_options(**self.write_options())
                    with nullcontext() if cascade else self.without_cascade(conn), conn.begin():
                        return body(conn)
            except DBAPIError as exc:
                if attempt == self.retry_attempts or not self.retryable(exc):
                    raise
                delay = min(2.0, 0.05 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
                self.retries += 1
                log.warning("%s: %s; retrying the batch in %.2fs (attempt %d of %d)", self.url,
                            type(exc.orig).__name__, delay, attempt + 1, self.retry_attempts)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _timed_write(self, body: Callable[[Connection], T], cascade: bool = True) -> T:
        """:meth:`write`, timed: the purge's row budget follows how long it took, then :meth:`after_write`.

        Over ``transaction_target`` the budget shrinks in proportion (not below ``min_rows``);
        well under it, it grows back towards ``max_rows``.
        """
        started = time.perf_counter()
        result = self.write(body, cascade)
        seconds = time.perf_counter() - started
        if seconds > self.transaction_target:
            self._row_budget = max(min(self.min_rows, self.max_rows),
                                   int(self._row_budget * self.transaction_target / seconds))
        elif seconds < self.transaction_target / 4:
            self._row_budget = min(self.max_rows, self._row_budget * 2)
        self.after_write(seconds)
        return result

    @contextmanager
    def translated(self, what: str) -> Iterator[None]:
        """Driver and SQLAlchemy errors become :class:`StorageError` (chained), loud and named."""
        try:
            yield
        except SQLAlchemyError as exc:
            orig = getattr(exc, "orig", None) or exc
            first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
            raise StorageError(f"{what} failed on {self.url}: {type(orig).__name__}: {first}") from exc

    # -- dialect hooks ------------------------------------------------------------

    def _create_engine(self) -> Engine:
        raise NotImplementedError

    def read_options(self) -> dict[str, Any]:
        """Execution options of a read (PostgreSQL: autocommit, no BEGIN/COMMIT round trips)."""
        return {}

    def write_options(self) -> dict[str, Any]:
        """Execution options of a write transaction (SQLite: ``BEGIN IMMEDIATE``)."""
        return {}

    def retryable(self, exc: DBAPIError) -> bool:
        return False

    #: True when :meth:`without_cascade` can open a transaction in which deleting a run record does not
    #: fire the engine's ON DELETE CASCADE: a heavy run's record is then deleted first (the commit
    #: point) and its rows in bounded transactions after; False: a heavy run goes in one transaction.
    can_defer_cascade: ClassVar[bool] = False

    def without_cascade(self, conn: Connection) -> AbstractContextManager[None]:
        """Around the begin and end of a transaction on ``conn`` (no transaction open): inside it, foreign
        keys are neither checked nor cascaded; restored on the way out, whatever happens."""
        raise NotImplementedError(f"{type(self).__name__} cannot hold back the engine's cascade")

    def after_write(self, seconds: float) -> None:
        """Called after each write transaction of a purge or sweep, with how long it took (SQLite yields)."""

    def server_version(self, conn: Connection) -> str:
        return ".".join(map(str, self.engine.dialect.server_version_info or ()))

    def db_time(self, when: datetime) -> Any:
        """An aware UTC datetime as this dialect binds it to a timestamp column."""
        return when

    def before(self, column: ColumnElement, when: datetime) -> ColumnElement:
        """SQL for ``column < when``: exact on typed columns, a superset where it cannot be (SQLite)."""
        return column < self.db_time(when)

    def not_before(self, column: ColumnElement, when: datetime) -> ColumnElement:
        """SQL for ``column >= when``; SQLite starts past the offset margin, so it never overlaps :meth:`before`."""
        return column >= self.db_time(when)

    def after(self, columns: Sequence[ColumnElement], values: Sequence[Any]) -> ColumnElement:
        """Keyset predicate ``(columns) > (values)`` in index order."""
        if len(columns) == 1:
            return columns[0] > values[0]
        return tuple_(*columns) > tuple_(*values)

    def expanded_after(self, columns: Sequence[ColumnElement], values: Sequence[Any]) -> ColumnElement:
        """``(a, b) > (x, y)`` written as ``a > x OR (a = x AND b > y)`` (for optimizers without row values)."""
        terms = []
        for i, column in enumerate(columns):
            equal = [columns[j] == values[j] for j in range(i)]
            terms.append(and_(*equal, column > values[i]))
        return or_(*terms)

    def among(self, column: ColumnElement, values: Sequence[str]) -> ColumnElement:
        """``column IN (values)``."""
        return column.in_(values)

    def checkpoint_ranges(self) -> bool:
        """True when ``step_run_id`` sorts by code point, so ``[<id>:, <id>;)`` is exactly the prefix
        ``<id>:`` (a primary-key range); otherwise an escaped ``LIKE`` is used."""
        return True

    def checkpoint_match(self, run_ids: Sequence[str]) -> tuple[TextClause, dict[str, str]]:
        """WHERE clause (with its parameters) matching the step checkpoints ``<run_id>:<step_id>`` of ``run_ids``.

        Written as text, with the ids padded to a power of two (the last one repeated): building
        hundreds of SQLAlchemy expressions per batch would cost more than the deletes, and a few
        statement shapes keep cached statements, and memory, from growing with every batch size.
        """
        run_ids = list(run_ids) + [run_ids[-1]] * (power_of_two(len(run_ids)) - len(run_ids))
        ranges = self.checkpoint_ranges()
        key = (len(run_ids), ranges)
        clause = self._checkpoint_sql.get(key)
        if clause is None:
            terms = [f"(step_run_id >= :cp_lo{i} AND step_run_id < :cp_hi{i})" if ranges
                     else f"step_run_id LIKE :cp_like{i} ESCAPE '!'" for i in range(len(run_ids))]
            clause = self._checkpoint_sql[key] = text(" OR ".join(terms))
        if ranges:
            params = {f"cp_lo{i}": f"{r}:" for i, r in enumerate(run_ids)}
            params.update({f"cp_hi{i}": f"{r};" for i, r in enumerate(run_ids)})
        else:
            params = {f"cp_like{i}": like_prefix(r) for i, r in enumerate(run_ids)}
        return clause, params

    def exact(self, column: ColumnElement) -> ColumnElement:
        """``column`` compared and grouped exactly, byte for byte (MySQL: a binary collation)."""
        return column

    def checkpoint_keys(self, run_ids: Sequence[str]) -> tuple[Any, dict[str, Any]]:
        """A SELECT (with its parameters) of the keys :meth:`checkpoint_match` matches for ``run_ids``."""
        where, params = self.checkpoint_match(run_ids)
        return select(self.table("checkpoints").c.step_run_id).where(where), params

    def id_fold(self, run_id: str) -> str:
        """``run_id`` as the store compares ids (MySQL's collation ignores case): equal folds, same run."""
        return run_id

    def delete_some(self, table: Any, where: ColumnElement, limit: int) -> Any:
        """A DELETE of at most ``limit`` rows of ``table`` that match ``where`` (by primary key)."""
        key = list(table.primary_key.columns)
        some = select(*key).where(where).limit(limit)
        return delete(table).where(key[0].in_(some) if len(key) == 1 else tuple_(*key).in_(some))

    def lock(self, stmt: Select) -> Select:
        """Lock the selected run rows until the transaction ends."""
        return stmt.with_for_update()

    def table_bytes(self, conn: Connection) -> dict[str, int]:
        """Bytes per table (data and indexes), as far as the server tells."""
        return {}
