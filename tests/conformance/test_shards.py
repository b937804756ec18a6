"""The purge contract, sharded: every case purged in 4 shards where the backend can split (1 elsewhere).

The shards of one plan run side by side (threads, one backend object each) and then the final pass
(:func:`workflow_retention.shards.purge_sharded`). The merged report must equal that of one whole-store purge
of the same data, which on a quiet store is what a whole-store dry run counts (the dry-run contract).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conformance.checks import assert_no_orphans, items_of, pyworkflow_views, run_ids, snapshot
from tests.harness.base import Harness
from tests.scenario import CUTOFF, OLD, Scenario, add_run, build
from workflow_retention.base import Capability, Shard
from workflow_retention.exceptions import PurgeStopped
from workflow_retention.shards import ShardedPurge, in_hash_shard, purge_sharded

SHARDS = 4


def shard_count(h: Harness) -> int:
    """4 where the backend declares Capability.SHARDS, else its one whole-store shard."""
    return SHARDS if Capability.SHARDS in h.retention().capabilities else 1


@pytest.fixture
def scenario(backend: Harness) -> Scenario:
    return backend.run(build(backend, backend.pyworkflow()))


def sharded(h: Harness, **kwargs: Any) -> ShardedPurge:
    result = purge_sharded(h.retention, CUTOFF, SHARDS, workers=SHARDS, **kwargs)
    assert not result.failed, result.failure_text()
    assert len(result.shards) == shard_count(h)
    return result


def test_the_plan_is_json_and_has_the_shards_the_capability_promises(backend: Harness) -> None:
    plan = backend.retention().shards(SHARDS)
    assert len(plan) == shard_count(backend)
    assert [s.index for s in plan] == list(range(len(plan))) and {s.count for s in plan} == {len(plan)}
    for shard in plan:
        assert Shard.from_dict(json.loads(json.dumps(shard.to_dict()))) == shard
    assert backend.retention().shards(1) == [Shard.whole()]


def test_sharded_purge_deletes_exactly_what_one_purge_deletes(backend: Harness, scenario: Scenario) -> None:
    one = backend.retention().delete_old_runs(CUTOFF, dry_run=True)
    result = sharded(backend)
    report = result.report
    items = backend.inventory()
    assert run_ids(items) == scenario.kept | scenario.held
    assert dict(report.counts) == dict(one.counts)
    assert (report.runs, report.held, report.changed, report.skipped) == \
        (one.runs, one.held, 0, 0) == (len(scenario.deleted), len(scenario.held), 0, 0)
    for kind, n in scenario.aux_deleted.items():
        assert report.counts[kind] == n, kind
    assert_no_orphans(items)
    assert not items_of(items, scenario.deleted)
    if len(result.shards) > 1:
        assert result.final is not None
        assert sum(p.runs for p in result.parts.values()) + result.final.runs == report.runs


def test_sharded_purge_keeps_the_kept_runs_unchanged(backend: Harness, scenario: Scenario) -> None:
    survivors = scenario.kept | scenario.held
    raw_before = items_of(backend.inventory(), survivors)
    api_before = pyworkflow_views(backend, survivors)
    sharded(backend)
    assert items_of(backend.inventory(), survivors) == raw_before
    assert pyworkflow_views(backend, survivors) == api_before


def test_sharded_rerun_is_a_no_op(backend: Harness, scenario: Scenario) -> None:
    sharded(backend)
    after = snapshot(backend.inventory())
    again = sharded(backend).report
    assert again.runs == 0 and sum(again.counts.values()) == 0
    assert again.held == len(scenario.held)
    assert snapshot(backend.inventory()) == after


def test_sharded_dry_run_changes_nothing_and_counts_like_the_sharded_purge(
        backend: Harness, scenario: Scenario) -> None:
    before = snapshot(backend.inventory())
    plan = purge_sharded(backend.retention, CUTOFF, SHARDS, workers=SHARDS, dry_run=True)
    assert plan.shards == [Shard.whole()]  # a dry run is one whole-store dry run: the same counts
    dry = plan.report
    assert snapshot(backend.inventory()) == before
    real = sharded(backend).report
    assert dict(dry.counts) == dict(real.counts) and (dry.runs, dry.held) == (real.runs, real.held)


def test_a_run_changed_by_the_engine_during_a_sharded_purge_keeps_all_its_data(
        backend: Harness, scenario: Scenario) -> None:
    import threading

    from pyworkflow.storage.schemas import RunStatus

    pw = backend.pyworkflow()
    touched: dict[str, Any] = {}
    guard = threading.Lock()

    def engine_updates_a_run(info: Any) -> None:
        with guard:
            if touched or not info.run_ids:
                return
            victim = "run_tree_grandchild" if "run_tree_grandchild" in info.run_ids else info.run_ids[0]
            backend.run(pw.update_run_status(victim, RunStatus.FAILED))  # updated_at becomes now
            touched["id"] = victim
            touched["items"] = items_of(backend.inventory(), {victim})

    report = sharded(backend, on_batch=engine_updates_a_run).report
    victim = touched["id"]
    ancestors = scenario.ancestors(victim)
    items = backend.inventory()
    assert items_of(items, {victim}) == touched["items"], "the changed run lost data"
    assert run_ids(items) == scenario.kept | scenario.held | {victim} | (ancestors & scenario.deleted)
    assert report.changed == 1
    assert_no_orphans(items)


def _ids_across_shards(h: Harness, prefix: str, count: int) -> list[str]:
    """``count`` run ids, each in a different shard of the backend's plan where it can split."""
    plan = h.retention().shards(SHARDS)
    if len(plan) == 1 or plan[0].spec.get("hash") is None:
        return [f"{prefix}_{i}" for i in range(count)]
    found: list[str] = []
    taken: set[int] = set()
    n = 0
    while len(found) < count:
        run_id = f"{prefix}_{n}"
        n += 1
        shard = next(s.index for s in plan if in_hash_shard(s, run_id))
        if shard not in taken:
            taken.add(shard)
            found.append(run_id)
    return found


