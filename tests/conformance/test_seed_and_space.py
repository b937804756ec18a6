"""``seed`` into a store that holds runs, and what a store occupies (``space``), on every backend (issue 19)."""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest

from tests.harness.base import Harness
from tests.scenario import NOW
from workflow_retention import cli
from workflow_retention.cli import EXIT_OK, EXIT_USAGE, main
from workflow_retention.seed import StoreNotEmpty, generate


@pytest.fixture
def via_cli(backend: Harness, monkeypatch: pytest.MonkeyPatch) -> Harness:
    """The command line on the harness's store (whatever its URL looks like)."""
    monkeypatch.setattr(cli, "_backend", lambda args, settings: backend.retention())
    return backend


def _runs(harness: Harness) -> Counter[str]:
    return Counter(i.key for i in harness.inventory() if i.kind == "runs")


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_seed_refuses_a_store_that_holds_runs(via_cli: Harness, caplog: pytest.LogCaptureFixture) -> None:
    store = via_cli.retention()
    assert store.seed(generate(20, now=NOW, seed=42), require_empty=True) == 20
    before = sorted(via_cli.inventory())
    code = main(["seed", "--storage", "memory://unused", "--runs", "5"])
    assert code == EXIT_USAGE
    errors = _errors(caplog)
    assert len(errors) == 1, errors
    assert store.url in errors[0] and "holds 20 runs" in errors[0] and "--append" in errors[0], errors
    assert sorted(via_cli.inventory()) == before  # nothing written, nothing rewritten
    with pytest.raises(StoreNotEmpty):
        via_cli.retention().seed(generate(3, now=NOW, seed=7), require_empty=True)


def test_seed_append_adds_runs_with_fresh_ids(via_cli: Harness, caplog: pytest.LogCaptureFixture) -> None:
    via_cli.retention().seed(generate(30, now=NOW, seed=42))  # the command line's default seed: the same ids
    before = sorted(via_cli.inventory())
    assert main(["seed", "--storage", "memory://unused", "--runs", "30", "--append"]) == EXIT_OK, _errors(caplog)
    runs = _runs(via_cli)
    assert len(runs) == 60 and set(runs.values()) == {1}
    after = set(via_cli.inventory())
    assert set(before) <= after  # every record of the runs it held is there, unchanged
    assert main(["seed", "--storage", "memory://unused", "--runs", "30", "--append"]) == EXIT_OK
    assert len(_runs(via_cli)) == 90


def test_seed_into_an_empty_store_needs_no_flag(via_cli: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["seed", "--storage", "memory://unused", "--runs", "25"]) == EXIT_OK
    assert "seeded 25 runs" in capsys.readouterr().out
    assert len(_runs(via_cli)) == 25


def test_space_is_reported_or_said_to_be_unknown(backend: Harness) -> None:
    store = backend.retention()
    store.seed(generate(60, now=NOW, seed=3))
    space = store.space()
    data = json.loads(space.to_json())
    assert data["backend"] == store.url
    if not space.known:  # a store that cannot tell says why, and invents nothing
        assert space.notes and space.bytes is None and not space.tables
        assert backend.name in ("memory", "cassandra"), space.notes
        return
    assert space.bytes and space.bytes > 0 and space.tables, data
    assert all(t.bytes is None or t.bytes >= 0 for t in space.tables)
    if backend.name in ("sqlite", "postgres", "mysql"):
        names = {t.name for t in space.tables}
        assert {"workflow_runs", "events", "steps", "hooks"} <= names, names
    if backend.name == "file":
        assert {"runs/", "events/", "checkpoints/"} <= {t.name for t in space.tables}
        assert space.free_bytes == 0


def test_audit_and_purge_report_the_space(via_cli: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    via_cli.retention().seed(generate(120, now=NOW, seed=5))
    assert main(["audit", "--storage", "memory://unused", "--days", "30", "--json"]) == EXIT_OK
    audit = json.loads(capsys.readouterr().out)["space"]
    assert audit["backend"] and (audit["tables"] or audit["notes"])
    assert main(["audit", "--storage", "memory://unused", "--days", "30"]) == EXIT_OK
    text = capsys.readouterr().out
    assert "\nspace" in text
    assert main(["purge", "--storage", "memory://unused", "--days", "30", "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["runs"] > 0
    space = report["space"]
    assert space is not None and space["backend"]
    if via_cli.name == "file":  # files deleted give their bytes back at once
        assert space["freed_bytes"] > 0
    if via_cli.name == "sqlite":  # pages freed stay in the file until a vacuum
        assert space["freed_bytes"] == 0 and space["free_bytes"] > 0
    assert main(["purge", "--storage", "memory://unused", "--days", "30"]) == EXIT_OK
    assert "\nspace" in capsys.readouterr().out


def test_a_sharded_purge_reports_the_space_too(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"file://{tmp_path}/store"
    assert main(["seed", "--storage", url, "--runs", "200"]) == EXIT_OK
    capsys.readouterr()
    assert main(["purge", "--storage", url, "--days", "30", "--shards", "2", "--workers", "2", "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["runs"] > 0 and report["space"]["freed_bytes"] > 0
