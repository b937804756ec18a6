"""``explain``: why a run is (not) deleted, on every backend, agreeing with the purge itself."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conformance.checks import run_ids, snapshot
from tests.harness.base import Harness
from tests.scenario import CUTOFF, OLD, Scenario, add_run, build
from workflow_retention.base import Capability
from workflow_retention.exceptions import ConfigurationError
from workflow_retention.report import Kind


@pytest.fixture
def scenario(backend: Harness) -> Scenario:
    return backend.run(build(backend, backend.pyworkflow()))


def test_every_run_is_explained_as_the_purge_treats_it(backend: Harness, scenario: Scenario) -> None:
    retention = backend.retention()
    before = snapshot(backend.inventory())
    answers = {run_id: retention.explain(run_id, CUTOFF) for run_id in sorted(scenario.all_runs)}
    assert snapshot(backend.inventory()) == before, "explain changed the store"
    wrong = {r: a.reasons for r, a in answers.items() if a.deleted != (r in scenario.deleted)}
    assert not wrong, f"explain disagrees with the scenario: {wrong}"
    for run_id, answer in answers.items():
        assert answer.exists
        assert bool(answer.reasons) == (not answer.deleted), (run_id, answer.reasons)
    report = retention.delete_old_runs(CUTOFF)
    assert report.runs == len(scenario.deleted)
    assert {r for r, a in answers.items() if a.deleted} == scenario.deleted


def test_the_reasons_name_the_cause(backend: Harness, scenario: Scenario) -> None:
    retention = backend.retention()

    def why(run_id: str) -> str:
        return " | ".join(retention.explain(run_id, CUTOFF).reasons)

    assert "'running'" in why("run_live_running")
    assert "not before the cutoff" in why("run_recent")
    assert "not before the cutoff" in why("run_at_cutoff")
    assert "held by its child 'run_live_child'" in why("run_held_by_live")
    assert "'running'" in why("run_held_by_live")
    assert "held by its child 'run_recent_child'" in why("run_held_by_recent")
    missing = retention.explain("run_never_written", CUTOFF)
    assert not missing.exists and not missing.deleted and "no run record" in missing.reasons[0]


def test_a_family_goes_together_children_first(backend: Harness, scenario: Scenario) -> None:
    retention = backend.retention()
    parent = retention.explain("run_tree_parent", CUTOFF)
    assert parent.deleted and parent.planned_under == "run_tree_parent"
    assert parent.goes_with == ["run_tree_child", "run_tree_grandchild"]
    assert parent.counts[Kind.RUNS] == 3
    grandchild = retention.explain("run_tree_grandchild", CUTOFF)
    assert grandchild.deleted and grandchild.planned_under == "run_tree_parent"
    sibling = retention.explain("run_expired_sibling", CUTOFF)  # its parent is held, it goes alone
    assert sibling.deleted and sibling.planned_under == "run_held_by_live" and sibling.goes_with == []
    assert sibling.counts[Kind.RUNS] == 1


def test_counts_add_up_to_the_purge(backend: Harness) -> None:
    """Each deleted family explained once: their counts per kind are the purge's (a store without schedules
    or stream data, which the purge's sweeps would count too)."""
    scenario = backend.run(build(backend, backend.pyworkflow(), aux=False))
    retention = backend.retention()
    roots = {a.planned_under: a for r in sorted(scenario.deleted)
             if (a := retention.explain(r, CUTOFF)).planned_under == r or a.planned_under in scenario.held}
    total: Counter[str] = Counter()
    for answer in roots.values():
        total.update(answer.counts)
    purged = retention.delete_old_runs(CUTOFF)
    assert dict(+total) == {k: v for k, v in purged.counts.items() if v}


@pytest.mark.requires(Capability.CORRUPTIBLE_TIMESTAMPS)
def test_an_unreadable_timestamp_is_named(capable_backend: Harness) -> None:
    capable_backend.run(build(capable_backend, capable_backend.pyworkflow()))
    capable_backend.corrupt_updated_at("run_exp_failed")
    answer = capable_backend.retention().explain("run_exp_failed", CUTOFF)
    assert answer.exists and not answer.deleted
    assert "cannot be read" in answer.reasons[0]


def test_bad_input_is_refused(backend: Harness, scenario: Scenario) -> None:
    with pytest.raises(ConfigurationError):
        backend.retention().explain("", CUTOFF)
    with pytest.raises(ConfigurationError):
        backend.retention().explain("run_exp_failed", CUTOFF.replace(tzinfo=None))


def test_a_chain_deeper_than_any_engine_nests_is_walked_to_its_root(backend: Harness) -> None:
    """Damaged or hand-written data can chain runs far deeper than pyworkflow nests: explain walks up as the
    purge does, to the run whose parent is not expired, so the verdict is the purge's."""
    pw = backend.pyworkflow()
    chain = [f"run_chain{i:03d}" for i in range(105)]
    for i, run_id in enumerate(chain):
        backend.run(add_run(pw, run_id, "completed", OLD, parent=chain[i - 1] if i else None,
                            depth=min(i, 3), extras=False))
    retention = backend.retention()
    leaf = retention.explain(chain[-1], CUTOFF)
    assert leaf.deleted, leaf.reasons
    verdicts = {run_id: retention.explain(run_id, CUTOFF).deleted for run_id in (chain[0], chain[50], chain[-2])}
    retention.delete_old_runs(CUTOFF)
    left = run_ids(backend.inventory())
    assert chain[-1] not in left
    assert {r: r not in left for r in verdicts} == verdicts  # (a file store holds parents whose depth is not below)
