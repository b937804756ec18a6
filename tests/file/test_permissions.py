"""Users and permissions: a purge keeps every rewritten file's owner, and a store it cannot write fails loudly.

The engine runs as its own user; a purge is often run as root (or as another
user). Tests that need a process without root's CAP_DAC_OVERRIDE, or one that
is the engine's user, fork a child that drops to ``nobody``.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from tests.conformance.checks import run_ids
from tests.file.conftest import NOBODY, chown_tree, run_as, tree, write_json
from tests.harness.file import FileHarness
from tests.scenario import CUTOFF, OLD, add_run
from workflow_retention.backends.file import FileBackend
from workflow_retention.report import Kind


def _engine_writes(base: Path) -> dict:
    """What the engine does next, as its own user: a hook (token index) and a signal (signals array)."""

    async def body() -> None:
        from pyworkflow.storage.file import FileStorageBackend
        from pyworkflow.storage.schemas import Hook

        pw = FileStorageBackend(base_path=str(base))
        await pw.create_hook(Hook(hook_id="hook_after", run_id="run_live", token="run_live:hook_after"))
        await pw.publish_signal("sig_after", "stream_a", "tick", {"n": 3}, stream_run_id="srun_1")

    return run_as(NOBODY, NOBODY, lambda: asyncio.run(body()))


def test_a_purge_run_as_root_leaves_the_store_writable_by_the_engine_user(open_store: FileHarness) -> None:
    store = open_store
    pw = store.pyworkflow()
    store.run(add_run(pw, "run_old", "completed", OLD))
    store.run(add_run(pw, "run_live", "running", OLD))
    with store.frozen(OLD):
        store.run(pw.publish_signal("sig_old", "stream_a", "tick", {"n": 1}, stream_run_id="srun_1"))
    store.run(pw.publish_signal("sig_new", "stream_a", "tick", {"n": 2}, stream_run_id="srun_1"))
    for shared in ("token_index.lock", "signals_stream_a.lock"):  # the purge has to create these itself
        (store.base / ".locks" / shared).unlink()
    os.chmod(store.base / "_token_index.json", 0o640)
    chown_tree(store.base, NOBODY, NOBODY)
    report = store.retention().delete_old_runs(CUTOFF)
    assert report.runs == 1 and report.counts[Kind.HOOK_TOKENS] == 1 and report.counts[Kind.SIGNALS] == 1
    for rel in ("_token_index.json", "signals/stream_a.json", ".locks/token_index.lock",
                ".locks/signals_stream_a.lock"):
        st = os.lstat(store.base / rel)
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), rel
    assert stat.S_IMODE(os.lstat(store.base / "_token_index.json").st_mode) == 0o640
    assert _engine_writes(store.base) == {"ok": None}
    index = json.loads((store.base / "_token_index.json").read_text())
    assert "run_live:hook_after" in index


def _store(open_store: FileHarness, *, schedule: bool = True) -> FileHarness:
    pw = open_store.pyworkflow()
    for run_id in ("run_a", "run_b"):
        open_store.run(add_run(pw, run_id, "completed", OLD))
    if schedule:
        write_json(open_store.base / "schedules" / "s_old.json",
                   {"schedule_id": "s_old", "status": "deleted", "updated_at": OLD.isoformat()})
    return open_store


def _purge_as_nobody(base: Path) -> dict:
    return run_as(NOBODY, NOBODY, lambda: FileBackend(base).delete_old_runs(CUTOFF).to_dict())


def test_a_store_the_purge_cannot_write_fails_loudly_and_deletes_nothing(open_store: FileHarness) -> None:
    """Owned by root, run as nobody (no CAP_DAC_OVERRIDE): a failure, not 'skipped (invalid)'."""
    store = _store(open_store, schedule=False)
    before = tree(store.base)
    out = _purge_as_nobody(store.base)
    assert out.get("error") == "StorageError", out
    assert "Permission denied" in out["message"] and out["cause"] == "PermissionError"
    assert tree(store.base) == before


@pytest.mark.parametrize("read_only", ["events", "hooks", "checkpoints", ".locks", "schedules", "."])
def test_one_read_only_directory_is_found_before_the_first_commit(open_store: FileHarness, read_only: str) -> None:
    store = _store(open_store)
    chown_tree(store.base, NOBODY, NOBODY)
    os.chmod(store.base / read_only, 0o555)
    before = tree(store.base)
    try:
        out = _purge_as_nobody(store.base)
    finally:
        os.chmod(store.base / read_only, 0o755)
    assert out.get("error") == "StorageError", out
    assert "Permission denied" in out["message"]
    assert tree(store.base) == before
    assert run_ids(store.inventory()) == {"run_a", "run_b"}


def test_an_unreadable_run_file_is_a_failure_not_a_skip(open_store: FileHarness) -> None:
    store = _store(open_store)
    chown_tree(store.base, NOBODY, NOBODY)
    os.chmod(store.base / "runs" / "run_b.json", 0o000)
    before = tree(store.base)
    out = _purge_as_nobody(store.base)
    assert out.get("error") == "StorageError" and "run_b.json" in out["message"], out
    assert tree(store.base) == before


def test_an_orphan_sweep_that_cannot_write_fails_loudly(open_store: FileHarness) -> None:
    """Only orphan lock files: an unwritable .locks/ used to be 'skipped' one by one, and exit 0."""
    store = open_store
    store.run(store.synthesize_orphan(Kind.LOCK_FILES, "run_gone", OLD))
    before = tree(store.base)
    out = run_as(NOBODY, NOBODY, lambda: FileBackend(store.base).sweep_orphans().to_dict())
    assert out.get("error") == "StorageError" and "Permission denied" in out["message"], out
    assert tree(store.base) == before
