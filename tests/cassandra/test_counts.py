"""Counts are what happened: every deleted row is counted, in the purge and its dry run alike; checkpoints go
with the runs the purge deletes, and only with them."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

from tests.conformance.checks import assert_no_orphans, items_of, run_ids, snapshot
from tests.harness.base import Item
from tests.harness.cassandra import CassandraHarness
from tests.scenario import CUTOFF, NOW, OLD, add_run
from workflow_retention.backends.cassandra import purge as purge_module
from workflow_retention.backends.cassandra.layout import SOURCES
from workflow_retention.report import Kind

KIND_OF_TABLE = {"runs": Kind.RUNS, **{s.table: s.kind for s in SOURCES}}


@pytest.fixture(autouse=True, params=["own_ids_in_memory", "own_ids_from_markers"])
def own_ids(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test twice: the checkpoint pass with the purge's committed runs in memory, and past OWN_IDS
    (then it reads the markers)."""
    if request.param == "own_ids_from_markers":
        monkeypatch.setattr(purge_module, "OWN_IDS", 0)


def kinds(items: list[Item]) -> Counter:
    """Rows per report kind, as the raw store holds them."""
    return Counter(KIND_OF_TABLE[i.kind] for i in items if i.run_id is not None)


def test_every_row_the_purge_deletes_is_counted_in_the_purge_and_its_dry_run(
        cassandra_harness: CassandraHarness) -> None:
    from pyworkflow.storage.schemas import RunStatus

    h, pw = cassandra_harness, cassandra_harness.pyworkflow()
    h.run(add_run(pw, "run_parent", "completed", OLD))
    h.run(add_run(pw, "run_child", "failed", OLD, parent="run_parent", depth=1))
    h.run(add_run(pw, "run_grandchild", "completed", OLD, parent="run_child", depth=2))
    h.run(add_run(pw, "run_moved", "pending", OLD - timedelta(days=1)))
    with h.frozen(OLD):  # three status rows over its life: pending (deleted by the engine), running, completed
        h.run(pw.update_run_status("run_moved", RunStatus.RUNNING))
    h.execute("UPDATE {ks}.workflow_runs SET status = 'completed' WHERE run_id = 'run_moved'")  # try_claim_run
    h.run(add_run(pw, "run_kept", "running", OLD))
    before = h.inventory()
    dry = h.retention().delete_old_runs(CUTOFF, dry_run=True)
    assert snapshot(h.inventory()) == snapshot(before)
    report = h.retention().delete_old_runs(CUTOFF)
    after = h.inventory()
    assert run_ids(after) == {"run_kept"}
    assert_no_orphans(after)
    removed = kinds(before) - kinds(after)
    assert removed[Kind.INDEX_ENTRIES] >= 4 * 3 + 2  # status, workflow rows of 4 runs + parent rows + lookups
    assert dict(report.counts) == dict(removed)
    assert dict(dry.counts) == dict(report.counts)


def test_the_purge_leaves_checkpoints_of_runs_it_did_not_delete_to_the_orphan_sweep(
        cassandra_harness: CassandraHarness) -> None:
    """A checkpoint saved a second ago for a run whose record is not (yet) there is no purge work."""
    h, pw = cassandra_harness, cassandra_harness.pyworkflow()
    h.run(add_run(pw, "run_expired", "completed", OLD))
    h.run(pw.save_checkpoint("run_starting:step_1", {"cursor": 1}))
    dry = h.retention().delete_old_runs(CUTOFF, dry_run=True)
    report = h.retention().delete_old_runs(CUTOFF)
    assert report.counts[Kind.CHECKPOINTS] == dry.counts[Kind.CHECKPOINTS] == 2
    left = {i.key for i in h.inventory() if i.kind == "checkpoints"}
    assert left == {"run_starting:step_1"}
    assert h.retention().sweep_orphans(grace=timedelta(hours=1)).total == 0
    swept = h.retention().sweep_orphans(grace=timedelta(0))
    assert dict(swept.counts) == {Kind.CHECKPOINTS: 1}
    assert not [i for i in h.inventory() if i.kind == "checkpoints"]


def test_a_purged_run_whose_id_extends_a_live_one_takes_its_checkpoints_with_it(
        cassandra_harness: CassandraHarness) -> None:
    """``sched_cron:old_1:step`` belongs to ``sched_cron:old_1`` (the longest run id), not to ``sched_cron``."""
    h, pw = cassandra_harness, cassandra_harness.pyworkflow()
    h.run(add_run(pw, "sched_cron", "running", OLD))
    h.run(add_run(pw, "sched_cron:old_1", "completed", OLD))
    h.run(add_run(pw, "sched_cron:new_1", "completed", NOW - timedelta(days=1)))
    before = h.inventory()
    kept = items_of(before, {"sched_cron", "sched_cron:new_1"})
    dry = h.retention().delete_old_runs(CUTOFF, dry_run=True)
    report = h.retention().delete_old_runs(CUTOFF)
    items = h.inventory()
    assert run_ids(items) == {"sched_cron", "sched_cron:new_1"}
    assert items_of(items, {"sched_cron", "sched_cron:new_1"}) == kept
    assert not [i.key for i in items if i.kind == "checkpoints" and i.key.startswith("sched_cron:old_1:")]
    assert report.counts[Kind.CHECKPOINTS] == dry.counts[Kind.CHECKPOINTS] == 2
    assert_no_orphans(items)
    assert h.retention().sweep_orphans(grace=timedelta(0)).total == 0


def test_a_live_run_whose_id_extends_a_purged_one_keeps_its_checkpoints(cassandra_harness: CassandraHarness) -> None:
    """``run_a:b:step`` belongs to the live ``run_a:b``, not to the purged ``run_a``: it stays."""
    h, pw = cassandra_harness, cassandra_harness.pyworkflow()
    h.run(add_run(pw, "run_a", "completed", OLD))
    h.run(add_run(pw, "run_a:b", "running", OLD))
    kept = items_of(h.inventory(), {"run_a:b"})
    dry = h.retention().delete_old_runs(CUTOFF, dry_run=True)
    report = h.retention().delete_old_runs(CUTOFF)
    items = h.inventory()
    assert run_ids(items) == {"run_a:b"}
    assert items_of(items, {"run_a:b"}) == kept
    assert {i.key for i in items if i.kind == "checkpoints"} == {"run_a:b:step_charge_a:b", "run_a:b:step_charge_a:b_b"}
    assert report.counts[Kind.CHECKPOINTS] == dry.counts[Kind.CHECKPOINTS] == 2
    assert_no_orphans(items)
