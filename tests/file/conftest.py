"""Fixtures for the file backend's own tests: a store written by pyworkflow-engine, next to a victim directory."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
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
