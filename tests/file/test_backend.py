"""URL, settings, check, and the seeder writing exactly what pyworkflow-engine writes."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.file.conftest import tree
from tests.harness.file import FileHarness
from tests.scenario import CUTOFF, OLD, add_run
from workflow_retention.backends import by_url
from workflow_retention.backends.file import FileBackend
from workflow_retention.exceptions import ConfigurationError, StorageError
from workflow_retention.seed import generate


def test_url_forms(tmp_path: Path) -> None:
    backend = by_url(f"file://{tmp_path}/my%20store", batch_size=7)
    assert isinstance(backend, FileBackend) and backend.base_path == tmp_path / "my store"
    assert backend.batch_size == 7 and repr(backend) == f"<FileBackend file://{tmp_path}/my%20store>"
    local = by_url(f"file://localhost{tmp_path}")
    assert isinstance(local, FileBackend) and local.base_path == tmp_path
    assert FileBackend(tmp_path).url == f"file://{tmp_path}"


@pytest.mark.parametrize("url", ["file://relative/dir", "file:relative", "file://host/abs", "file:///abs#frag"])
def test_bad_urls_name_the_expected_form(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"file:///absolute/path/to/store"):
        FileBackend.from_url(url)


def test_unknown_url_parameter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="unknown parameter"):
        by_url(f"file://{tmp_path}?lock_timeout=3")


@pytest.mark.parametrize("value", [0, -1, "-1", "ten", "10x", True, None, float("nan"), float("inf"), 3601, "2h"])
def test_lock_timeout_is_validated(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigurationError, match=r"^lock_timeout\b.* (up to 3600|to 1h)\b.*; got "):
        FileBackend(tmp_path, lock_timeout=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "seconds"), [(10, 10.0), (2.5, 2.5), ("10", 10.0), ("90s", 90.0),
                                                (timedelta(minutes=2), 120.0)])
def test_lock_timeout_takes_seconds_or_a_duration(tmp_path: Path, value: object, seconds: float) -> None:
    assert FileBackend(tmp_path, lock_timeout=value).lock_timeout == seconds  # type: ignore[arg-type]


def test_missing_store_or_not_a_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        FileBackend(tmp_path / "nope").delete_old_runs(CUTOFF)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "precious.txt").write_text("x")
    with pytest.raises(StorageError, match="no runs/ directory"):
        FileBackend(tmp_path / "elsewhere").sweep_orphans()
    assert (tmp_path / "elsewhere" / "precious.txt").exists()


def test_check_reports_the_store(store: FileHarness) -> None:
    store.retention().seed(generate(5, now=datetime.now(UTC), seed=1))
    facts = store.retention().check()
    assert facts["backend"] == "file" and facts["run_files"] == 5 and facts["pending_purge_markers"] == 0


def test_seeded_files_are_byte_for_byte_what_the_engine_writes(tmp_path: Path) -> None:
    """Write the same runs through pyworkflow-engine's API and with the seeder; compare the stores."""
    from pyworkflow.engine.events import Event, EventType
    from pyworkflow.storage.schemas import Hook, StepExecution, WorkflowRun

    seeds = [s for s in generate(40, now=datetime.now(UTC), seed=11) if s.hooks and s.steps][:3]
    assert seeds
    engine = FileHarness(tmp_path / "engine")
    pw = engine.pyworkflow()

    async def write() -> None:
        for seed in seeds:
            await pw.create_run(WorkflowRun.from_dict(seed.run))
            for e in seed.events:
                await pw.record_event(Event(event_id=e["event_id"], run_id=e["run_id"], type=EventType(e["type"]),
                                            timestamp=datetime.fromisoformat(e["timestamp"]), data=e["data"]))
            for step in seed.steps:
                await pw.create_step(StepExecution.from_dict(step))
            for hook in seed.hooks:
                await pw.create_hook(Hook.from_dict(hook))
            for key, data in seed.checkpoints.items():
                await pw.save_checkpoint(key, data)

    engine.run(write())
    ours = FileBackend(tmp_path / "ours")
    ours.seed(seeds)

    def files(base: Path) -> dict[str, bytes]:
        return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()
                and not p.name.endswith(".cancel") and "_cancel" not in p.name and not p.name.startswith("hook_")}

    assert files(engine.base) == files(ours.base_path)
    engine.close()


def test_seed_refuses_unusable_ids(tmp_path: Path) -> None:
    seed = next(generate(1, now=datetime.now(UTC), seed=1))
    seed.run["run_id"] = "../escape"
    with pytest.raises(StorageError, match="not usable as a file name"):
        FileBackend(tmp_path / "s").seed([seed])
    assert not (tmp_path / "escape.json").exists()


def test_seed_keeps_an_existing_token_index(store: FileHarness) -> None:
    path = store.base / "_token_index.json"
    path.write_text(json.dumps({"run_x:hook_1": "run_x:hook_1"}))
    runs = list(generate(30, now=datetime.now(UTC), seed=2))
    store.retention().seed(runs)
    index = json.loads(path.read_text())
    assert index["run_x:hook_1"] == "run_x:hook_1" and len(index) == 1 + sum(len(s.hooks) for s in runs)


def test_a_store_without_its_locks_directory_fails_before_anything_changes(store: FileHarness) -> None:
    store.run(add_run(store.pyworkflow(), "run_a", "completed", OLD))
    shutil.rmtree(store.base / ".locks")
    before = tree(store.base)
    with pytest.raises(StorageError, match=r"no \.locks/ directory"):
        store.retention().delete_old_runs(CUTOFF)
    assert tree(store.base) == before
