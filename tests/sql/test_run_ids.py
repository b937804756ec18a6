"""Run ids with ':' on the SQL backends: a derived key belongs to the longest prefix that is an existing run.

pyworkflow names schedule-triggered runs ``sched_<schedule_id[:8]>_<hex>`` and users choose
schedule ids, so a run id may extend another run's id past a ':' (``a`` and ``a:b``), and a
step checkpoint ``a:b:s`` then belongs to ``a:b``, not to ``a``. The purge and the orphan
sweep decide with :func:`workflow_retention.planning.key_owners`, on every dialect and
whichever way the checkpoints are matched (primary-key range, escaped LIKE).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from tests.sql.conftest import insert_rows, run_row
from tests.sql.test_dialects import checkpoint_keys, checkpoint_rows

NOW = datetime.now(UTC).replace(microsecond=0)
CUTOFF = NOW - timedelta(days=30)
OLD = NOW - timedelta(days=40)

#: key -> the run that owns it (None: an orphan), for the runs of _store().
OWNERS = {
    "a:s1": "a", "a:x:y": "a",  # no run a:x, so a:x:y is a's
    "a:b:s1": "a:b", "a:b:c": "a:b",  # the live run a:b owns them, though a goes
    "a:b:c:s1": "a:b:c",  # the longest existing prefix wins
    "x:1": "x",
}
#: Runs of _store() and whether they expired.
RUNS = {"a": True, "a:b": False, "a:b:c": True, "x": True}


def _store(harness: Any) -> None:
    insert_rows(harness, "workflow_runs", [
        run_row(harness, run_id, "completed" if gone else "running", OLD) for run_id, gone in RUNS.items()])
    insert_rows(harness, "checkpoints", checkpoint_rows(harness, list(OWNERS)))


def _going() -> set[str]:
    return {key for key, owner in OWNERS.items() if RUNS[owner]}


@pytest.mark.parametrize("batch_size", [1, 100])
def test_a_checkpoint_goes_only_with_the_run_that_owns_it(sql: Any, batch_size: int) -> None:
    _store(sql)
    backend = sql.retention(batch_size=batch_size)
    dry = backend.delete_old_runs(CUTOFF, dry_run=True)
    report = backend.delete_old_runs(CUTOFF)
    assert checkpoint_keys(sql) == set(OWNERS) - _going()
    assert (report.runs, report.counts["checkpoints"]) == (3, len(_going()))
    assert (dry.runs, dry.counts["checkpoints"]) == (report.runs, report.counts["checkpoints"])


def test_a_linguistic_collation_follows_the_same_rule(postgres_harness: Any) -> None:
    """The LIKE path (used where a byte range would be wrong) decides ownership the same way."""
    h = postgres_harness
    with h.raw().begin() as conn:
        conn.exec_driver_sql('ALTER TABLE checkpoints ALTER COLUMN step_run_id TYPE text COLLATE "en-x-icu"')
    _store(h)
    backend = h.retention()
    assert backend.dialect.codepoint_collation() is False
    report = backend.delete_old_runs(CUTOFF)
    assert checkpoint_keys(h) == set(OWNERS) - _going()
    assert report.counts["checkpoints"] == len(_going())


#: Checkpoints for the orphan sweep: key -> orphan? (runs a:b and p exist, nothing else does)
SWEEP = {"a:b:s": False, "a:b:c:s": False, "p:q:r": False, "gone:s": True, "gone:p:s": True, "a:s": True,
         "stream_step_without_run": False}


@pytest.mark.parametrize("dry_run", [True, False])
def test_the_orphan_sweep_asks_every_prefix(sql: Any, dry_run: bool) -> None:
    insert_rows(sql, "workflow_runs", [run_row(sql, "a:b", "running", OLD), run_row(sql, "p", "running", OLD)])
    insert_rows(sql, "checkpoints", checkpoint_rows(sql, list(SWEEP)))
    report = sql.retention(batch_size=3).sweep_orphans(grace=timedelta(0), dry_run=dry_run)
    orphans = {k for k, orphan in SWEEP.items() if orphan}
    assert report.counts["checkpoints"] == len(orphans)
    assert checkpoint_keys(sql) == set(SWEEP) - (set() if dry_run else orphans)


def test_a_run_created_during_the_orphan_sweep_keeps_its_checkpoints(sql: Any) -> None:
    """The owner is looked up again inside the transaction that deletes."""
    insert_rows(sql, "checkpoints", checkpoint_rows(sql, ["sched_new:run_1:step_1", "gone:step_1"]))
    backend = sql.retention()

    def engine_creates_the_run(info: Any) -> None:
        with sql.raw().begin() as conn:
            conn.execute(insert(backend.table("workflow_runs")), run_row(sql, "sched_new:run_1", "running", NOW))

    report = backend.sweep_orphans(grace=timedelta(0), on_batch=engine_creates_the_run)
    assert checkpoint_keys(sql) == {"sched_new:run_1:step_1"}
    assert report.counts["checkpoints"] == 1


def test_mysql_compares_ids_as_the_engine_does(mysql_harness: Any) -> None:
    """utf8mb4_unicode_ci: the engine's own lookups find RUN_A:step for run_a, so it is run_a's."""
    h = mysql_harness
    insert_rows(h, "workflow_runs", [run_row(h, "run_a", "completed", OLD), run_row(h, "run_b", "running", OLD)])
    insert_rows(h, "checkpoints", checkpoint_rows(h, ["RUN_A:step", "RUN_A:X:y", "RUN_B:step"]))
    assert h.retention().sweep_orphans(grace=timedelta(0)).total == 0
    report = h.retention().delete_old_runs(CUTOFF)
    assert report.counts["checkpoints"] == 2 and checkpoint_keys(h) == {"RUN_B:step"}
