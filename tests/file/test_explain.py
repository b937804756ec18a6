"""``explain`` on a damaged file store: the purge's own holds are the answer, in its words."""

from __future__ import annotations

from tests.file.conftest import write_json
from tests.harness.file import FileHarness
from tests.scenario import CUTOFF, OLD, add_run


def _family(store: FileHarness) -> None:
    pw = store.pyworkflow()
    store.run(add_run(pw, "run_parent", "completed", OLD))
    store.run(add_run(pw, "run_child", "completed", OLD, parent="run_parent", depth=1))
    store.run(add_run(pw, "run_other", "completed", OLD))


def test_an_unreadable_child_file_is_named_and_keeps_the_parent_it_may_name(store: FileHarness) -> None:
    _family(store)
    path = store.base / "runs" / "run_child.json"
    path.write_bytes(path.read_bytes()[:-40])  # cut short: not JSON, but its parent is still readable in the bytes
    retention = store.retention()
    child = retention.explain("run_child", CUTOFF)
    assert child.exists and not child.deleted
    assert "its record cannot be read (runs/run_child.json: not valid JSON" in child.reasons[0]
    parent = retention.explain("run_parent", CUTOFF)
    assert not parent.deleted and parent.reasons
    assert any("run_child.json" in w and "run_parent" in w for w in parent.warnings), parent.warnings
    assert retention.explain("run_other", CUTOFF).deleted
    report = retention.delete_old_runs(CUTOFF)
    assert report.runs == 1  # run_other only, as explained
    assert (store.base / "runs" / "run_parent.json").exists()


def test_a_file_that_names_no_parent_holds_every_possible_parent(store: FileHarness) -> None:
    _family(store)
    (store.base / "runs" / "run_ghost.json").write_bytes(b"\x00garbage")
    answer = store.retention().explain("run_other", CUTOFF)
    assert not answer.deleted
    assert "the purge's own checks keep it" in answer.reasons[0]
    assert any("run_ghost.json" in w for w in answer.warnings)


def test_a_run_file_with_an_unsafe_id_is_found_and_named_unsafe(store: FileHarness) -> None:
    (store.base / "runs").mkdir(parents=True, exist_ok=True)
    write_json(store.base / "runs" / "has space.json",
               {"run_id": "has space", "workflow_name": "w", "status": "completed", "created_at": OLD.isoformat(),
                "updated_at": OLD.isoformat()})
    answer = store.retention().explain("has space", CUTOFF)
    assert answer.exists and not answer.deleted
    assert answer.reasons == ["its run_id is not a safe identifier"]
