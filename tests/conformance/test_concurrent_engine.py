"""A live engine beside the purge, on every backend: what the engine keeps alive loses nothing.

pyworkflow-engine's own storage class runs in a second thread (tests/engine.py)
throughout a purge of over a thousand expired runs: it revives expired runs,
rewrites their context, records events, creates hooks and starts children
under the runs it revived, preferring the batch being purged at that moment.
The judge reads the raw store before and after.
"""

from __future__ import annotations

import time
from collections import defaultdict

from tests.conformance.checks import assert_no_orphans, items_of, run_ids
from tests.engine import ConcurrentEngine
from tests.harness.base import Harness, Item
from tests.scenario import CUTOFF, NOW
from workflow_retention.planning import TERMINAL_STATUSES
from workflow_retention.seed import SeedRun, generate
from workflow_retention.timeutil import parse_timestamp

RUNS = 1700


def _expired(seed: SeedRun) -> bool:
    return seed.run["status"] in TERMINAL_STATUSES and parse_timestamp(seed.run["updated_at"]) < CUTOFF


def _by_run(items: list[Item]) -> dict[str, dict[tuple[str, str], str]]:
    out: dict[str, dict[tuple[str, str], str]] = defaultdict(dict)
    for i in items:
        if i.run_id is not None:
            out[i.run_id][(i.kind, i.key)] = i.digest
    return out


async def _views(pw, ids):
    views = {}
    for run_id in ids:
        run = await pw.get_run(run_id)
        views[run_id] = {"run": run, "events": len(await pw.get_events(run_id)),
                         # tokens: pyworkflow 0.4.0's SQLite reads swap hook_id and run_id
                         "tokens": {h.token for h in await pw.list_hooks(run_id=run_id)}}
    return views


def test_a_concurrent_engine_loses_nothing_and_a_rerun_leaves_no_orphans(backend: Harness) -> None:
    seeded = {s.run_id: s for s in generate(RUNS, now=NOW, seed=23, max_age_days=120, child_share=0.3)}
    backend.retention(batch_size=500).seed(list(seeded.values()))
    expired = [r for r, s in seeded.items() if _expired(s)]
    assert len(expired) >= 1000
    before = backend.inventory()
    before_runs, before_items = run_ids(before), _by_run(before)

    with ConcurrentEngine(backend, expired, seed=7) as engine:
        report = backend.retention(batch_size=100).delete_old_runs(CUTOFF, on_batch=engine.on_batch)
        time.sleep(0.2)
    assert not engine.errors, engine.errors[:3]
    assert len(engine.revived) >= 10 and engine.actions >= 50, (len(engine.revived), engine.actions)

    after = backend.inventory()
    after_runs, after_items = run_ids(after), _by_run(after)
    kept = engine.kept_alive
    ghosts = backend.ghosts()
    assert ghosts <= engine.unconfirmed, f"partial run records the engine did not write: {ghosts - engine.unconfirmed}"

    # 1. Every run the engine kept alive has its record, all it had before, and all the engine wrote.
    assert kept <= after_runs, f"runs the engine kept alive were deleted: {sorted(kept - after_runs)[:5]}"
    def lost(items: dict[tuple[str, str], str], run_id: str) -> set[tuple[str, str]]:
        """What a revived run had before and no longer has, beyond the index entries its revival rewrote."""
        return {key for key in set(before_items[run_id]) - set(items)
                if key[0] not in backend.status_index_kinds}

    for run_id in engine.revived:
        missing = lost(after_items[run_id], run_id)
        assert not missing, f"{run_id} (revived) lost {sorted(missing)[:5]}"
    views = backend.run(_views(backend.pyworkflow(), sorted(engine.revived)))
    for run_id, writes in engine.revived.items():
        view = views[run_id]
        assert view["events"] >= len(seeded[run_id].events) + writes.events, run_id
        assert {f"{run_id}:{h}" for h in writes.hooks} <= view["tokens"], run_id

    # 2. No surviving run lost its parent (holds are exact under the engine's writes).
    parents = {r: s.run["parent_run_id"] for r, s in seeded.items() if s.run["parent_run_id"]}
    parents.update({c: r for r, w in engine.revived.items() for c in w.children})
    for run_id in after_runs - ghosts:
        parent = parents.get(run_id)
        if parent in before_runs | set(engine.revived):
            assert parent in after_runs, f"{run_id} survived but its parent {parent} was deleted"

    # 3. A run the engine never touched is either unchanged or was expired; nothing else changed.
    for run_id in before_runs - engine.attempted:
        if run_id in after_runs:
            assert after_items[run_id] == before_items[run_id], f"{run_id} changed though nobody wrote to it"
        else:
            assert _expired(seeded[run_id]), f"{run_id} was deleted but had not expired"
    deleted = before_runs - (after_runs - ghosts)  # a ghost is a run the purge deleted, partly written again
    assert report.runs == len(deleted), (report.runs, len(deleted))

    # 4. A rerun with the engine stopped completes the purge: zero orphans, kept runs still whole.
    backend.retention(batch_size=100).delete_old_runs(CUTOFF)
    final = backend.inventory()
    assert_no_orphans(final)
    assert kept <= run_ids(final)
    for run_id in engine.revived:
        assert not lost(items_of(final, {run_id}), run_id), run_id
    in_flight = sum(1 for w in engine.revived.values() if w.in_flight)
    print(f"{backend.name}: revived {len(engine.revived)} ({in_flight} while their batch was purged), "
          f"ghosts {len(ghosts)}, engine actions {engine.actions}, deleted {len(deleted)}, "
          f"changed {report.changed}, held {report.held}")
