"""Token-range shards (issue 18): the plan from the token map, the paging of a shard, resuming from its cursor."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conformance.checks import assert_no_orphans, run_ids
from tests.harness.cassandra import CassandraHarness
from tests.scenario import CUTOFF, OLD, add_run
from workflow_retention.backends.cassandra.ring import TOKEN_SPACES, resume_token, shard_range, token_shards
from workflow_retention.base import Capability, Shard
from workflow_retention.exceptions import ConfigurationError, PurgeStopped

LOW, HIGH = TOKEN_SPACES["Murmur3Partitioner"]


def _index_of(retention: Any, plan: list[Shard]) -> Any:
    """The index of the shard of ``plan`` whose token range holds a key (a run id or a checkpoint key)."""
    space = retention.cql.token_space

    def index(key: str) -> int:
        token = retention.cql.token_of(key)
        return next(s.index for s in plan if shard_range(s, *space)[0] < token <= shard_range(s, *space)[1])
    return index


def _old_runs(h: CassandraHarness, prefix: str, count: int) -> list[str]:
    """``count`` expired runs without parents, written by pyworkflow's own storage."""
    pw = h.pyworkflow()
    ids = sorted(f"{prefix}_{n:03d}" for n in range(count))
    for run_id in ids:
        h.run(add_run(pw, run_id, "completed", OLD))
    return ids


def _covers(plan: list[Shard], low: int, high: int) -> None:
    assert [s.index for s in plan] == list(range(len(plan))) and {s.count for s in plan} == {len(plan)}
    ranges = [shard_range(s, low, high) for s in plan]
    assert ranges[0][0] == low and ranges[-1][1] == high
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])), "not contiguous"
    assert all(first < last for first, last in ranges)


def test_a_one_token_ring_is_cut_in_equal_parts() -> None:
    plan = token_shards([1323709731561197568], LOW, HIGH, 4)
    assert len(plan) == 4
    _covers(plan, LOW, HIGH)


def test_a_vnode_ring_is_cut_at_its_own_tokens_and_the_wrap_around_range_at_the_minimum() -> None:
    ring = [LOW + (HIGH - LOW) * k // 257 + 12345 for k in range(1, 257)]
    plan = token_shards(list(reversed(ring)), LOW, HIGH, 8)
    assert len(plan) == 8
    _covers(plan, LOW, HIGH)
    cuts = [shard_range(s, LOW, HIGH)[1] for s in plan[:-1]]
    assert set(cuts) <= set(ring)  # ring ranges are never split; the last shard ends at the maximum
    sizes = [b - a for a, b in (shard_range(s, LOW, HIGH) for s in plan)]
    assert max(sizes) < 2 * min(sizes)


def test_bad_specs_and_cursors_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError):
        shard_range(Shard(0, 2, {"hash": "sha256-32", "from": 0, "to": 5}), LOW, HIGH)
    with pytest.raises(ConfigurationError):
        shard_range(Shard(0, 2, {"token": "range", "from": 5, "to": 5}), LOW, HIGH)
    assert shard_range(Shard.whole(), LOW, HIGH) == (LOW, HIGH)
    assert resume_token(None, -5, 9) == -5 and resume_token("7", -5, 9) == 7
    for bad in ("x", "10", "-6"):
        with pytest.raises(ConfigurationError):
            resume_token(bad, -5, 9)


def _seed(h: CassandraHarness, count: int) -> set[str]:
    pw = h.pyworkflow()
    ids = {f"run_shard_{n:03d}" for n in range(count)}
    for run_id in sorted(ids):
        h.run(add_run(pw, run_id, "completed", OLD, extras=False))
    return ids


def test_disjoint_shards_cover_every_run_once_in_token_order(cassandra_harness: CassandraHarness) -> None:
    h = cassandra_harness
    ids = _seed(h, 40)
    retention: Any = h.retention(batch_size=3)
    assert Capability.SHARDS in retention.capabilities
    plan = retention.shards(4)
    assert len(plan) == 4
    seen: dict[str, int] = {}
    for shard in plan:
        first, last = shard_range(shard, *retention.cql.token_space)
        batches: list[tuple[str, ...]] = []
        cursors: list[int] = []
        report = retention.delete_old_runs(CUTOFF, shard=shard, on_batch=lambda i, b=batches: b.append(i.run_ids),
                                           on_cursor=lambda c, r, cs=cursors: cs.append(int(c)))
        for run_id in (r for b in batches for r in b):
            assert run_id not in seen, f"{run_id} purged by shards {seen[run_id]} and {shard.index}"
            seen[run_id] = shard.index
            assert first < retention.cql.token_of(run_id) <= last
        assert report.runs == sum(len(b) for b in batches) and len(cursors) == len(batches)
        assert cursors == sorted(cursors) and all(first < c <= last for c in cursors)
    assert set(seen) == ids
    assert len(set(seen.values())) > 1, "40 runs all in one of 4 equal token ranges"
    assert not run_ids(h.inventory())


