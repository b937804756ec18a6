"""Fixtures for the file backend's own tests: a store written by pyworkflow-engine, next to a victim directory."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.file import FileHarness


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def tree(root: Path) -> dict[str, str]:
    """Every file and symlink under ``root`` -> content hash (or link target)."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            path = Path(directory, name)
            rel = str(path.relative_to(root))
            found[rel] = f"-> {os.readlink(path)}" if path.is_symlink() else hashlib.sha1(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FileHarness]:
    harness = FileHarness(tmp_path)
    yield harness
    harness.close()


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A directory next to the store that nothing may read, change or delete."""
    root = tmp_path / "victim"
    root.mkdir()
    (root / "secret.txt").write_text("do not delete")
    write_json(root / "secret.json", {"run_id": "run_ok", "status": "completed",
                                      "updated_at": "2000-01-01T00:00:00+00:00"})
    write_json(root / "runs" / "run_far.json", {"run_id": "run_far", "status": "completed",
                                                "updated_at": "2000-01-01T00:00:00+00:00"})
    (root / "victim.lock").write_text("")
    return root


NOBODY = 65534


def run_as(uid: int, gid: int, body: Callable[[], object], timeout: float = 120) -> dict:
    """Run ``body`` in a forked child that dropped to ``uid``/``gid`` (real, effective and saved).

    Returns ``{"ok": <JSON of body's result>}`` or ``{"error": <exception type>, "message": ...,
    "cause": <type of the chained exception>}``. As root this is how a test gets a process without
    CAP_DAC_OVERRIDE (permission bits apply) or a process running as the engine's own user.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            out: dict = {"ok": body()}
        except BaseException as exc:  # everything goes back to the test
            out = {"error": type(exc).__name__, "message": str(exc),
                   "cause": type(exc.__cause__).__name__ if exc.__cause__ else None}
        try:
            os.write(write_end, json.dumps(out, default=str).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + timeout
    with os.fdopen(read_end, "rb") as fh:
        while chunk := fh.read(65536):
            chunks.append(chunk)
            if time.monotonic() > deadline:
                break
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b'{"error": "no answer"}')


def chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(directory, name), uid, gid, follow_symlinks=False)


@pytest.fixture
def open_store() -> Iterator[FileHarness]:
    """A store under a directory every user may traverse (for tests that drop privileges)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    root = Path(tempfile.mkdtemp(prefix="wr-file-test-"))
    os.chmod(root, 0o755)
    harness = FileHarness(root)
    try:
        yield harness
    finally:
        harness.close()
        shutil.rmtree(root, ignore_errors=True)