def test_families_spread_over_shards_go_in_one_purge_and_holds_are_exact(backend: Harness) -> None:
    pw = backend.pyworkflow()
    top, mid, leaf = _ids_across_shards(backend, "run_chain", 3)
    held, live = _ids_across_shards(backend, "run_xheld", 2)
    backend.run(add_run(pw, top, "completed", OLD))
    backend.run(add_run(pw, mid, "completed", OLD, parent=top, depth=1))
    backend.run(add_run(pw, leaf, "failed", OLD, parent=mid, depth=2))
    backend.run(add_run(pw, held, "completed", OLD))
    backend.run(add_run(pw, live, "running", OLD, parent=held, depth=1))
    report = sharded(backend).report
    items = backend.inventory()
    assert run_ids(items) == {held, live}
    assert (report.runs, report.held) == (3, 1)
    assert_no_orphans(items)


@pytest.mark.requires("shards")
def test_a_stopped_shard_resumes_after_its_cursor_without_redoing_a_batch(capable_backend: Harness) -> None:
    backend = capable_backend
    scenario = backend.run(build(backend, backend.pyworkflow()))
    plan = backend.retention().shards(2)
    first_batches: list[tuple[str, ...]] = []
    cursors: list[str] = []

    def stop_after_two(info: Any) -> None:
        if info.index > 2:
            raise PurgeStopped("injected: lease lost")
        first_batches.append(info.run_ids)

    retention = backend.retention(batch_size=1)
    # The shard with the most batches (which runs a shard holds depends on the store: a Cassandra node's
    # random token places the cut); the scenario has enough roots for one of two shards to hold three.
    batches = [retention.delete_old_runs(CUTOFF, shard=shard, dry_run=True).batches for shard in plan]
    busiest = plan[batches.index(max(batches))]
    assert max(batches) >= 3, batches
    stopped = retention.delete_old_runs(CUTOFF, shard=busiest, on_batch=stop_after_two,
                                        on_cursor=lambda cursor, report: cursors.append(cursor))
    assert stopped.stopped and len(first_batches) == 2 and cursors
    resumed_batches: list[tuple[str, ...]] = []
    rest = retention.delete_old_runs(CUTOFF, shard=busiest, resume_after=cursors[-1],
                                     on_batch=lambda info: resumed_batches.append(info.run_ids))
    done = {r for b in first_batches for r in b}
    assert not done & {r for b in resumed_batches for r in b}, "a finished batch was redone"
    for shard in plan:
        if shard is not busiest:
            retention.delete_old_runs(CUTOFF, shard=shard)
    final = retention.delete_old_runs(CUTOFF)
    items = backend.inventory()
    assert run_ids(items) == scenario.kept | scenario.held
    assert final.held == len(scenario.held)
    assert stopped.runs + rest.runs <= len(scenario.deleted)
    assert_no_orphans(items)
