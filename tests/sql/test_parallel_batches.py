"""Parallel batches (``parallel_batches=2``) on PostgreSQL and MySQL/MariaDB: the same purge as one batch at a
time (exact counts, holds, zero orphans), ``on_batch`` before each batch with no transaction of the purge open
and a stop there honoured, a run revived at its boundary kept whole (docs/backends/sql.md, "Parallel batches").
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text

from tests.conformance.checks import assert_no_orphans, items_of, run_ids
from workflow_retention.seed import generate

NOW = datetime.now(UTC).replace(microsecond=0)
CUTOFF = NOW - timedelta(days=30)


class Interrupt(Exception):
    pass


def parallel(server: Any, **options: Any) -> Any:
    return server.retention(parallel_batches=2, batch_size=10, **options)


def idle(server: Any, connections: list[Any]) -> bool:
    """True when none of the purge's connections (its session and its writers') is in a transaction."""
    if server.name == "postgres":
        import psycopg

        return all(c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE for c in connections)
    with server.raw().connect() as conn:
        ids = ", ".join(str(c.thread_id()) for c in connections)
        return conn.exec_driver_sql(f"SELECT COUNT(*) FROM information_schema.innodb_trx "
                                    f"WHERE trx_mysql_thread_id IN ({ids})").scalar_one() == 0


def test_parallel_batches_delete_what_a_dry_run_counts_and_leave_no_orphans(server: Any) -> None:
    server.retention().seed(generate(300, now=NOW, seed=7))
    dry = server.retention().delete_old_runs(CUTOFF, dry_run=True)
    backend = parallel(server)
    assert backend.dialect.parallel_batches == 2
    report = backend.delete_old_runs(CUTOFF)
    assert report.runs == dry.runs > 50 and report.held == dry.held and report.changed == 0
    assert dict(report.counts) == dict(dry.counts)
    assert report.batches >= 6, "too few batches for waves of two"
    assert_no_orphans(server.inventory())
    again = parallel(server).delete_old_runs(CUTOFF)
    assert again.runs == 0 and sum(again.counts.values()) == 0 and again.held == dry.held


@pytest.mark.parametrize("k", [1, 4])
def test_on_batch_runs_with_no_transaction_open_and_a_stop_there_is_clean(server: Any, k: int) -> None:
    server.retention().seed(generate(200, now=NOW, seed=8))
    dry = server.retention().delete_old_runs(CUTOFF, dry_run=True)
    backend = parallel(server)
    connections: list[Any] = []
    event.listen(backend.engine, "connect", lambda dbapi, record: connections.append(dbapi))
    seen: list[bool] = []

    def on_batch(info: Any) -> None:
        seen.append(idle(server, connections))
        if info.index > k:
            raise Interrupt(f"after {k} batches")

    with pytest.raises(Interrupt):
        backend.delete_old_runs(CUTOFF, on_batch=on_batch)
    assert len(seen) == k + 1 and all(seen), seen
    assert len(connections) >= 2 or k == 1  # the session and at least one writer once a wave has run
    partial = run_ids(server.inventory())
    assert_no_orphans(server.inventory())
    report = parallel(server).delete_old_runs(CUTOFF)
    assert 0 < report.runs < dry.runs and len(partial) - report.runs == len(run_ids(server.inventory()))
    assert server.retention().delete_old_runs(CUTOFF, dry_run=True).runs == 0
    assert_no_orphans(server.inventory())


def test_a_run_revived_at_its_boundary_keeps_all_its_data(server: Any) -> None:
    server.retention().seed(generate(200, now=NOW, seed=9, child_share=0.0))
    backend = parallel(server)
    touched: dict[str, Any] = {}

    def engine_revives_one(info: Any) -> None:
        if touched or info.index < 3:
            return
        victim = info.run_ids[-1]
        with server.raw().begin() as conn:
            conn.execute(text("UPDATE workflow_runs SET status = 'running', updated_at = :now WHERE run_id = :id"),
                         {"now": backend.db_time(NOW), "id": victim})
        touched["id"] = victim
        touched["items"] = items_of(server.inventory(), {victim})

    report = backend.delete_old_runs(CUTOFF, on_batch=engine_revives_one)
    assert touched and report.changed == 1
    items = server.inventory()
    assert items_of(items, {touched["id"]}) == touched["items"], "the revived run lost data"
    assert_no_orphans(items)


def test_max_runs_holds_with_parallel_batches(server: Any) -> None:
    """Review of issue 21: the cap compared each batch with ``report.runs``, which a wave's batches do not raise
    until the wave has run, so with waves of two a purge deleted up to a batch more than the cap."""
    from workflow_retention.exceptions import MaxRunsReached
    from workflow_retention.rules import capped

    server.retention().seed(generate(300, now=NOW, seed=7))
    before = run_ids(server.inventory())
    with pytest.raises(MaxRunsReached):
        parallel(server).delete_old_runs(CUTOFF, on_batch=capped(None, 15))
    deleted = len(before - run_ids(server.inventory()))
    assert 0 < deleted <= 15, deleted
    assert_no_orphans(server.inventory())
