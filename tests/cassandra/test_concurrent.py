"""A concurrent engine beside a purge of 600+ runs on the real server, with every window measured.

pyworkflow-engine's CassandraStorageBackend (through the harness shim) runs in
its own thread and event loop (tests/engine.py): it revives expired runs with
``update_run_status(RUNNING)``, rewrites their context, records events and
creates hooks, preferring the batch being purged. The purge's commits and
cascades and the engine's revivals are timed, so each revival can be placed
before, across or after its run's commit.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from typing import Any

import pytest

from tests.conformance.checks import assert_no_orphans, items_of, run_ids
from tests.engine import ConcurrentEngine
from tests.harness.base import Item
from tests.harness.cassandra import CassandraHarness
from tests.scenario import CUTOFF, NOW
from workflow_retention.backends.cassandra import cascade as cascade_module
from workflow_retention.backends.cassandra import client as client_module
from workflow_retention.backends.cassandra import purge as purge_module
from workflow_retention.backends.cassandra import versioned as versioned_module
from workflow_retention.planning import TERMINAL_STATUSES
from workflow_retention.seed import generate
from workflow_retention.timeutil import parse_timestamp

pytestmark = pytest.mark.timeout(900)

RUNS = 1000


class TimedEngine(ConcurrentEngine):
    """The shared concurrent engine, recording when each revival read its run and when its write returned."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.revivals: dict[str, tuple[float, float]] = {}

    async def _revive(self, pw: Any, run_id: str, *, in_flight: bool) -> None:
        from pyworkflow.storage.schemas import RunStatus

        original = pw.update_run_status

        async def timed(rid: str, status: RunStatus, *args: Any, **kwargs: Any) -> None:
            read = time.monotonic()  # update_run_status reads the run, then writes its batch
            await original(rid, status, *args, **kwargs)
            self.revivals[rid] = (read, time.monotonic())

        pw.update_run_status = timed
        try:
            await super()._revive(pw, run_id, in_flight=in_flight)
        finally:
            pw.update_run_status = original


def _by_run(items: list[Item]) -> dict[str, dict[tuple[str, str], str]]:
    out: dict[str, dict[tuple[str, str], str]] = defaultdict(dict)
    for i in items:
        if i.run_id is not None:
            out[i.run_id][(i.kind, i.key)] = i.digest
    return out


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"


