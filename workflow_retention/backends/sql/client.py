"""The SQL store's I/O: engine, schema objects, the store's layout, transactions, retries, error translation."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from functools import cached_property
from typing import ClassVar, TypeVar

from sqlalchemy import Engine, MetaData, Table
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.schema import CreateTable

from workflow_retention.backends.sql.dialect import Dialect
from workflow_retention.backends.sql.layout import (
    INDEX_NEEDS,
    MARKERS,
    OPTIONAL_TABLES,
    REQUIRED_TABLES,
    Layout,
    build_markers,
    build_metadata,
)
from workflow_retention.exceptions import StorageError

log = logging.getLogger("workflow_retention.sql")
T = TypeVar("T")


#: A transaction quicker than this share of ``transaction_target`` lets the row budget grow ...
GROW_BELOW = 0.5
#: ... towards the rows that would take this share of it, at the rate it deleted (at most doubling).
AIM = 0.8


def next_budget(budget: int, used: int | None, seconds: float, target: float, floor: int, ceiling: int) -> int:
    """The row budget after a write transaction with ``budget`` deleted ``used`` rows (None: not counted) in
    ``seconds``: over ``target``, in proportion (not below ``floor``); well under it, grown to what ``AIM``
    of the target would delete at the rate measured, at most twice ``budget`` and never above ``ceiling``.
    A transaction whose rows are not counted only ever shrinks it."""
    if seconds > target:
        return max(floor, int(budget * target / seconds))
    if used is not None and seconds < target * GROW_BELOW:
        rate = used / max(seconds, 1e-3)
        return max(budget, min(ceiling, 2 * budget, int(rate * AIM * target)))
    return budget


class Client:
    """One store's engine and transactions, through its :class:`Dialect`.

    Every read is a short transaction closed before ``on_batch`` runs; every write is one transaction,
    retried whole on a deadlock or serialization failure and timed, so that the purge's row budget
    (:attr:`row_budget`) follows how long transactions take.
    """

    #: Attempts of a batch transaction that hits a deadlock or serialization failure.
    retry_attempts: ClassVar[int] = 6
    #: Seconds a write transaction should take at most: a longer one shrinks the row budget (the backend's
    #: ``transaction_s`` option sets it per store).
    transaction_target: float = 0.5
    #: The row budget never shrinks below this (nor grows above ``max_rows``).
    min_rows: ClassVar[int] = 1000

    def __init__(self, dialect: Dialect, url: str, max_rows: int, transaction_s: float | None = None) -> None:
        self.dialect = dialect
        self.url = url
        self.max_rows = max_rows
        if transaction_s is not None:  # the backend's ``transaction_s`` option
            self.transaction_target = transaction_s
        #: Rows the next write transaction of a purge may delete (adapted by :meth:`timed_write`).
        self.row_budget = self.first_budget()
        #: The store's tables and missing indexes, read at the start of each operation.
        self.layout = Layout(frozenset(self.metadata.tables), (), ())
        #: Transactions retried after a deadlock or serialization failure (for logs and tests).
        self.retries = 0
        self._engine: Engine | None = None
        #: Each thread's session connection (the purge's writer threads have their own, see :meth:`writers`).
        self._local = threading.local()

    # -- schema objects and the store's layout ----------------------------------------

    @cached_property
    def metadata(self) -> MetaData:
        """pyworkflow's tables in this dialect's types."""
        return build_metadata(self.dialect.types)

    @cached_property
    def markers(self) -> Table:
        """Our own markers table (:data:`~.layout.MARKERS`)."""
        return build_markers(self.dialect.types)

    def table(self, name: str) -> Table:
        """pyworkflow's table ``name``."""
        return self.metadata.tables[name]

    def has(self, name: str) -> bool:
        """True when the store has table ``name`` (per the last :meth:`inspect_layout`)."""
        return name in self.layout.tables

    def inspect_layout(self, conn: Connection) -> Layout:
        """Read which of pyworkflow's tables and of the indexes the purge relies on the store has.

        Kept as :attr:`layout` for the operation that asked. A store without one of
        :data:`REQUIRED_TABLES` is not a PyWorkflow store (StorageError).
        """
        tables, indexes = self.dialect.catalog(conn)
        missing = [name for name in REQUIRED_TABLES if name not in tables]
        if missing:
            raise StorageError(f"{self.url} is not a PyWorkflow store: table(s) {', '.join(missing)} missing")
        lacking = [need for need in INDEX_NEEDS
                   if not any(cols[:len(need.columns)] == need.columns for cols in indexes.get(need.table, ()))]
        self.layout = Layout(tables, tuple(n for n in OPTIONAL_TABLES if n in self.metadata.tables and n not in tables),
                             tuple(lacking))
        return self.layout

    def ensure_markers(self) -> None:
        """Create :data:`~.layout.MARKERS` in the store's schema if it is not there (never in a dry run)."""
        if self.has(MARKERS):
            return
        self.write(lambda conn: conn.execute(CreateTable(self.markers, if_not_exists=True)))
        self.layout = replace(self.layout, tables=self.layout.tables | {MARKERS})

    # -- connections ------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, built on first use."""
        if self._engine is None:
            self._engine = self.dialect.create_engine()
        return self._engine

    def close(self) -> None:
        """Dispose of the engine's pool (a later use builds a new one)."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @property
    def _session(self) -> Connection | None:
        return getattr(self._local, "conn", None)

    @contextmanager
    def session(self) -> Iterator[None]:
        """Use one connection for a whole purge, sweep or census (one pool checkout and ping), in this thread.

        Between transactions it is idle: it holds no lock and no transaction while
        ``on_batch`` runs.
        """
        if self._session is not None:
            yield
            return
        with self.engine.connect() as conn:
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    @contextmanager
    def writers(self, n: int) -> Iterator[Callable[[Callable[[], T]], Future[T]]]:
        """``submit(fn)``: ``fn()`` on one of ``n`` threads, each with a session connection of its own (opened by
        its first task, closed when the block ends, after every task submitted has finished)."""
        opened: list[Connection] = []
        guard = threading.Lock()

        def task(fn: Callable[[], T]) -> T:
            if self._session is None:
                conn = self.engine.connect()
                with guard:
                    opened.append(conn)
                self._local.conn = conn
            return fn()

        pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="wr-writer")
        try:
            yield lambda fn: pool.submit(task, fn)
        finally:
            pool.shutdown(wait=True)
            for conn in opened:
                conn.close()

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
            conn.execution_options(**self.dialect.read_options())
            with conn.begin():
                yield conn

    def write(self, body: Callable[[Connection], T], cascade: bool = True) -> T:
        """Run ``body`` in one write transaction; retry it on deadlock or serialization failure.

        ``cascade=False``: the transaction runs without the engine's ON DELETE CASCADE
        (:meth:`Dialect.without_cascade`; only where :attr:`Dialect.can_defer_cascade`).
        """
        for attempt in range(1, self.retry_attempts + 1):
            try:
                with self._connection() as conn:
                    conn.execution_options(**self.dialect.write_options())
                    with nullcontext() if cascade else self.dialect.without_cascade(conn), conn.begin():
                        return body(conn)
            except DBAPIError as exc:
                if attempt == self.retry_attempts or not self.dialect.retryable(exc):
                    raise
                delay = min(2.0, 0.05 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
                self.retries += 1
                log.warning("%s: %s; retrying the batch in %.2fs (attempt %d of %d)", self.url,
                            type(exc.orig).__name__, delay, attempt + 1, self.retry_attempts)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def first_budget(self) -> int:
        """The row budget a purge starts with: the dialect's ``initial_rows``, at most ``max_rows``."""
        return min(self.max_rows, self.dialect.initial_rows)

    def timed_write(self, body: Callable[[Connection], T], cascade: bool = True,
                    rows: Callable[[T], int] | None = None) -> T:
        """:meth:`write`, timed: the row budget follows how long it took (:func:`next_budget`; ``rows(result)``:
        the rows it deleted, which lets the budget grow), then :meth:`Dialect.after_write`."""
        started = time.perf_counter()
        result = self.write(body, cascade)
        seconds = time.perf_counter() - started
        self.row_budget = next_budget(self.row_budget, rows(result) if rows is not None else None, seconds,
                                      self.transaction_target, min(self.min_rows, self.max_rows), self.max_rows)
        self.dialect.after_write(seconds)
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
