"""``workflow-retention explain RUN_ID``: the answer as text and JSON, and its errors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.services import clear_retention_env
from workflow_retention import cli


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    clear_retention_env(monkeypatch)
    url = f"sqlite:///{tmp_path}/db.sqlite"
    assert cli.main(["seed", "--storage", url, "--runs", "300"]) == 0
    return url


def _one(url: str, query: str) -> str:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        return conn.execute(query).fetchone()[0]


def test_explain_says_what_would_go_and_why_not(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    old = "julianday('now') - julianday({0}.updated_at) > 60 AND {0}.status IN ('completed', 'failed', 'cancelled')"
    family = _one(store, f"SELECT p.run_id FROM workflow_runs p JOIN workflow_runs c ON c.parent_run_id = p.run_id "
                         f"WHERE p.parent_run_id IS NULL AND {old.format('p')} AND NOT EXISTS (SELECT 1 FROM "
                         f"workflow_runs k WHERE k.parent_run_id = p.run_id AND NOT ({old.format('k')})) LIMIT 1")
    assert cli.main(["explain", family, "--storage", store, "--days", "30", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["deleted"] is True and answer["counts"]["runs"] == 1 + len(answer["goes_with"]) >= 2
    live = _one(store, "SELECT run_id FROM workflow_runs WHERE status = 'running' LIMIT 1")
    assert cli.main(["explain", live, "--storage", store, "--days", "30"]) == 0
    out = capsys.readouterr().out
    assert "kept by a purge" in out and "why kept: its status is 'running'" in out


def test_explain_refuses_a_bad_cutoff(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["explain", "run_x", "--storage", store, "--older-than", "yesterday"]) == 2
    assert "--older-than" in capsys.readouterr().err