def test_a_shard_resumed_from_its_cursor_redoes_no_batch(cassandra_harness: CassandraHarness) -> None:
    h = cassandra_harness
    ids = _seed(h, 30)
    retention: Any = h.retention(batch_size=2)

    def members(shard: Any) -> set[str]:
        first, last = shard_range(shard, *retention.cql.token_space)
        return {r for r in ids if first < retention.cql.token_of(r) <= last}

    # The busiest of two shards (the cut is the node's own token, random per node): at least 15 of 30 runs.
    shard = max(retention.shards(2), key=lambda s: len(members(s)))
    mine = members(shard)
    assert len(mine) >= 6
    done: list[tuple[str, ...]] = []
    cursors: list[str] = []

    def stop_after_two(info: Any) -> None:
        if info.index > 2:
            raise PurgeStopped("injected: lease lost")
        done.append(info.run_ids)

    stopped = retention.delete_old_runs(CUTOFF, shard=shard, on_batch=stop_after_two,
                                        on_cursor=lambda c, r: cursors.append(c))
    assert stopped.stopped and stopped.runs == 4 and len(cursors) == 2
    redone: list[tuple[str, ...]] = []
    rest = retention.delete_old_runs(CUTOFF, shard=shard, resume_after=cursors[-1],
                                     on_batch=lambda i: redone.append(i.run_ids))
    first_ids = {r for b in done for r in b}
    later_ids = {r for b in redone for r in b}
    assert not first_ids & later_ids, "a finished batch was redone"
    assert first_ids | later_ids == mine and stopped.runs + rest.runs == len(mine)
    assert all(retention.cql.token_of(r) > int(cursors[-1]) for r in later_ids)
    retention.delete_old_runs(CUTOFF)  # the final pass: the other shard's runs
    items = h.inventory()
    assert not run_ids(items)
    assert_no_orphans(items)


def test_a_run_whose_live_parent_is_in_another_shard_is_left_to_the_final_pass(
        cassandra_harness: CassandraHarness) -> None:
    h = cassandra_harness
    retention: Any = h.retention()
    plan = retention.shards(2)
    shard_of = _index_of(retention, plan)

    names = [f"run_x_{n}" for n in range(20_000)]  # enough for both shards whatever the node's random token
    parent = next(n for n in names if shard_of(n) == 1)
    near = next(n for n in names if shard_of(n) == 0 and n != parent)
    far_parent = next(n for n in names if shard_of(n) == 0 and n != near)
    far = next(n for n in names if shard_of(n) == 1 and n != parent)
    pw = h.pyworkflow()
    h.run(add_run(pw, parent, "running", OLD))                        # live parent in shard 2/2
    h.run(add_run(pw, near, "completed", OLD, parent=parent, depth=1))  # its expired child in shard 1/2
    h.run(add_run(pw, far_parent, "running", OLD))                    # live parent in shard 1/2
    h.run(add_run(pw, far, "completed", OLD, parent=far_parent, depth=1))  # its expired child in shard 2/2
    parts = [retention.delete_old_runs(CUTOFF, shard=s) for s in plan]
    assert [p.runs for p in parts] == [0, 0], "a shard planned a run whose parent lies in another shard"
    assert run_ids(h.inventory()) == {parent, near, far_parent, far}
    final = retention.delete_old_runs(CUTOFF)
    assert final.runs == 2 and final.held == 0
    items = h.inventory()
    assert run_ids(items) == {parent, far_parent}
    assert_no_orphans(items)


def test_a_family_inside_one_shard_is_that_shards(cassandra_harness: CassandraHarness) -> None:
    h = cassandra_harness
    retention: Any = h.retention()
    plan = retention.shards(2)
    space = retention.cql.token_space
    # The larger of the two shards (the cut is the node's random token): half the token space or more.
    shard = max(plan, key=lambda s: (lambda r: r[1] - r[0])(shard_range(s, *space)))
    first, last = shard_range(shard, *space)
    names = [n for n in (f"run_in_{k}" for k in range(200)) if first < retention.cql.token_of(n) <= last]
    live, child, top, kid = names[:4]
    pw = h.pyworkflow()
    h.run(add_run(pw, live, "running", OLD))
    h.run(add_run(pw, child, "failed", OLD, parent=live, depth=1))
    h.run(add_run(pw, top, "completed", OLD))
    h.run(add_run(pw, kid, "completed", OLD, parent=top, depth=1))
    part = retention.delete_old_runs(CUTOFF, shard=shard)
    assert (part.runs, part.held) == (3, 0)
    assert run_ids(h.inventory()) == {live}
    # the shard deletes the checkpoints in its own token range of the table; the other shard never ran, so
    # the final pass scans the whole table for the rest
    final = retention.delete_old_runs(CUTOFF)
    assert final.runs == 0 and part.counts["checkpoints"] + final.counts["checkpoints"] == 6
    items = h.inventory()
    assert run_ids(items) == {live}
    assert_no_orphans(items)


