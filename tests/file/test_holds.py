"""Parent/child holds without a parent index: deepest first, and safe on inconsistent or cyclic links."""

from __future__ import annotations

import json

from tests.conformance.checks import assert_no_orphans, run_ids
from tests.harness.file import FileHarness
from tests.scenario import CUTOFF, OLD, add_run


def _relink(store: FileHarness, run_id: str, parent: str | None, depth: object) -> None:
    path = store.base / "runs" / f"{run_id}.json"
    data = json.loads(path.read_text())
    data.update(parent_run_id=parent, nesting_depth=depth)
    path.write_text(json.dumps(data, indent=2))


def test_a_deep_tree_goes_deepest_first(store: FileHarness) -> None:
    pw, chain = store.pyworkflow(), ["run_d0", "run_d1", "run_d2", "run_d3"]
    for depth, run_id in enumerate(chain):
        store.run(add_run(pw, run_id, "completed", OLD, parent=chain[depth - 1] if depth else None, depth=depth))
    order: list[str] = []
    report = store.retention(batch_size=1).delete_old_runs(CUTOFF, on_batch=lambda i: order.extend(i.run_ids))
    assert order == chain[::-1] and report.runs == 4 and report.batches == 4
    assert not run_ids(store.inventory())


def test_inconsistent_nesting_depth_holds_the_parent_until_the_child_is_gone(store: FileHarness) -> None:
    pw = store.pyworkflow()
    store.run(add_run(pw, "run_parent", "completed", OLD))
    store.run(add_run(pw, "run_child", "completed", OLD, parent="run_parent", depth=1))
    _relink(store, "run_child", "run_parent", "zero")
    first = store.retention().delete_old_runs(CUTOFF)
    assert run_ids(store.inventory()) == {"run_parent"} and first.held == 1
    assert any("nesting_depth" in w for w in first.warnings)
    second = store.retention().delete_old_runs(CUTOFF)
    assert second.runs == 1 and not run_ids(store.inventory())
    assert_no_orphans(store.inventory())


def test_cyclic_parent_links_terminate_and_delete_nothing_of_the_cycle(store: FileHarness) -> None:
    pw = store.pyworkflow()
    for run_id in ("run_a", "run_b", "run_c"):
        store.run(add_run(pw, run_id, "completed", OLD))
    _relink(store, "run_a", "run_b", 1)
    _relink(store, "run_b", "run_a", 1)
    store.run(add_run(pw, "run_live", "running", OLD, parent="run_a", depth=2))
    report = store.retention().delete_old_runs(CUTOFF)
    assert run_ids(store.inventory()) == {"run_a", "run_b", "run_live"}
    assert report.runs == 1 and report.held == 2
