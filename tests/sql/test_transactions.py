"""Transactions on the real servers: bounded batches, timeouts, deadlock retry, loud failures."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError

from tests.conformance.checks import assert_no_orphans, run_ids, snapshot
from tests.sql.conftest import engine_like_pyworkflow, holds_nothing, insert_rows, run_row
from workflow_retention.backends.sql.purge import Purge
from workflow_retention.exceptions import StorageError
from workflow_retention.seed import generate

NOW = datetime.now(UTC).replace(microsecond=0)
CUTOFF = NOW - timedelta(days=30)
OLD = NOW - timedelta(days=40)
RUNS = [f"run_dl_{c}" for c in "abcdef"]


def old_runs(harness: Any, ids: list[str] = RUNS) -> None:
    insert_rows(harness, "workflow_runs", [run_row(harness, r, "completed", OLD) for r in ids])


class Transactions:
    """Records each transaction of an engine (duration) and every statement sent."""

    def __init__(self, engine: Any) -> None:
        self.done: list[dict[str, Any]] = []
        self.statements: list[str] = []
        self.offsets: list[Any] = []
        self._open: dict[int, dict[str, Any]] = {}  # SQLAlchemy connection -> its open transaction
        event.listen(engine, "begin", self._begin)
        event.listen(engine, "commit", self._end)
        event.listen(engine, "rollback", self._end)
        event.listen(engine, "after_cursor_execute", self._statement)

    def _begin(self, conn: Any) -> None:
        self._open[id(conn)] = {"started": time.perf_counter()}

    def _end(self, conn: Any) -> None:
        tx = self._open.pop(id(conn), None)
        if tx is not None:
            tx["seconds"] = time.perf_counter() - tx["started"]
            self.done.append(tx)

    def _statement(self, conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        self.statements.append(statement)
        if " OFFSET " in statement.upper():  # SQLAlchemy's SQLite LIMIT always adds OFFSET, bound to 0
            self.offsets.append(list(parameters.values())[-1] if isinstance(parameters, dict) else parameters[-1])


def test_every_transaction_is_bounded_by_one_batch(sql: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = sql.retention(batch_size=20)
    backend.seed(generate(200, now=NOW, seed=5, child_share=0.0))
    # A slow machine must not shrink the row budget: a batch over it rolls back and is redone, records
    # first (tests/sql/test_bounded_transactions.py), which would call the cascade twice for one batch.
    backend.client.transaction_target = 60.0
    tx = Transactions(backend.engine)
    cascades: list[tuple[int, int]] = []  # (runs, the transaction it ran in; batches may run at once)
    original = Purge._cascade

    def cascade(self: Any, conn: Any, plan: Any, runs: list, dry_run: bool) -> Any:
        assert conn.in_transaction() and not dry_run
        cascades.append((len(runs), id(tx._open[id(conn)])))  # each transaction's record stays in tx.done
        return original(self, conn, plan, runs, dry_run)

    monkeypatch.setattr(Purge, "_cascade", cascade)
    report = backend.delete_old_runs(CUTOFF, on_batch=lambda info: None)
    assert report.runs > 60 and len(cascades) == -(-report.runs // 20)
    assert all(n <= 20 for n, _ in cascades) and sum(n for n, _ in cascades) == report.runs
    assert len({done for _, done in cascades}) == len(cascades), "two batches shared a transaction"
    assert max(t["seconds"] for t in tx.done) < 5
    selects = [s for s in tx.statements if "FROM workflow_runs" in s and "LIMIT" in s.upper()]
    assert selects and set(tx.offsets) <= {0}
    assert all("created_at <" in s and "ORDER BY workflow_runs.created_at, workflow_runs.run_id" in s
               for s in selects if "status IN" in s)


def test_no_transaction_or_lock_is_held_while_on_batch_runs(sql: Any) -> None:
    backend = sql.retention(batch_size=2)
    old_runs(sql)
    seen: list[bool] = []
    backend.delete_old_runs(CUTOFF, on_batch=lambda info: seen.append(holds_nothing(sql, backend)))
    assert len(seen) == 3 and all(seen)


def test_session_timeouts_are_set_on_every_connection(sql: Any) -> None:
    backend = sql.retention(statement_timeout=12.5, lock_timeout=3)
    backend.seed([])
    with backend.engine.connect() as conn:
        if sql.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 3000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
        elif sql.name == "postgres":
            show = {k: conn.exec_driver_sql(f"SHOW {k}").scalar_one() for k in
                    ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout",
                     "transaction_isolation")}
            assert show == {"statement_timeout": "12500ms", "lock_timeout": "3s",
                            "idle_in_transaction_session_timeout": "1min", "transaction_isolation": "read committed"}
        else:
            mariadb = "mariadb" in conn.exec_driver_sql("SELECT VERSION()").scalar_one().lower()
            row = conn.exec_driver_sql("SELECT @@innodb_lock_wait_timeout, "
                                       f"@@{'tx_isolation' if mariadb else 'transaction_isolation'}").one()
            assert tuple(row) == (3, "READ-COMMITTED")
            if mariadb:
                assert float(conn.exec_driver_sql("SELECT @@max_statement_time").scalar_one()) == 12.5
            else:
                assert conn.exec_driver_sql("SELECT @@max_execution_time").scalar_one() == 12500


def test_a_statement_over_the_timeout_is_cancelled(server: Any) -> None:
    backend = server.retention(statement_timeout=0.3)
    sleep = "SELECT pg_sleep(3)" if server.name == "postgres" else "SELECT SLEEP(3)"
    started = time.monotonic()
    with backend.engine.connect() as conn:
        try:
            result = conn.exec_driver_sql(sleep).scalar_one()
        except DBAPIError:
            result = "cancelled"
    assert time.monotonic() - started < 2.5
    assert result in ("cancelled", 1)  # MySQL 8 ends an interrupted SLEEP() with 1 instead of an error


def _hold_lock(harness: Any, run_id: str, locked: threading.Event, release: threading.Event) -> None:
    engine = engine_like_pyworkflow(harness)
    with engine.connect() as conn:
        if harness.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.begin()
            conn.execute(text("SELECT run_id FROM workflow_runs WHERE run_id = :r FOR UPDATE"), {"r": run_id})
        locked.set()
        release.wait(20)
        conn.rollback() if harness.name != "sqlite" else conn.exec_driver_sql("ROLLBACK")
    engine.dispose()


def test_a_lock_wait_timeout_fails_loudly_and_changes_nothing(sql: Any) -> None:
    old_runs(sql)
    insert_rows(sql, "events", [{"event_id": f"evt_{r}", "run_id": r, "sequence": 0, "type": "workflow.started",
                                 "timestamp": sql.retention().db_time(OLD), "data": "{}"} for r in RUNS])
    before = snapshot(sql.inventory())
    locked, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(sql, RUNS[-1], locked, release))
    holder.start()
    try:
        assert locked.wait(10)
        backend = sql.retention(lock_timeout=1)
        started = time.monotonic()
        with pytest.raises(StorageError) as failure:
            backend.delete_old_runs(CUTOFF)
        assert time.monotonic() - started < 8
    finally:
        release.set()
        holder.join()
    assert isinstance(failure.value.__cause__, DBAPIError)
    assert backend.client.retries == 0
    assert snapshot(sql.inventory()) == before, "a failed batch must roll back entirely"


def _deadlock_partner(harness: Any, started: threading.Event, outcome: dict[str, Any]) -> None:
    """Lock the batch's last run, wait for the purge to block on it, then ask for its first run."""
    engine = engine_like_pyworkflow(harness)
    try:
        with engine.connect() as conn, conn.begin():
            if harness.name == "postgres":
                conn.exec_driver_sql("SET LOCAL deadlock_timeout = '10s'")  # the purge detects it first
            else:
                conn.exec_driver_sql("INSERT INTO wr_weight (id) SELECT seq FROM wr_seq")  # a heavier victim
            conn.execute(text("SELECT run_id FROM workflow_runs WHERE run_id = :r FOR UPDATE"), {"r": RUNS[-1]})
            started.set()
            time.sleep(0.5)  # the purge locks RUNS[:-1] and waits for RUNS[-1]
            conn.execute(text("SELECT run_id FROM workflow_runs WHERE run_id = :r FOR UPDATE"), {"r": RUNS[0]})
            time.sleep(0.2)
        outcome["ok"] = True
    except Exception as exc:
        outcome["error"] = exc
    finally:
        engine.dispose()


def test_a_real_deadlock_is_retried(server: Any) -> None:
    old_runs(server)
    if server.name == "mysql":
        with server.raw().begin() as conn:
            conn.exec_driver_sql("CREATE TABLE wr_seq (seq INT PRIMARY KEY)")
            conn.exec_driver_sql("CREATE TABLE wr_weight (id INT PRIMARY KEY)")
            conn.exec_driver_sql("INSERT INTO wr_seq VALUES " + ",".join(f"({i})" for i in range(500)))
    backend = server.retention()
    outcome: dict[str, Any] = {}
    partner: list[threading.Thread] = []

    def on_batch(info: Any) -> None:
        started = threading.Event()
        partner.append(threading.Thread(target=_deadlock_partner, args=(server, started, outcome)))
        partner[0].start()
        assert started.wait(10)

    report = backend.delete_old_runs(CUTOFF, on_batch=on_batch)
    partner[0].join(30)
    assert outcome.get("ok"), outcome
    assert backend.client.retries >= 1, "the purge was not the deadlock victim: nothing was retried"
    assert report.runs == len(RUNS) and report.changed == 0
    assert not run_ids(server.inventory()) & set(RUNS)
    assert_no_orphans(server.inventory())