def test_each_shard_finishes_its_own_runs_and_the_final_pass_only_resolves_what_is_left(
        cassandra_harness: CassandraHarness) -> None:
    """Shards run one after the other (the worst order for the checkpoints: each shard's segment of the
    checkpoints table is scanned before the later shards commit). Each shard deletes the checkpoints of its token
    range of the table whose runs are committed when it scans; the final pass does not re-cascade the shards' runs:
    its one scan of the checkpoints table, after every commit, deletes what the segments could not see, and it
    drops the markers."""
    h = cassandra_harness
    ids = _old_runs(h, "run_seg", 24)
    retention: Any = h.retention(batch_size=4)
    plan = retention.shards(4)
    segment = _index_of(retention, plan)

    parts = [retention.delete_old_runs(CUTOFF, shard=s) for s in plan]
    committed_by = {r: segment(r) for r in ids}
    assert sum(p.runs for p in parts) == len(ids)
    items = h.inventory()
    assert not run_ids(items)
    left = [i for i in items if i.kind == "checkpoints"]
    assert {i.kind for i in items} <= {"checkpoints"}, "a shard left more than checkpoints of its runs"
    # a checkpoint is left only where its segment was scanned before its run's shard committed it
    assert all(segment(i.key) < committed_by[i.run_id] for i in left), left
    assert sum(p.counts["checkpoints"] for p in parts) == 2 * len(ids) - len(left) > 0
    final_backend: Any = h.retention(batch_size=4)
    final = final_backend.delete_old_runs(CUTOFF)
    statements = final_backend.cql.statements
    assert final.runs == 0 and final.counts["checkpoints"] == len(left)
    assert not statements["events_in"], "the final pass re-cascaded the shards' runs"
    # one scan of the whole checkpoints table after every commit (a key written after its segment was scanned)
    assert statements["scan_checkpoint_keys"], "the final pass did not scan the checkpoints table"
    after = h.inventory()
    assert not after
    assert not list(h.execute("SELECT * FROM {ks}.retention_purge_markers")), "markers left"


def test_a_shard_that_dies_in_its_checkpoint_segment_is_finished_by_the_final_pass(
        cassandra_harness: CassandraHarness) -> None:
    """The last shard dies at its first checkpoint batch (its runs committed and cascaded, no segment record): the
    final pass cascades its markers again and scans the whole checkpoints table, as before the split."""
    h = cassandra_harness
    ids = _old_runs(h, "run_die", 16)
    retention: Any = h.retention(batch_size=4)
    plan = retention.shards(4)

    def die_at_checkpoints(info: Any) -> None:
        if any(r.startswith("CHECKPOINT#") for r in info.run_ids):
            raise PurgeStopped("injected: died in its checkpoint segment")

    parts = [retention.delete_old_runs(CUTOFF, shard=s) for s in plan[:-1]]
    dead = retention.delete_old_runs(CUTOFF, shard=plan[-1], on_batch=die_at_checkpoints)
    assert dead.stopped and sum(p.runs for p in [*parts, dead]) == len(ids)
    final_backend: Any = h.retention(batch_size=4)
    final = final_backend.delete_old_runs(CUTOFF)
    assert final_backend.cql.statements["scan_checkpoint_keys"], "no segment record: the final pass must scan"
    assert sum(p.counts["checkpoints"] for p in [*parts, dead, final]) == 2 * len(ids)
    items = h.inventory()
    assert not items
    assert not list(h.execute("SELECT * FROM {ks}.retention_purge_markers")), "markers or segment rows left"


def test_a_checkpoint_the_engine_writes_after_a_segment_scan_goes_with_its_run(
        cassandra_harness: CassandraHarness) -> None:
    """The engine saves a checkpoint of an expired run (``save_checkpoint`` leaves the run record as it was) after
    the segment holding the new key was scanned, before another shard commits the run: the key is in no shard's
    scan, and its run is deleted. The final pass's scan of the whole table, after every commit, must still delete
    it (no orphan)."""
    h = cassandra_harness
    pw = h.pyworkflow()
    retention: Any = h.retention(batch_size=4)
    plan = retention.shards(2)  # cut at the node's random token: one shard may hold a small part of the ring
    segment = _index_of(retention, plan)
    # names searched before seeding (enough for either shard whatever the token), then written by the engine
    victim = next(r for r in (f"run_late_{n:05d}" for n in range(20_000)) if segment(r) == 1)
    late = next(k for k in (f"{victim}:late_{n}" for n in range(20_000)) if segment(k) == 0)
    h.run(add_run(pw, victim, "completed", OLD))
    _old_runs(h, "run_late_other", 7)  # and runs of either shard beside it
    retention.delete_old_runs(CUTOFF, shard=plan[0])
    h.run(pw.save_checkpoint(late, {"cursor": 9}))
    retention.delete_old_runs(CUTOFF, shard=plan[1])
    retention.delete_old_runs(CUTOFF)
    items = h.inventory()
    assert not items, items
    assert_no_orphans(items)