def test_a_revived_run_keeps_every_row_its_ancestors_stay_and_a_rerun_leaves_no_orphans(
        cassandra_harness: CassandraHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    h = cassandra_harness
    seeded = {s.run_id: s for s in generate(RUNS, now=NOW, seed=11, max_age_days=120, child_share=0.3)}
    h.retention(batch_size=500).seed(list(seeded.values()))
    expired = sorted(r for r, s in seeded.items() if s.run["status"] in TERMINAL_STATUSES
                     and parse_timestamp(s.run["updated_at"]) < CUTOFF)
    assert len(expired) >= 600
    before = h.inventory()
    before_items = _by_run(before)

    checks: dict[str, float] = {}  # run -> its record's check read started
    commits: dict[str, tuple[float, float]] = {}  # run -> (its delete sent, answered)
    rechecks: dict[str, float] = {}  # run -> the re-read after its delete finished
    cascades: dict[str, float] = {}  # run -> its cascade finished
    read, batches, put_back = (versioned_module.Versioned.read, client_module.Cql.unlogged_batches,
                               purge_module.Purge._put_back)
    cascade_run = cascade_module.Cascade.run

    def timed_read(self: Any, keys: Any) -> Any:
        ids, started = list(keys), time.monotonic()
        for run_id in ids:
            checks.setdefault(run_id, started)  # the first read of a record is its check
        return read(self, ids)

    def timed_batches(self: Any, groups: Any) -> None:
        sent = time.monotonic()
        batches(self, groups)
        for group in groups:
            for name, params in group:
                if name == "delete_run":
                    commits[params[1]] = (sent, time.monotonic())

    def timed_put_back(self: Any, deleted: Any, outcome: str) -> set[str]:
        ids = list(deleted)
        found = put_back(self, deleted, outcome)
        for run_id in ids:
            rechecks.setdefault(run_id, time.monotonic())
        return found

    def timed_cascade(self: Any, runs: Any) -> None:
        cascade_run(self, runs)
        for r in runs:
            cascades.setdefault(r.run_id, time.monotonic())

    monkeypatch.setattr(versioned_module.Versioned, "read", timed_read)
    monkeypatch.setattr(client_module.Cql, "unlogged_batches", timed_batches)
    monkeypatch.setattr(purge_module.Purge, "_put_back", timed_put_back)
    monkeypatch.setattr(cascade_module.Cascade, "run", timed_cascade)
    engine = TimedEngine(h, expired, seed=5)
    with engine:
        report = h.retention(batch_size=100).delete_old_runs(CUTOFF, on_batch=engine.on_batch)
        time.sleep(0.2)
    monkeypatch.undo()
    assert not engine.errors, engine.errors[:3]
    assert len(engine.revived) >= 10, len(engine.revived)

    after = h.inventory()
    after_runs, after_items = run_ids(after), _by_run(after)
    whole = _whole(h, set(engine.revivals))

    def lost(run_id: str) -> set[tuple[str, str]]:
        return {k for k in set(before_items[run_id]) - set(after_items[run_id]) if k[0] != "runs_by_status"}

    # 1. A revival whose write returned before its run's delete was sent keeps the run whole, with every row
    # (seen by the check: kept; written after the check: the record is put back beneath the engine's write).
    before_commit = {r for r, (_, wrote) in engine.revivals.items() if r not in commits or wrote < commits[r][0]}
    in_flight = sum(1 for w in engine.revived.values() if w.in_flight)
    assert in_flight >= 5, f"only {in_flight} revivals hit a batch being purged: the engine was too slow"
    for run_id in before_commit:
        assert run_id in whole, f"{run_id} was revived before its commit but its record is not whole"
        assert not lost(run_id), f"{run_id} lost {sorted(lost(run_id))[:5]}"
    # ... and so does every run the engine read back whole after reviving it, wherever that fell.
    for run_id in engine.revived:
        assert run_id in whole and not lost(run_id), f"{run_id} (revived) lost {sorted(lost(run_id))[:5]}"

    # 2. The ancestors of every revived run (and of the children it started) are kept.
    parents = {r: s.run["parent_run_id"] for r, s in seeded.items() if s.run["parent_run_id"]}
    for run_id in engine.kept_alive:
        node = parents.get(run_id)
        while node is not None:
            assert node in after_runs, f"{node}, an ancestor of the revived {run_id}, was deleted"
            node = parents.get(node)

    # 3. Counts are what happened.
    assert report.runs == len(run_ids(before) - after_runs)

    # 4. A rerun, the engine stopped, leaves zero orphans and the kept runs whole.
    h.retention(batch_size=100).delete_old_runs(CUTOFF)
    final = h.inventory()
    assert_no_orphans(final)
    assert engine.kept_alive <= run_ids(final)
    for run_id in engine.revived:
        assert items_of(final, {run_id}) == items_of(after, {run_id})

    # The windows (printed with -s; docs/backends/cassandra.md quotes them).
    committed = {r for r in engine.revivals if r in commits}
    raced = {r for r in committed
             if engine.revivals[r][0] < rechecks.get(r, 0) and engine.revivals[r][1] > checks[r]}
    partial = set(engine.revivals) & after_runs - whole
    found_deleted = set(engine.revivals) - after_runs
    print(f"\ncassandra concurrent: {len(expired)} expired, {report.runs} deleted, changed {report.changed}, held "
          f"{report.held}; revivals {len(engine.revivals)} ({in_flight} of the batch being purged): whole at the "
          f"end {len(whole & set(engine.revivals))} "
          f"({len(before_commit & committed)} raced their commit and won), overlapping check..re-check "
          f"{len(raced)}, partial records {len(partial)}, found deleted {len(found_deleted)}"
          f"\n  engine update_run_status read->write: {_ms([w - r for r, w in engine.revivals.values()])}"
          f"\n  purge check read -> delete answered: {_ms([commits[r][1] - checks[r] for r in commits])}"
          f"\n  purge delete sent -> re-check done: "
          f"{_ms([rechecks[r] - commits[r][0] for r in commits if r in rechecks])}"
          f"\n  purge delete sent -> cascade done: "
          f"{_ms([cascades[r] - commits[r][0] for r in cascades if r in commits])}")
    # What remains: a revival whose engine write was still in flight when the re-check ran (it read the run
    # before the delete and landed after the re-check) leaves a partial record; nothing else does.
    for run_id in partial:
        began, wrote = engine.revivals[run_id]
        assert began < commits[run_id][1] and wrote > rechecks[run_id], f"{run_id}: partial, yet not in flight"


def _whole(h: CassandraHarness, ids: set[str]) -> set[str]:
    """The runs among ``ids`` whose record exists with its workflow name (not a partial record)."""
    from cassandra.query import ValueSequence

    rows = h.execute("SELECT run_id, workflow_name FROM {ks}.workflow_runs WHERE run_id IN %s",
                     (ValueSequence(sorted(ids)),)) if ids else []
    return {row.run_id for row in rows if row.workflow_name}
