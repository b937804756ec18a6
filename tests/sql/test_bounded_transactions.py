"""Write transactions are bounded by rows and time, not by runs: the engine's writers never wait long.

pyworkflow's SQLite storage waits at most 5 s for the database lock (aiosqlite's default busy
timeout); a purge batch bounded only by its number of runs held ``BEGIN IMMEDIATE`` for as long
as its runs' rows took to delete (14 s for 1,000 runs of 2,000 events, and ``record_event``
failed with ``database is locked``). Now no write transaction deletes more than ``max_rows``
rows (plus the run records of its batch), and one run with more rows than that is deleted in
several transactions, each re-checking the run before it deletes anything.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import event, text

from tests.conformance.checks import assert_no_orphans, run_ids, snapshot
from tests.sql.conftest import insert_rows, run_row
from tests.sql.live_writer import CUTOFF, OLD, EngineThread, WriteClock, event_of, fill_heavy, live_run
from workflow_retention.exceptions import ConfigurationError, PurgeStopped

#: What docs/backends/sql.md states: no write transaction of a purge lasts longer (target 0.5 s) on a
#: quiet machine. Wall clock under arbitrary load is not asserted (a loaded CI machine stretched 0.3 s
#: transactions to 1.2-1.4 s): what bounds a transaction is its row budget (asserted exactly), the
#: budget's shrinking after a slow transaction (test_the_row_budget_shrinks_when_a_transaction_is_slow)
#: and, on SQLite, where the database works in the purge's own thread, the transaction's CPU time.
LIMIT_S = 1.0
#: pyworkflow's SQLite busy timeout: an engine write waiting this long fails with ``database is locked``.
BUSY_TIMEOUT_S = 5.0
#: No engine write may come near it (SQLite: the purge yields after 1.5 s of holding the lock, so a
#: quiet machine measures about 2 s, see docs/backends/sql.md section 4); a full second of margin.
ENGINE_WAIT_S = BUSY_TIMEOUT_S - 1.0


#: The documented defaults of ``max_rows``.
DEFAULT_MAX_ROWS = {"sqlite": 200_000, "postgres": 40_000, "mysql": 40_000}
#: The row budget a purge starts with (the dialect's ``initial_rows``, at most ``max_rows``): one batch is
#: cut with one budget, so no transaction of the first batch deletes more.
FIRST_BUDGET = {"sqlite": 40_000, "postgres": 40_000, "mysql": 5_000}
TABLES = ("workflow_runs", "events", "steps", "hooks", "cancellation_flags", "checkpoints")


class RowsPerWrite:
    """Rows each write transaction of a backend deleted, measured from outside: the store's rows are
    counted (on another connection) as each write transaction begins and once more at the end.

    With ``parallel_batches`` over 1, PostgreSQL and MySQL run a purge's batches on several connections at
    once (docs/backends/sql.md, "Parallel batches"), so counting from outside would add up concurrent
    transactions: there each
    write transaction's rows are read from the server's own account of that transaction right before it
    commits. PostgreSQL: the deletes of ``pg_stat_xact_user_tables``, less their value as the
    transaction began (the view also holds earlier transactions' counts until the backend flushes
    them, at most once a second, never inside a transaction); MySQL: ``trx_rows_modified`` of
    ``information_schema.innodb_trx`` (every row the transaction changed, marker rows included)."""

    def __init__(self, harness: Any, backend: Any, live: str = "") -> None:
        self.harness, self.live = harness, live
        self.counts: list[int] = []
        self.deleted: list[int] = []  # PostgreSQL: per transaction, from the server's statistics
        # Counting from outside works while the purge writes on one connection at a time (the default).
        self.parallel = backend.dialect.parallel_batches > 1
        writes = backend.dialect.write_options()

        def write(conn: Any) -> bool:
            options = conn.get_execution_options()
            return all(options.get(k) == v for k, v in writes.items())

        def deletes(conn: Any) -> int:
            driver = conn.connection.driver_connection
            if harness.name == "mysql":
                with driver.cursor() as cur:
                    cur.execute("SELECT coalesce(sum(trx_rows_modified), 0) FROM information_schema.innodb_trx "
                                "WHERE trx_mysql_thread_id = CONNECTION_ID()")
                    return int(cur.fetchone()[0])
            return int(driver.execute("SELECT coalesce(sum(n_tup_del), 0) FROM pg_stat_xact_user_tables")
                       .fetchone()[0])

        def begin(conn: Any) -> None:
            if write(conn) and not self.parallel:
                self.counts.append(self.rows())
            elif write(conn):
                conn.info["deletes_before"] = deletes(conn) if harness.name == "postgres" else 0

        def commit(conn: Any) -> None:
            if write(conn) and self.parallel and "deletes_before" in conn.info:
                n = deletes(conn) - conn.info.pop("deletes_before")
                if n:
                    self.deleted.append(n)

        event.listen(backend.engine, "begin", begin)
        event.listen(backend.engine, "commit", commit)

    def rows(self) -> int:
        with self.harness.raw().connect() as conn:  # the live run's events are the engine's, not ours
            return sum(conn.execute(text(f"SELECT COUNT(*) FROM {t}" + (" WHERE run_id <> :live" if t == "events"
                                                                       else "")), {"live": self.live}).scalar_one()
                       for t in TABLES)

    def per_transaction(self) -> list[int]:
        if self.parallel:
            return list(self.deleted)
        marks = [*self.counts, self.rows()]
        return [a - b for a, b in zip(marks, marks[1:]) if a != b]


def test_no_write_transaction_deletes_more_than_max_rows_beside_a_live_engine(sql: Any) -> None:
    """300 runs of 300 events (90,000 rows) in the default batch; pyworkflow appends events meanwhile.

    Asserted whatever the machine's load: every transaction deletes at most ``max_rows`` rows; no engine
    write fails or waits within a second of its busy timeout; on SQLite each transaction's CPU time is
    under the stated 1 s. Its wall clock (0.15-0.3 s on a quiet machine) is measured by
    ``python -m tests.sql.live_writer``, not asserted here."""
    fill_heavy(sql, 300, 300)
    live = live_run(sql)
    backend = sql.retention()
    clock = WriteClock(backend)
    rows = RowsPerWrite(sql, backend, live)

    async def record(pw: Any, rng: random.Random) -> None:
        await pw.record_event(event_of(live))

    with EngineThread(sql, record, pause=0.005) as engine:
        time.sleep(0.2)
        report = backend.delete_old_runs(CUTOFF)
        time.sleep(0.2)
    assert not engine.errors, engine.errors[:3]
    assert engine.calls > 10, "the engine did not get to write"
    assert (report.runs, report.counts["events"]) == (300, 90_000)
    sizes = rows.per_transaction()
    assert len(sizes) >= 3 and sizes[0] <= FIRST_BUDGET[sql.name], sizes
    assert max(sizes) <= DEFAULT_MAX_ROWS[sql.name], sizes
    assert backend.max_rows == DEFAULT_MAX_ROWS[sql.name]
    if sql.name == "sqlite":  # the transaction's own work, whatever else the machine runs
        assert max(clock.cpu) < LIMIT_S, (sorted(clock.cpu)[-5:], sorted(clock.durations)[-5:])
    assert engine.slowest < ENGINE_WAIT_S, f"a record_event waited {engine.slowest:.2f}s (busy timeout: 5 s)"
    items = sql.inventory()
    assert run_ids(items) == {live}
    assert sum(1 for i in items if i.kind == "events") == engine.calls


def _heavy_run(harness: Any, run_id: str = "run_big", events: int = 2500, checkpoints: int = 700,
               parent: str | None = None) -> None:
    backend = harness.retention()
    old = backend.db_time(OLD)
    insert_rows(harness, "workflow_runs", [run_row(harness, run_id, "completed", OLD, parent=parent)])
    insert_rows(harness, "events", [
        {"event_id": f"evt_{run_id}_{n}", "run_id": run_id, "sequence": n, "type": "step.completed",
         "timestamp": old, "data": "{}"} for n in range(events)])
    insert_rows(harness, "steps", [
        {"step_id": f"step_{run_id}_{n}", "run_id": run_id, "step_name": "s", "status": "completed",
         "created_at": old, "input_args": "[]", "input_kwargs": "{}"} for n in range(300)])
    insert_rows(harness, "checkpoints", [
        {"step_run_id": f"{run_id}:step_{n}", "data": backend.dialect.json({"n": n}), "created_at": old,
         "updated_at": old}
        for n in range(checkpoints)])


def test_a_run_with_more_rows_than_max_rows_goes_in_several_bounded_transactions(sql: Any) -> None:
    _heavy_run(sql)  # 3,501 rows
    insert_rows(sql, "workflow_runs", [run_row(sql, "run_small", "completed", OLD)])
    backend = sql.retention(max_rows=1000)
    rows = RowsPerWrite(sql, backend)
    dry = backend.delete_old_runs(CUTOFF, dry_run=True)
    report = backend.delete_old_runs(CUTOFF)
    sizes = rows.per_transaction()
    assert (report.runs, report.counts["events"], report.counts["steps"], report.counts["checkpoints"]) == \
        (2, 2500, 300, 700)
    assert dict(dry.counts) == dict(report.counts)
    if sql.name == "postgres":  # the engine's cascade cannot be held back: the heavy run in one transaction
        assert sorted(sizes) == [1, 3501], sizes
    else:
        assert len(sizes) >= 4 and max(sizes) <= 1000 + 2, sizes
    assert not run_ids(sql.inventory())
    assert_no_orphans(sql.inventory())


def test_a_run_with_more_step_checkpoints_than_max_rows_goes_in_bounded_transactions(sql: Any) -> None:
    """Checkpoints are counted where they are read, inside the transaction: over the budget, it rolls
    back before deleting anything and the batch goes in steps."""
    _heavy_run(sql, events=10, checkpoints=2500)
    insert_rows(sql, "workflow_runs", [run_row(sql, "run_small", "completed", OLD)])
    backend = sql.retention(max_rows=1000)
    rows = RowsPerWrite(sql, backend)
    report = backend.delete_old_runs(CUTOFF)
    sizes = rows.per_transaction()
    assert (report.runs, report.counts["checkpoints"], report.counts["events"]) == (2, 2500, 10)
    if sql.name == "postgres":  # rolled back, then the part in one transaction (the cascade cannot wait)
        assert sizes == [2500 + 10 + 300 + 2], sizes
    else:
        assert len(sizes) >= 3 and max(sizes) <= 1000 + 2, sizes
    assert not run_ids(sql.inventory())
    assert_no_orphans(sql.inventory())


def test_a_heavy_family_goes_records_first_then_rows_across_transactions(sql: Any) -> None:
    _heavy_run(sql, "run_parent", events=1200, checkpoints=10)
    _heavy_run(sql, "run_child", events=1200, checkpoints=10, parent="run_parent")
    backend = sql.retention(max_rows=1000)
    report = backend.delete_old_runs(CUTOFF)
    assert (report.runs, report.counts["events"]) == (2, 2400)
    assert not run_ids(sql.inventory())
    assert_no_orphans(sql.inventory())


def test_a_run_revived_before_its_commit_point_keeps_every_row(sql: Any) -> None:
    """The commit transaction re-checks the runs under lock: a run revived before it keeps all it has,
    and no later step touches it (tests/sql/test_revived_runs.py revives it at every boundary)."""
    _heavy_run(sql)
    backend = sql.retention(max_rows=1000)
    calls: list[tuple[str, ...]] = []

    def engine_revives_it(info: Any) -> None:
        calls.append(info.run_ids)
        with sql.raw().begin() as conn:
            conn.execute(text("UPDATE workflow_runs SET status = 'running', updated_at = :t WHERE run_id = :r"),
                         {"t": backend.db_time(OLD.replace(year=OLD.year + 1)), "r": "run_big"})

    report = backend.delete_old_runs(CUTOFF, on_batch=engine_revives_it)
    items = sql.inventory()
    assert run_ids(items) == {"run_big"} and report.runs == 0 and report.changed == 1
    left = Counter(i.kind for i in items)
    assert (left["events"], left["steps"], left["checkpoints"]) == (2500, 300, 700)
    assert not report.counts
    assert len(calls) == 1, "a step ran after the run was found changed"


def test_a_purge_stopped_between_steps_is_finished_by_the_next(sql: Any) -> None:
    _heavy_run(sql)
    backend = sql.retention(max_rows=1000)
    steps: list[int] = []

    def stop_at_the_third(info: Any) -> None:
        steps.append(info.index)
        if len(steps) == 3:
            raise PurgeStopped("lease lost")

    first = backend.delete_old_runs(CUTOFF, on_batch=stop_at_the_third)
    assert first.runs == 1  # the record goes first (the commit point): the engine cannot revive the run
    assert not run_ids(sql.inventory())
    if sql.name == "postgres":  # one transaction: nothing left to stop in
        assert not first.stopped and steps == [1]
    else:
        assert first.stopped and any(i.run_id == "run_big" for i in sql.inventory())
    second = backend.delete_old_runs(CUTOFF)
    assert second.runs == 0 and not sql.inventory()
    assert sum(first.counts.values()) + sum(second.counts.values()) == 3501
    assert_no_orphans(sql.inventory())


def test_the_row_budget_shrinks_when_a_transaction_is_slow(sqlite_harness: Any) -> None:
    h = sqlite_harness
    fill_heavy(h, 40, 100)
    backend = h.retention(max_rows=2000, batch_size=10)
    budgets: list[int] = []
    original = type(backend.client).write

    def slow_write(self: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, body, *args, **kwargs)
        time.sleep(2 * self.transaction_target)  # as if the disk were slow
        budgets.append(self.row_budget)
        return result

    type(backend.client).write = slow_write  # type: ignore[method-assign]
    try:
        backend.delete_old_runs(CUTOFF)
    finally:
        type(backend.client).write = original  # type: ignore[method-assign]
    assert budgets[0] == 2000 and min(budgets) == backend.client.min_rows


def test_a_budget_that_shrinks_inside_a_batch_wastes_no_transaction(sqlite_harness: Any) -> None:
    """A batch cut in two parts; the first part's transaction is slow, so the budget shrinks before the
    second: the second is cut again for the new budget before it starts, never rolled back and redone in
    steps (test_the_parts_left_of_a_batch_are_cut_again_when_the_budget_shrinks)."""
    h = sqlite_harness
    fill_heavy(h, 40, 100)  # 4,040 rows: two parts of at most 3,000
    backend = h.retention(max_rows=3000, batch_size=40)
    rollbacks: list[int] = []
    event.listen(backend.engine, "rollback", lambda conn: rollbacks.append(1))
    original = type(backend.client).write

    def slow_write(self: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, body, *args, **kwargs)
        time.sleep(4 * self.transaction_target)  # the budget falls to min_rows
        return result

    type(backend.client).write = slow_write  # type: ignore[method-assign]
    try:
        report = backend.delete_old_runs(CUTOFF)
    finally:
        type(backend.client).write = original  # type: ignore[method-assign]
    assert report.runs == 40 and report.batches > 2
    assert not rollbacks


def test_the_parts_left_of_a_batch_are_cut_again_when_the_budget_shrinks(sql: Any) -> None:
    """400 runs of 100 events (40,400 rows) in one batch of the default size, cut by the first budget into
    parts; the first part's transaction is slow (heavy payloads, a slow disk), so the budget shrinks: every
    later transaction deletes at most the budget in force when it begins. Before, the rest of the batch kept
    the first cut: on MySQL (batches of 2,000 runs) ten more parts of 3,700 rows against a budget of 1,250,
    each as slow as the first."""
    fill_heavy(sql, 400, 100)
    backend = sql.retention()
    rows = RowsPerWrite(sql, backend)
    client = backend.client
    budgets: list[int] = []  # the row budget as each write transaction begins (in RowsPerWrite's order)
    writes = backend.dialect.write_options()
    event.listen(backend.engine, "begin", lambda conn: budgets.append(client.row_budget) if all(
        conn.get_execution_options().get(k) == v for k, v in writes.items()) else None)
    original = client.write
    slow = [True]

    def slow_first(body: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(body, *args, **kwargs)
        if slow:
            slow.clear()
            time.sleep(4 * client.transaction_target)  # as if its rows were heavy, or the disk slow
        return result

    client.write = slow_first  # type: ignore[method-assign]
    report = backend.delete_old_runs(CUTOFF)
    assert (report.runs, report.counts["events"]) == (400, 40_000)
    marks = [*rows.counts, rows.rows()]
    sizes = [(a - b, budget) for a, b, budget in zip(marks, marks[1:], budgets) if a != b]
    assert len(sizes) >= 2, sizes
    over = [(n, budget) for n, budget in sizes[1:] if n > budget]
    assert not over, f"transactions over the budget they began with (rows, budget): {over}; all: {sizes}"
    assert not run_ids(sql.inventory())


@pytest.mark.parametrize("value", [0, -5, 1.5, "many", True])
def test_max_rows_must_be_a_positive_whole_number(sqlite_harness: Any, value: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_rows"):
        sqlite_harness.retention(max_rows=value)


def test_unchanged_store_after_a_dry_run_of_heavy_runs(sql: Any) -> None:
    _heavy_run(sql)
    before = snapshot(sql.inventory())
    report = sql.retention(max_rows=1000).delete_old_runs(CUTOFF, dry_run=True)
    assert report.runs == 1 and report.counts["events"] == 2500
    assert snapshot(sql.inventory()) == before


def test_the_transaction_time_target_is_an_option_and_a_url_parameter(sql: Any) -> None:
    """``transaction_s`` (default 0.5 s): a maintenance window with no engine writing may allow longer
    transactions, fewer commits (issue 17). Given in the URL, it needs no other setting."""
    assert sql.retention().client.transaction_target == 0.5
    assert sql.retention(transaction_s=5).client.transaction_target == 5.0
    url = sql.retention().url
    joined = f"{url}{'&' if '?' in url else '?'}transaction_s=2.5"
    from workflow_retention.backends import by_url

    backend = by_url(joined)
    assert backend.client.transaction_target == 2.5
    backend.close()
    for bad in ("0", "-1", "soon", "7200"):
        with pytest.raises(ConfigurationError, match="transaction_s"):
            sql.retention(transaction_s=bad)

