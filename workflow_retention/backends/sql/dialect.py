"""What differs between SQL dialects: every hook the shared SQL code reads, with its default.

:class:`Dialect` declares each hook; :class:`~.sqlite.SQLiteDialect`,
:class:`~.postgres.PostgresDialect` and :class:`~.mysql.MySQLDialect` override
hooks only. The backend holds one dialect object (``backend.dialect``); the
purge, sweeps, census and seeder call it. Why each dialect answers as it does
is in docs/backends/sql.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    ColumnElement,
    Engine,
    Select,
    Table,
    TextClause,
    and_,
    delete,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    tuple_,
    union_all,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from workflow_retention.backends.sql.layout import INDEX_NEEDS, Types

#: The most connections a purge's batches may use at once (the ``parallel_batches`` option).
MAX_PARALLEL_BATCHES = 16


def like_prefix(run_id: str) -> str:
    """``LIKE`` pattern for ``<run_id>:...`` with ``!`` as the escape character."""
    return re.sub(r"([!%_])", r"!\1", run_id) + ":%"


def power_of_two(n: int) -> int:
    """The smallest power of two not below ``n`` (statement shapes padded to it stay few)."""
    size = 1
    while size < n:
        size *= 2
    return size


def expanded_after(columns: Sequence[ColumnElement], values: Sequence[Any]) -> ColumnElement:
    """``(a, b) > (x, y)`` written as ``a > x OR (a = x AND b > y)`` (for optimizers without row values)."""
    terms = []
    for i, column in enumerate(columns):
        equal = [columns[j] == values[j] for j in range(i)]
        terms.append(and_(*equal, column > values[i]))
    return or_(*terms)


class Dialect:
    """The hooks of one SQL dialect, with the defaults most dialects share."""

    #: Short name, as in the backend registry.
    name: ClassVar[str] = "sql"
    #: Column types of the dialect's pyworkflow schema.
    types: ClassVar[Types]
    #: True when ``column < value`` in SQL is the exact instant comparison (typed timestamps).
    exact_time: ClassVar[bool] = True
    #: Ids per statement (IN lists, OR terms): well under every driver's parameter limit.
    id_chunk: ClassVar[int] = 1000
    #: Run ids per step-checkpoint statement (each adds one range or LIKE term).
    checkpoint_chunk: ClassVar[int] = 256
    #: Rows one write transaction deletes at most, unless the ``max_rows`` option says otherwise. Within it,
    #: the row budget follows the time transactions take (``Client.transaction_target``).
    default_max_rows: ClassVar[int] = 40_000
    #: The row budget of a purge's first write transaction (at most ``max_rows``); the transactions' time
    #: then moves it (:meth:`Client.timed_write`), so a large ``max_rows`` is reached only where it is quick.
    initial_rows: ClassVar[int] = 40_000
    #: True when :meth:`without_cascade` can open a transaction in which deleting a run record does not
    #: fire the engine's ON DELETE CASCADE: a heavy run's record is then deleted first (its commit point)
    #: and its rows in bounded transactions after; False: a heavy run goes in one transaction.
    can_defer_cascade: ClassVar[bool] = False
    #: True when every batch's write transaction also runs :meth:`without_cascade` (the engine's foreign
    #: keys neither checked nor cascaded): the batch deletes every child row explicitly, leaves before
    #: parents, after the re-check under lock; see docs/backends/sql.md for why each dialect may.
    batches_without_cascade: ClassVar[bool] = False
    #: True when a batch's whole cascade is one statement of data-modifying CTEs (see :meth:`id_array`).
    one_statement_cascade: ClassVar[bool] = False
    #: Write batches of a purge that run at once, each on a connection of its own (disjoint families; a
    #: wave's ``on_batch`` calls come first, with no transaction of the purge open): docs/backends/sql.md,
    #: "Parallel batches". 1: one batch at a time (SQLite has one writer).
    parallel_batches: int = 1

    def __init__(self) -> None:
        self._checkpoint_sql: dict[tuple[int, bool], TextClause] = {}

    # -- engine and transactions -------------------------------------------------------

    def create_engine(self) -> Engine:
        """The SQLAlchemy engine: driver, pool, per-connection settings (timeouts, pragmas, isolation)."""
        raise NotImplementedError

    def read_options(self) -> dict[str, Any]:
        """Execution options of a read (PostgreSQL: autocommit, no BEGIN/COMMIT round trips)."""
        return {}

    def write_options(self) -> dict[str, Any]:
        """Execution options of a write transaction (SQLite: ``BEGIN IMMEDIATE``)."""
        return {}

    def retryable(self, exc: DBAPIError) -> bool:
        """True when a failed write transaction is worth retrying whole (deadlock, serialization failure)."""
        return False

    def after_write(self, seconds: float) -> None:
        """Called after each write transaction of a purge or sweep, with how long it took (SQLite yields)."""

    def without_cascade(self, conn: Connection) -> AbstractContextManager[None]:
        """Around the begin and end of a transaction on ``conn`` (none open yet): inside it, foreign keys are
        neither checked nor cascaded; restored on the way out, whatever happens (only where
        :attr:`can_defer_cascade`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot hold back the engine's cascade")

    def before_create(self) -> None:
        """Make the database exist before ``seed`` creates the schema (SQLite creates the file)."""

    # -- the server -----------------------------------------------------------------------

    def server_version(self, conn: Connection) -> str:
        """The server's name and version, for ``check``."""
        return ".".join(map(str, conn.dialect.server_version_info or ()))

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

    def table_bytes(self, conn: Connection) -> dict[str, int]:
        """Bytes per table (data and indexes), as far as the server tells."""
        return {}

    # -- timestamps ---------------------------------------------------------------------

    def db_time(self, when: datetime) -> Any:
        """An aware UTC datetime as this dialect binds it to a timestamp column."""
        return when

    def instant(self, column: ColumnElement) -> ColumnElement:
        """A timestamp column as its instant, for ordering: the column itself where it is typed; SQLite's text,
        written with its writer's UTC offset, orders by instant only once converted."""
        return column

    def before(self, column: ColumnElement, when: datetime) -> ColumnElement:
        """SQL for ``column < when``: exact on typed columns, a superset where it cannot be (SQLite)."""
        return column < self.db_time(when)

    def not_before(self, column: ColumnElement, when: datetime) -> ColumnElement:
        """SQL for ``column >= when``; SQLite starts past the offset margin, so it never overlaps :meth:`before`."""
        return column >= self.db_time(when)

    # -- predicates and statements -------------------------------------------------------

    def after(self, columns: Sequence[ColumnElement], values: Sequence[Any]) -> ColumnElement:
        """Keyset predicate ``(columns) > (values)`` in index order."""
        if len(columns) == 1:
            return columns[0] > values[0]
        return tuple_(*columns) > tuple_(*values)

    def among(self, column: ColumnElement, values: Sequence[str]) -> ColumnElement:
        """``column IN (values)``."""
        return column.in_(values)

    def exact(self, column: ColumnElement) -> ColumnElement:
        """``column`` compared and grouped exactly, byte for byte (MySQL: a binary collation)."""
        return column

    def id_fold(self, run_id: str) -> str:
        """``run_id`` as the store compares ids (MySQL's collation ignores case): equal folds, same run."""
        return run_id

    def pin_plans(self, conn: Connection) -> None:
        """At the start of a purge batch's write transaction: keep its statements on the run_id indexes (one
        batch's work must not grow with the table)."""

    def lock(self, stmt: Select) -> Select:
        """Lock the selected run rows until the transaction ends."""
        return stmt.with_for_update()

    def delete_some(self, table: Table, where: ColumnElement, limit: int) -> Any:
        """A DELETE of at most ``limit`` rows of ``table`` that match ``where`` (by primary key)."""
        key = list(table.primary_key.columns)
        some = select(*key).where(where).limit(limit)
        return delete(table).where(key[0].in_(some) if len(key) == 1 else tuple_(*key).in_(some))

    def candidate_hint(self, stmt: Select) -> Select:
        """The purge's candidate query, with whatever hint the dialect's planner needs."""
        return stmt

    def child_rows(self, conn: Connection, tables: Sequence[Table], run_ids: Sequence[str],
                   over: int) -> Iterable[tuple[str, int]]:
        """(run_id, rows) of the runs that hold more than ``over`` rows in ``tables`` together."""
        counts = []
        for table in tables:
            column = table.c.run_id
            counts.append(select(column.label("run_id"), func.count().label("n"))
                          .where(self.among(column, run_ids)).group_by(column))
        both = union_all(*counts).subquery()
        total = func.sum(both.c.n)
        return [(row[0], int(row[1])) for row in
                conn.execute(select(both.c.run_id, total).group_by(both.c.run_id).having(total > over))]

    def id_array(self, name: str, values: Sequence[str]) -> tuple[str, Any]:
        """(SQL text of the set of ``values`` bound as parameter ``name``, the parameter's value); only with
        :attr:`one_statement_cascade`."""
        raise NotImplementedError(f"{type(self).__name__} has no one-statement cascade")

    # -- step checkpoints ----------------------------------------------------------------

    def checkpoint_ranges(self) -> bool:
        """True when ``step_run_id`` sorts by code point, so ``[<id>:, <id>;)`` is exactly the prefix
        ``<id>:`` (a primary-key range); otherwise an escaped ``LIKE`` is used."""
        return True

    def checkpoint_match(self, run_ids: Sequence[str]) -> tuple[TextClause, dict[str, Any]]:
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

    def checkpoint_delete(self, run_ids: Sequence[str]) -> tuple[str, dict[str, Any]]:
        """A ``DELETE … RETURNING step_run_id`` (text, with its parameters) of the step checkpoints
        :meth:`checkpoint_match` matches for ``run_ids`` (only with :attr:`one_statement_cascade`)."""
        where, params = self.checkpoint_match(run_ids)
        return f"DELETE FROM checkpoints WHERE {where.text} RETURNING step_run_id", params

    def checkpoint_keys(self, checkpoints: Table, run_ids: Sequence[str]) -> tuple[Any, dict[str, Any]]:
        """A SELECT (with its parameters) of the keys :meth:`checkpoint_match` matches for ``run_ids``."""
        where, params = self.checkpoint_match(run_ids)
        return select(checkpoints.c.step_run_id).where(where), params

    # -- seeding --------------------------------------------------------------------------

    def bulk_insert(self, conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
        """Insert many rows fast (a multi-row INSERT; PostgreSQL uses COPY)."""
        conn.execute(insert(table), rows)

    def json(self, value: Any) -> Any:
        """A JSON value for a checkpoint/stream column (JSONB takes the object, text columns its dump)."""
        return value if isinstance(self.types.json, JSON) else json.dumps(value)

