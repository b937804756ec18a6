"""Timestamps the driver cannot turn into datetimes (a TIMESTAMP outside Python's range) poison nothing.

cassandra-driver 3.x raises while decoding a page holding such a value (``date value out of range``) and
drops the connection, so a single raw write could stop every purge, sweep and audit. Only raw CQL can
write one; this test does, and never reads those columns through the driver's datetime decoding itself.
"""

from __future__ import annotations

from datetime import timedelta

from tests.harness.cassandra import CassandraHarness
from tests.scenario import CUTOFF, OLD, add_run
from workflow_retention.report import Kind

#: Milliseconds since the epoch beyond datetime.max (year 10000) and before datetime.min (year 1).
AFTER_MAX = 253_402_300_800_000 + 1
BEFORE_MIN = -62_135_596_800_000 - 1


def _ids(h: CassandraHarness, table: str) -> list[str]:
    return sorted(row.run_id for row in h.execute(f"SELECT run_id FROM {{ks}}.{table}"))


def _poison(h: CassandraHarness) -> None:
    run = ("INSERT INTO {ks}.workflow_runs (run_id, workflow_name, status, created_at, updated_at) "
           "VALUES (%s, 'wf', 'completed', %s, %s)")
    h.execute(run, ("run_poison_updated", BEFORE_MIN, AFTER_MAX))
    h.execute(run, ("run_poison_created", AFTER_MAX, OLD))
    h.execute("INSERT INTO {ks}.runs_by_status (status, date_bucket, created_at, run_id, workflow_name) "
              "VALUES ('completed', '10000-01-01', %s, 'run_poison_created', 'wf')", (AFTER_MAX,))
    h.execute("INSERT INTO {ks}.events (run_id, event_time, event_id, type, timestamp, data) "
              "VALUES ('run_poison_updated', now(), 'evt_p', 'workflow.started', %s, '{}')", (AFTER_MAX,))
    # an orphan carrying a poisoned timestamp, for the sweep
    h.execute("INSERT INTO {ks}.events (run_id, event_time, event_id, type, timestamp, data) "
              "VALUES ('run_lost', now(), 'evt_l', 'workflow.started', %s, '{}') USING TIMESTAMP %s",
              (BEFORE_MIN, int((OLD.timestamp()) * 1_000_000)))


def test_runs_with_unreadable_timestamps_are_skipped_and_reported_by_purge_sweep_and_audit(
        cassandra_harness: CassandraHarness) -> None:
    h = cassandra_harness
    h.run(add_run(h.pyworkflow(), "run_expired", "completed", OLD))
    _poison(h)
    dry = h.retention().delete_old_runs(CUTOFF, dry_run=True)
    report = h.retention().delete_old_runs(CUTOFF)
    for r in (dry, report):
        assert (r.runs, r.skipped) == (1, 2), r.warnings
        assert any("run_poison_updated" in w for w in r.warnings)
        assert any("run_poison_created" in w for w in r.warnings)
    assert _ids(h, "workflow_runs") == ["run_poison_created", "run_poison_updated"]
    assert _ids(h, "runs_by_status") == ["run_poison_created"]

    orphans = h.retention().sweep_orphans(grace=timedelta(0))
    assert dict(orphans.counts) == {Kind.EVENTS: 1}
    assert _ids(h, "events") == ["run_poison_updated"]

    audit = h.retention().audit(older_than=CUTOFF)
    assert audit.census.runs_by_status["completed"] == 2
    assert audit.purge is not None and (audit.purge.runs, audit.purge.skipped) == (0, 2)
    assert audit.orphans.total == 0
    assert _ids(h, "workflow_runs") == ["run_poison_created", "run_poison_updated"]
