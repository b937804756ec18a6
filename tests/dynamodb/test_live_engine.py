"""A live engine beside a DynamoDB purge: pyworkflow-engine's own DynamoDBStorageBackend in another thread.

What DynamoDB guarantees: a run the engine writes to (its record) before the
run's conditional delete keeps everything; the purge cannot stop a write that
lands after it. pyworkflow's ``update_item`` calls upsert, so such a write
re-creates a partial "ghost" record (no ``workflow_name``; pyworkflow's own
``get_run`` fails on it). Ghosts are found in the raw store, each explained
(the purge committed that run, then the engine wrote to it), kept and reported.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from typing import Any

import pytest

from tests.conformance.checks import assert_no_orphans, items_of, run_ids
from tests.dynamodb.helpers import commit_ids, faulty_backend, markers
from tests.engine import ConcurrentEngine
from tests.harness.base import Item
from tests.harness.dynamodb import DynamoDBHarness
from tests.scenario import CUTOFF, NOW, Scenario, build
from workflow_retention.planning import TERMINAL_STATUSES
from workflow_retention.seed import SeedRun, generate
from workflow_retention.timeutil import parse_timestamp

RUNS = 1700


def _record_commits(client: Any) -> dict[str, float]:
    """Run ids whose item our purge deleted (its conditional delete succeeded), with the time."""
    committed: dict[str, float] = {}

    def rule(real_fn: Any, n: int, **params: Any) -> Any:
        response = real_fn(**params)  # a cancelled transaction raises: it deleted nothing
        for run_id in commit_ids(params):
            committed[run_id] = time.monotonic()
        return response

    client.rules["transact_write_items"] = rule
    return committed


def test_an_engine_write_after_the_commit_leaves_a_ghost_that_is_kept_and_reported(
        dynamodb_harness: DynamoDBHarness) -> None:
    """Deterministic: the engine revives a run between its commit and its cascade."""
    from pyworkflow.storage.schemas import RunStatus

    h = dynamodb_harness
    scenario: Scenario = h.run(build(h, h.pyworkflow()))
    backend, client = faulty_backend(h, workers=1)  # the engine's write runs on this thread, in order
    committed = _record_commits(client)
    victim: list[str] = []

    def engine_revives(real_fn: Any, n: int, **params: Any) -> Any:
        value = params["Parameters"][0]["S"]
        if value.startswith("RUN_HOOKS#") and not victim:
            victim.append(value[len("RUN_HOOKS#"):])
            h.run(h.pyworkflow().update_run_status(victim[0], RunStatus.RUNNING))
        return real_fn(**params)

    client.rules["execute_statement"] = engine_revives
    report = backend.delete_old_runs(CUTOFF)
    ghost = victim[0]
    assert ghost in committed and h.ghosts() == {ghost}
    assert report.skipped == 1 and ghost in report.warnings[0] and "ghost" in report.warnings[0]
    assert report.runs == len(scenario.deleted), "the ghost's run was deleted, and counted"
    with pytest.raises(KeyError):
        h.run(h.pyworkflow().get_run(ghost))  # what the engine sees next: a record it cannot read
    sweep = h.retention().sweep_orphans(dry_run=True)
    assert sweep.total == 0 and sweep.skipped == 1 and "no workflow_name" in sweep.warnings[0]
    rerun = h.retention().delete_old_runs(CUTOFF)
    items = h.inventory()
    assert rerun.runs == 0 and run_ids(items) == scenario.kept | scenario.held | {ghost}
    assert_no_orphans(items)
    assert not markers(h)


def _expired(seed: SeedRun) -> bool:
    return seed.run["status"] in TERMINAL_STATUSES and parse_timestamp(seed.run["updated_at"]) < CUTOFF


def _by_run(items: list[Item]) -> dict[str, dict[tuple[str, str], str]]:
    out: dict[str, dict[tuple[str, str], str]] = defaultdict(dict)
    for i in items:
        if i.run_id is not None:
            out[i.run_id][(i.kind, i.key)] = i.digest
    return out


async def _views(pw: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    return {run_id: {"events": len(await pw.get_events(run_id)),
                     "tokens": {h.token for h in await pw.list_hooks(run_id=run_id, limit=1000)}}
            for run_id in ids}


WINDOW = re.compile(r"(\d+) runs committed; read to commit <= ([\d.]+)s, first commit to cascade end ([\d.]+)s")


def test_a_live_engine_beside_a_purge_of_a_thousand_runs_loses_nothing_it_kept_alive(
        dynamodb_harness: DynamoDBHarness, caplog: pytest.LogCaptureFixture) -> None:
    h = dynamodb_harness
    seeded = {s.run_id: s for s in generate(RUNS, now=NOW, seed=23, max_age_days=120, child_share=0.3)}
    h.retention(batch_size=500).seed(list(seeded.values()))
    expired = sorted(r for r, s in seeded.items() if _expired(s))
    assert len(expired) >= 1000
    before = h.inventory()
    before_runs, before_items = run_ids(before), _by_run(before)
    backend, client = faulty_backend(h, batch_size=100)
    committed = _record_commits(client)

    caplog.set_level(logging.DEBUG, logger="workflow_retention.dynamodb")
    with ConcurrentEngine(h, expired, seed=7) as engine:
        report = backend.delete_old_runs(CUTOFF, on_batch=engine.on_batch)
        time.sleep(0.2)
    windows = [tuple(map(float, m.groups())) for r in caplog.records if (m := WINDOW.search(r.getMessage()))]
    assert not engine.errors, engine.errors[:3]
    assert len(engine.revived) >= 10 and engine.actions >= 50, (len(engine.revived), engine.actions)

    after = h.inventory()
    ghost_ids = h.ghosts()
    after_runs, after_items = run_ids(after) - ghost_ids, _by_run(after)

    # Every ghost is explained: the purge committed that run, then the engine's revival landed on it.
    assert ghost_ids <= set(committed) & engine.attempted, ghost_ids - set(committed) - engine.attempted
    assert not ghost_ids & engine.kept_alive
    assert report.skipped <= len(ghost_ids) and all("ghost" in w for w in report.warnings)

    # Runs the engine kept alive (revived before their commit) have all they had and all it wrote.
    assert engine.kept_alive <= after_runs, sorted(engine.kept_alive - after_runs)[:5]
    for run_id in engine.revived:
        assert run_id not in committed
        assert set(before_items[run_id]) <= set(after_items[run_id]), run_id
    views = h.run(_views(h.pyworkflow(), sorted(engine.revived)))
    for run_id, writes in engine.revived.items():
        assert views[run_id]["events"] >= len(seeded[run_id].events) + writes.events, run_id
        assert {f"{run_id}:{hook}" for hook in writes.hooks} <= views[run_id]["tokens"], run_id

    # Runs nobody touched: unchanged, or expired and gone; the report counts what went.
    for run_id in before_runs - engine.attempted:
        if run_id in after_runs:
            assert after_items[run_id] == before_items[run_id], run_id
        else:
            assert _expired(seeded[run_id]), run_id
    assert report.runs == len(before_runs - after_runs) == len(committed)

    # A rerun with the engine stopped leaves no orphans and no markers; ghosts stay, reported by the sweep.
    # (It may delete a few runs: a child skipped on its page because its expired parent would reach it,
    # whose parent the engine then revived, is a root of its own only for the next purge.)
    h.retention(batch_size=100).delete_old_runs(CUTOFF)
    final = h.inventory()
    assert_no_orphans(final)
    assert not markers(h)
    assert engine.kept_alive <= run_ids(final) and h.ghosts() == ghost_ids
    for run_id in engine.revived:
        assert set(before_items[run_id]) <= set(items_of(final, {run_id})), run_id
    sweep = h.retention().sweep_orphans(dry_run=True)
    assert sweep.total == 0 and sweep.skipped == len(ghost_ids)

    assert windows and sum(w[0] for w in windows) == report.runs
    in_flight = sum(1 for w in engine.revived.values() if w.in_flight)
    print(f"\ndynamodb live engine: {report.runs} deleted in {report.batches} batches, changed {report.changed}, "
          f"held {report.held}; revived {len(engine.revived)} ({in_flight} in their batch), ghosts "
          f"{len(ghost_ids)}, engine actions {engine.actions}; read->commit max "
          f"{max(w[1] for w in windows):.3f}s, median {sorted(w[1] for w in windows)[len(windows) // 2]:.3f}s; "
          f"commit->cascade end max {max(w[2] for w in windows):.3f}s, "
          f"median {sorted(w[2] for w in windows)[len(windows) // 2]:.3f}s")
