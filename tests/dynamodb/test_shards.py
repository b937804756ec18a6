"""Shards of a DynamoDB table: parallel Scan segments of GSI1 (docs/backends/dynamodb.md, "Shards").

The conformance suite (tests/conformance/test_shards.py) purges every case in 4 shards; these tests look at
the paging itself: the segments are disjoint and cover every run once, a shard resumed from its cursor redoes
no batch and misses no run, cursors are checked, a shard leaves its markers to the final pass, each shard
deletes the checkpoints of its segment of the table, and each shard keeps to its share of ``max_wcu_per_second``.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from tests.conformance.checks import assert_no_orphans, items_of, run_ids
from tests.dynamodb.faults import Crash
from tests.dynamodb.helpers import faulty_backend, markers
from tests.dynamodb.test_crashes import cascade_read, nth, writes
from tests.harness.dynamodb import DynamoDBHarness
from tests.scenario import CUTOFF, NOW, OLD, add_run, build
from workflow_retention.base import Shard
from workflow_retention.exceptions import ConfigurationError, PurgeStopped
from workflow_retention.report import Kind

RUNS = 40


def _flat(h: DynamoDBHarness, count: int = RUNS, *, extras: bool = False) -> set[str]:
    """``count`` expired runs without parents (each one its own family), plus a live and a recent run."""
    pw = h.pyworkflow()
    ids = {f"run_flat_{n:03d}" for n in range(count)}
    for run_id in sorted(ids):
        h.run(add_run(pw, run_id, "completed", OLD, hooks=("hook_a",) if extras else (), extras=extras))
    h.run(add_run(pw, "run_flat_live", "running", OLD, hooks=(), extras=False))
    h.run(add_run(pw, "run_flat_recent", "completed", NOW, hooks=(), extras=False))
    return ids


def _batches_of(h: DynamoDBHarness, shard: Shard, **options: Any) -> tuple[list[tuple[str, ...]], list[str], Any]:
    batches: list[tuple[str, ...]] = []
    cursors: list[str] = []
    report = h.retention(batch_size=7).delete_old_runs(
        CUTOFF, shard=shard, on_batch=lambda info: batches.append(info.run_ids),
        on_cursor=lambda cursor, so_far: cursors.append(cursor), **options)
    return batches, cursors, report


@pytest.mark.parametrize("n", [2, 3, 4])
def test_disjoint_segments_cover_every_run_once(dynamodb_harness: DynamoDBHarness, n: int) -> None:
    h = dynamodb_harness
    expired = _flat(h)
    plan = h.retention().shards(n)
    assert [s.spec for s in plan] == [{"segment": i, "total": n, "index": "GSI1"} for i in range(n)]
    seen: Counter[str] = Counter()
    total = 0
    for shard in plan:  # dry runs: each shard's runs, nothing changes
        batches, cursors, report = _batches_of(h, shard, dry_run=True)
        seen.update(r for b in batches for r in b)
        total += report.runs
        assert cursors and json.loads(cursors[-1]) == {"segment": shard.index, "total": n, "after": None}
    assert set(seen) == expired and set(seen.values()) == {1}, "a run in no shard, or in two"
    assert total == RUNS
    assert run_ids(h.inventory()) == expired | {"run_flat_live", "run_flat_recent"}


def test_a_shard_resumed_from_its_cursor_redoes_no_batch_and_misses_no_run(
        dynamodb_harness: DynamoDBHarness) -> None:
    h = dynamodb_harness
    expired = _flat(h)
    shard = h.retention().shards(2)[0]
    done: list[tuple[str, ...]] = []
    cursors: list[str] = []

    def stop_after_two(info: Any) -> None:
        if info.index > 2:
            raise PurgeStopped("injected: lease lost")
        done.append(info.run_ids)

    stopped = h.retention(batch_size=5).delete_old_runs(CUTOFF, shard=shard, on_batch=stop_after_two,
                                                         on_cursor=lambda cursor, so_far: cursors.append(cursor))
    assert stopped.stopped and len(done) == 2 and stopped.runs == sum(map(len, done))
    assert json.loads(cursors[-1])["after"] is not None
    rest, rest_cursors, resumed = _batches_of(h, shard, resume_after=cursors[-1])
    first = {r for b in done for r in b}
    later = {r for b in rest for r in b}
    assert not first & later, "a finished batch was redone"
    whole, _, _ = _batches_of(h, h.retention().shards(2)[1], dry_run=True)
    other = {r for b in whole for r in b}
    assert first | later | other == expired and not (first | later) & other
    assert stopped.runs + resumed.runs == len(first | later)
    assert json.loads(rest_cursors[-1])["after"] is None  # the segment's end: resuming there does nothing
    again, cursors_again, report = _batches_of(h, shard, resume_after=rest_cursors[-1])
    assert again == [] and cursors_again == [] and report.runs == 0


def test_a_cursor_of_another_shard_or_of_nothing_is_refused(dynamodb_harness: DynamoDBHarness) -> None:
    h = dynamodb_harness
    _flat(h, 3)
    plan = h.retention().shards(3)
    _, cursors, _ = _batches_of(h, plan[1], dry_run=True)
    for shard, cursor in [(plan[0], cursors[-1]), (plan[0], "not json"), (plan[0], '{"segment": 0}'),
                          (plan[0], json.dumps({"segment": 0, "total": 3, "after": {"PK": "RUN#x"}}))]:
        with pytest.raises(ConfigurationError, match="not a cursor of DynamoDB shard 1/3"):
            h.retention().delete_old_runs(CUTOFF, shard=shard, resume_after=cursor)
    with pytest.raises(ConfigurationError, match="whole-store"):
        h.retention().delete_old_runs(CUTOFF, resume_after=cursors[-1])
    with pytest.raises(ConfigurationError, match="not a DynamoDB Scan segment"):
        h.retention().delete_old_runs(CUTOFF, shard=Shard(0, 2, {"hash": "sha256-32", "from": 0, "to": 1}))
    assert run_ids(h.inventory()) >= {"run_flat_000", "run_flat_001", "run_flat_002"}


def test_shards_leave_their_markers_to_the_final_pass(dynamodb_harness: DynamoDBHarness) -> None:
    h = dynamodb_harness
    expired = _flat(h, 6, extras=True)
    retention = h.retention(batch_size=4)
    parts = [retention.delete_old_runs(CUTOFF, shard=s) for s in retention.shards(2)]
    items = h.inventory()
    assert not run_ids(items) & expired and sum(p.runs for p in parts) == 6
    assert markers(h) == expired, "a shard's markers are the final pass's"
    final = retention.delete_old_runs(CUTOFF)
    items = h.inventory()
    assert final.runs == 0 and sum(p.counts[Kind.CHECKPOINTS] for p in [*parts, final]) == 12
    assert final.counts[Kind.HOOKS] == final.counts[Kind.EVENTS] == 0, "the shards' cascades were counted again"
    assert markers(h) == set()
    assert_no_orphans(items)


def test_each_shard_keeps_to_its_share_of_the_write_cap(dynamodb_harness: DynamoDBHarness) -> None:
    h = dynamodb_harness
    _flat(h, 4)
    retention = h.retention(max_wcu_per_second=400)
    rates: list[float] = []
    plan = retention.shards(4)

    def note(info: Any) -> None:
        limiter = retention.table.limiter
        assert limiter is not None
        rates.append(limiter.rate)

    for shard in plan:
        retention.delete_old_runs(CUTOFF, shard=shard, on_batch=note)
    assert rates and set(rates) == {100.0}
    assert retention.table.limiter is not None and retention.table.limiter.rate == 400.0, "the cap came back"



def _crash_point(point: str) -> tuple[str, Any]:
    """The crash points of tests/dynamodb/test_crashes.py a shard reaches, each with a fresh matcher (they count)."""
    return {
        "markers-written": lambda: ("batch_write_item", writes("RETENTION#", "PutRequest")),
        "first-commit": lambda: ("transact_write_items", nth(1)),
        "after-some-commits": lambda: ("transact_write_items", nth(3)),
        "tokens-and-flags": lambda: ("batch_write_item", writes("TOKEN#")),
        "hooks-and-partitions": lambda: ("batch_write_item", writes("RUN#")),
        "cascade-lookups": lambda: ("execute_statement", cascade_read(2)),
    }[point]()


SHARD_CRASH_POINTS = ("markers-written", "first-commit", "after-some-commits", "tokens-and-flags",
                      "hooks-and-partitions", "cascade-lookups")


@pytest.mark.parametrize("point", SHARD_CRASH_POINTS)
def test_a_shard_that_dies_anywhere_is_finished_by_its_retry_and_the_final_pass(
        dynamodb_harness: DynamoDBHarness, point: str) -> None:
    """A shard dies at a crash point of tests/dynamodb/test_crashes.py; its retry resumes from its last cursor,
    the other shard runs, the final pass finishes what the dead attempt committed: nothing kept is touched."""
    h = dynamodb_harness
    scenario = h.run(build(h, h.pyworkflow()))
    survivors = scenario.kept | scenario.held
    before = items_of(h.inventory(), survivors)
    plan = h.retention().shards(2)
    dying, client = faulty_backend(h, batch_size=3)
    client.crash_when(*_crash_point(point))
    cursors: list[str] = []
    dead: Shard | None = None
    try:
        for shard in plan:
            dead = shard
            cursors.clear()
            dying.delete_old_runs(CUTOFF, shard=shard, on_cursor=lambda cursor, so_far: cursors.append(cursor))
        dead = None
    except Crash:
        pass
    dying.close()
    assert dead is not None, "the crash point was never reached"
    assert items_of(h.inventory(), survivors) == before, "a crash touched a run that must be kept"
    retention = h.retention(batch_size=3)
    for shard in plan:
        retention.delete_old_runs(CUTOFF, shard=shard, resume_after=cursors[-1] if shard == dead and cursors else None)
    retention.delete_old_runs(CUTOFF)
    items = h.inventory()
    assert run_ids(items) == survivors
    assert items_of(items, survivors) == before
    assert not markers(h)
    assert_no_orphans(items)


def test_a_run_another_purge_deleted_first_is_left_to_the_final_pass_and_counted_once(
        dynamodb_harness: DynamoDBHarness) -> None:
    """Two shards may both plan a run (one through its parent, one from a stale page after the parent went):
    the one whose commit finds it gone leaves its cascade to the other and its marker to the final pass."""
    h = dynamodb_harness
    expired = _flat(h, 3, extras=True)
    victim = "run_flat_001"
    twin = h.retention().delete_old_runs(CUTOFF, dry_run=True)
    taken: list[str] = []

    def someone_else_deletes_it_first(info: Any) -> None:
        if victim in info.run_ids and not taken:
            h.client.delete_item(TableName=h.table, Key={"PK": {"S": f"RUN#{victim}"}, "SK": {"S": "#METADATA"}})
            taken.append(victim)

    retention = h.retention()
    parts = [retention.delete_old_runs(CUTOFF, shard=s, on_batch=someone_else_deletes_it_first)
             for s in retention.shards(2)]
    assert taken and victim in markers(h)
    assert sum(p.runs for p in parts) == 2 and sum(p.counts[Kind.HOOKS] for p in parts) == 2
    final = retention.delete_old_runs(CUTOFF)
    assert final.counts[Kind.HOOKS] == 1 and final.runs == 0
    for kind in (Kind.HOOKS, Kind.EVENTS, Kind.CHECKPOINTS):
        assert sum(p.counts[kind] for p in parts) + final.counts[kind] == twin.counts[kind], kind
    items = h.inventory()
    assert not run_ids(items) & expired and not markers(h)
    assert_no_orphans(items)


def test_each_shard_finishes_its_own_runs_and_the_final_pass_only_resolves_what_is_left(
        dynamodb_harness: DynamoDBHarness) -> None:
    """Shards run one after the other (the worst order: each shard's Scan segment of the table is read before the
    later shards commit). Each shard deletes the checkpoints of its segment whose runs are committed when it reads
    them; the final pass does not cascade the shards' runs again: its one Scan of the table, after every commit,
    deletes the checkpoints the segments could not see, and it drops the markers."""
    h = dynamodb_harness
    expired = _flat(h, 24, extras=True)
    retention = h.retention(batch_size=4)
    twin = retention.delete_old_runs(CUTOFF, dry_run=True)
    parts = [retention.delete_old_runs(CUTOFF, shard=s) for s in retention.shards(4)]
    items = h.inventory()
    assert not run_ids(items) & expired and sum(p.runs for p in parts) == 24
    left = {i.key for i in items if i.kind == "checkpoints" and i.run_id in expired}
    assert {i.kind for i in items if i.run_id in expired} <= {"checkpoints"}, "a shard left more than checkpoints"
    assert sum(p.counts[Kind.CHECKPOINTS] for p in parts) == 2 * 24 - len(left) > 0
    final_backend, client = faulty_backend(h, batch_size=4)
    filters: list[str] = []

    def spy(real: Any, n: int, **params: Any) -> Any:
        filters.append(json.dumps(params.get("ExpressionAttributeValues"), sort_keys=True))
        return real(**params)

    client.rules["scan"] = spy
    final = final_backend.delete_old_runs(CUTOFF)
    assert final.runs == 0 and final.counts[Kind.CHECKPOINTS] == len(left)
    assert not client.calls["execute_statement"], "the final pass cascaded the shards' runs again"
    assert any("CHECKPOINT#" in f for f in filters), "the final pass did not scan the table for checkpoints"
    for kind in (Kind.HOOKS, Kind.EVENTS, Kind.CHECKPOINTS, Kind.HOOK_TOKENS):
        assert sum(p.counts[kind] for p in parts) + final.counts[kind] == twin.counts[kind], kind
    items = h.inventory()
    assert not run_ids(items) & expired and not markers(h)
    assert not [i for i in items if i.run_id in expired]
    assert_no_orphans(items)


def test_a_final_pass_that_dies_after_resuming_a_shards_gone_run_is_finished_by_a_rerun(
        dynamodb_harness: DynamoDBHarness) -> None:
    """A shard finds a run of its batch gone at its commit (another purge's): the final pass cascades that run from
    the shard's marker, which also names the batch's other runs, whose checkpoints a segment left pending. The final
    pass dies before it deletes those checkpoints: its rerun must still find their runs committed."""
    h = dynamodb_harness
    expired = _flat(h, 16, extras=True)
    retention = h.retention(batch_size=40)
    first, second = retention.shards(2)
    part = retention.delete_old_runs(CUTOFF, shard=first)  # its segment is read before the other shard commits
    taken: list[str] = []

    def someone_else_deletes_one_first(info: Any) -> None:
        if not taken and len(info.run_ids) > 1:
            victim = sorted(info.run_ids)[0]
            h.client.delete_item(TableName=h.table, Key={"PK": {"S": f"RUN#{victim}"}, "SK": {"S": "#METADATA"}})
            taken.append(victim)

    retention.delete_old_runs(CUTOFF, shard=second, on_batch=someone_else_deletes_one_first)
    assert taken and part.runs
    left = {i.key for i in h.inventory() if i.kind == "checkpoints" and i.run_id in expired}
    assert left, "no checkpoint left pending: the case is not reached"
    dying, client = faulty_backend(h, batch_size=40)
    client.crash_when("batch_write_item", writes("CHECKPOINT#"))
    with pytest.raises(Crash):
        dying.delete_old_runs(CUTOFF)
    dying.close()
    retention.delete_old_runs(CUTOFF)
    items = h.inventory()
    assert not [i for i in items if i.run_id in expired], "checkpoints of deleted runs were left"
    assert not markers(h)
    assert_no_orphans(items)


def test_segment_records_a_crashed_final_pass_left_do_not_cover_a_later_plan_whose_shard_gave_up_its_segment(
        dynamodb_harness: DynamoDBHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan's shards all finish, its final pass dies before it drops their segment records. A later plan under the
    same cutoff (``--before`` a date) has a shard that gives up its segment (its markers name too many runs): its
    final pass must scan the table, not trust the older plan's records and only read their pending keys."""
    from workflow_retention.backends.dynamodb.markers import Markers

    h = dynamodb_harness
    expired = _flat(h, 8, extras=True)
    retention = h.retention(batch_size=40)
    for shard in retention.shards(2):
        retention.delete_old_runs(CUTOFF, shard=shard)
    dying, client = faulty_backend(h, batch_size=40)
    client.crash_when("batch_write_item", writes("CHECKPOINT#"))
    with pytest.raises(Crash):
        dying.delete_old_runs(CUTOFF)
    dying.close()
    pw = h.pyworkflow()
    later = {f"run_later_{n:03d}" for n in range(8)}
    for run_id in sorted(later):
        h.run(add_run(pw, run_id, "completed", OLD, hooks=(), extras=True))
    with monkeypatch.context() as patch:
        patch.setattr(Markers, "named", lambda self, limit: None)  # past OWN_IDS named runs
        for shard in retention.shards(2):
            retention.delete_old_runs(CUTOFF, shard=shard)
    retention.delete_old_runs(CUTOFF)
    items = h.inventory()
    assert not [i for i in items if i.run_id in expired | later], "checkpoints of deleted runs were left"
    assert not markers(h)
    assert_no_orphans(items)


def test_checkpoints_the_engine_writes_after_a_segment_read_go_with_their_runs(
        dynamodb_harness: DynamoDBHarness) -> None:
    """The engine saves checkpoints of expired runs (``save_checkpoint`` leaves the run record as it was) after the
    first shard read its Scan segment, before the other shards commit those runs: a key that falls in the first
    segment is in no shard's read. The final pass's Scan of the whole table, after every commit, deletes it (no
    orphan), as a one-shard purge would (review of issue 18's split, the DynamoDB twin of the Cassandra case)."""
    h = dynamodb_harness
    expired = _flat(h, 24)
    pw = h.pyworkflow()
    retention = h.retention(batch_size=4)
    plan = retention.shards(4)
    retention.delete_old_runs(CUTOFF, shard=plan[0])
    present = sorted(run_ids(h.inventory()) & expired)
    assert present, "the first shard committed every run: the case is not reached"
    for run_id in present:
        for n in range(6):  # six keys a run: some fall in the first segment, already read
            h.run(pw.save_checkpoint(f"{run_id}:late_{n}", {"cursor": n}))
    for shard in plan[1:]:
        retention.delete_old_runs(CUTOFF, shard=shard)
    retention.delete_old_runs(CUTOFF)
    items = h.inventory()
    assert not run_ids(items) & expired and not markers(h)
    assert_no_orphans(items)
