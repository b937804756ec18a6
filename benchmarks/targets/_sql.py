"""What the SQL benchmark targets share: our instrumented purge, the physical floor, rows left.

* ``run_ours``: ``by_url(url).delete_old_runs(cutoff)`` with SQLAlchemy engine
  events recording every transaction (begin to commit), so the longest one
  is reported next to the total.
* ``floor``: the least work the database can do for the same result, all in
  one transaction: the deletable run ids (terminal, old, and no surviving
  descendant, found with one recursive CTE) materialised once, then one raw
  ``DELETE ... WHERE run_id IN (SELECT run_id FROM doomed)`` per table.
* ``rows_left``: rows per table and orphans after a purge, so the slots can be
  checked to leave the same store.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy import column, event, select, table, text

from workflow_retention.backends import by_url
from workflow_retention.planning import TERMINAL_STATUSES, chunked, key_owners, key_prefixes

TABLES = ("workflow_runs", "events", "steps", "hooks", "cancellation_flags", "checkpoints")
TERMINAL = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES))
#: SQL of "the run_id part of a checkpoint key", per dialect.
OWNER = {"sqlite": "substr(step_run_id, 1, instr(step_run_id, ':') - 1)",
         "postgresql": "split_part(step_run_id, ':', 1)",
         "mysql": "SUBSTRING_INDEX(step_run_id, ':', 1)"}


class TxClock:
    """Duration of every transaction on an engine."""

    def __init__(self, engine: Any) -> None:
        self.durations: list[float] = []
        self._started: dict[int, float] = {}
        event.listen(engine, "begin", lambda conn: self._started.__setitem__(id(conn), time.perf_counter()))
        event.listen(engine, "commit", self._end)
        event.listen(engine, "rollback", self._end)

    def _end(self, conn: Any) -> None:
        started = self._started.pop(id(conn), None)
        if started is not None:
            self.durations.append(time.perf_counter() - started)


def run_ours(url: str, cutoff: datetime, batch: int) -> dict[str, Any]:
    """Our purge; ``BENCH_OPTIONS`` (JSON, e.g. ``{"parallel_batches": 1}``) adds backend options, for A/B runs."""
    backend = by_url(url, batch_size=batch or None, **json.loads(os.environ.get("BENCH_OPTIONS") or "{}"))
    clock = TxClock(backend.engine)
    report = backend.delete_old_runs(cutoff)
    backend.close()
    return {"runs": report.runs, "held": report.held, "batches": report.batches, "counts": dict(report.counts),
            "transactions": len(clock.durations), "longest_tx_s": round(max(clock.durations, default=0), 4)}


def doomed_query(cutoff: Any) -> tuple[str, dict[str, Any]]:
    expired = f"status IN ({TERMINAL}) AND updated_at < :cutoff"
    sql = (f"WITH RECURSIVE blocked(run_id) AS ("
           f" SELECT parent_run_id FROM workflow_runs WHERE parent_run_id IS NOT NULL AND NOT ({expired})"
           f" UNION SELECT r.parent_run_id FROM workflow_runs r JOIN blocked b ON r.run_id = b.run_id"
           f" WHERE r.parent_run_id IS NOT NULL)"
           f" SELECT run_id FROM workflow_runs WHERE {expired} AND run_id NOT IN"
           f" (SELECT run_id FROM blocked WHERE run_id IS NOT NULL)")
    return sql, {"cutoff": cutoff}


def floor(url: str, cutoff: datetime) -> dict[str, Any]:
    backend = by_url(url, statement_timeout=7200, lock_timeout=7200)  # one statement per table: no limit
    dialect = backend.engine.dialect.name
    doomed, params = doomed_query(backend.db_time(cutoff))
    create = {"sqlite": "CREATE TEMP TABLE doomed AS ", "postgresql": "CREATE TEMP TABLE doomed ON COMMIT DROP AS ",
              "mysql": "CREATE TEMPORARY TABLE doomed (PRIMARY KEY (run_id)) "}[dialect]
    started = time.perf_counter()
    with backend.engine.connect() as conn:
        conn.execution_options(**backend.dialect.write_options())
        with conn.begin():
            conn.execute(text(create + doomed), params)
            if dialect == "postgresql":
                conn.exec_driver_sql("ANALYZE doomed")
            counts = {}
            for table in ("events", "steps", "hooks", "cancellation_flags"):
                counts[table] = conn.exec_driver_sql(
                    f"DELETE FROM {table} WHERE run_id IN (SELECT run_id FROM doomed)").rowcount
            counts["checkpoints"] = conn.exec_driver_sql(
                f"DELETE FROM checkpoints WHERE {OWNER[dialect]} IN (SELECT run_id FROM doomed)").rowcount
            order = " ORDER BY nesting_depth DESC" if dialect == "mysql" else ""  # MySQL checks FKs row by row
            counts["runs"] = conn.exec_driver_sql(
                f"DELETE FROM workflow_runs WHERE run_id IN (SELECT run_id FROM doomed){order}").rowcount
            if dialect == "mysql":
                conn.exec_driver_sql("DROP TEMPORARY TABLE doomed")
    seconds = time.perf_counter() - started
    backend.close()
    return {"runs": counts.pop("runs"), "counts": counts, "transactions": 1, "longest_tx_s": round(seconds, 4)}


def checkpoint_orphans(conn: Any, fold: Callable[[str], str], page: int = 10_000) -> int:
    """Step checkpoints no prefix of whose key names a run: the ownership rule of the purge and the sweep
    (:func:`~workflow_retention.planning.key_owners`: ``a:b:s`` is the run ``a:b``'s, not ``a``'s), read in
    keyset pages of ``page`` keys; ``fold``: run ids as the store compares them (MySQL ignores case)."""
    def existing(prefixes: set[str]) -> set[str]:
        found: set[str] = set()
        for chunk in chunked(sorted(prefixes), 1000):
            found.update(map(fold, conn.execute(select(runs.c.run_id).where(runs.c.run_id.in_(chunk))).scalars()))
        return {p for p in prefixes if fold(p) in found}

    runs = table("workflow_runs", column("run_id"))
    checkpoints = table("checkpoints", column("step_run_id"))
    orphans, cursor = 0, None
    while True:
        stmt = select(checkpoints.c.step_run_id).order_by(checkpoints.c.step_run_id).limit(page)
        if cursor is not None:
            stmt = stmt.where(checkpoints.c.step_run_id > cursor)
        keys = list(conn.execute(stmt).scalars())
        if not keys:
            return orphans
        cursor = keys[-1]
        owners = key_owners(keys, existing)
        orphans += sum(1 for key, owner in owners.items() if owner is None and key_prefixes(key))
        if len(keys) < page:
            return orphans


def rows_left(url: str) -> dict[str, Any]:
    backend = by_url(url)
    out: dict[str, Any] = {}
    with backend.engine.connect() as conn:
        for table in TABLES:
            out[f"left_{table}"] = conn.exec_driver_sql(f"SELECT COUNT(*) FROM {table}").scalar_one()
        orphans = sum(conn.exec_driver_sql(
            f"SELECT COUNT(*) FROM {t} x WHERE NOT EXISTS (SELECT 1 FROM workflow_runs r WHERE r.run_id = x.run_id)"
        ).scalar_one() for t in ("events", "steps", "hooks", "cancellation_flags"))
        orphans += checkpoint_orphans(conn, backend.dialect.id_fold)
        out["orphans_left"] = orphans
    backend.close()
    return out


async def connected(storage: Any) -> Any:
    """A pyworkflow storage backend after its own ``connect()``."""
    await storage.connect()
    return storage


def pyworkflow_baseline(open_storage: Callable[[], Awaitable[Any]], cutoff: datetime) -> dict[str, Any]:
    """pyworkflow-engine's ``delete_old_runs(cutoff)`` on the storage ``open_storage()`` returns, timed."""
    async def purge() -> int:
        storage = await open_storage()
        try:
            return await storage.delete_old_runs(cutoff)
        finally:
            await storage.disconnect()

    return timed_baseline(lambda: asyncio.run(purge()))


def timed_baseline(call: Any) -> dict[str, Any]:
    """Run pyworkflow-engine's own purge (one transaction); a failure is reported, not raised."""
    started = time.perf_counter()
    try:
        runs = call()
    except Exception as exc:  # noqa: BLE001 - the baseline's failure is a result
        seconds = time.perf_counter() - started
        return {"runs": 0, "baseline_error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                "longest_tx_s": round(seconds, 4), "transactions": 1}
    return {"runs": runs, "longest_tx_s": round(time.perf_counter() - started, 4), "transactions": 1}
