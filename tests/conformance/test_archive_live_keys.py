"""Restore beside live runs: an archived run never takes over what a live run now holds (its idempotency key)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conformance.test_archive import archived_backend, folder, purge, scenario  # noqa: F401 - fixtures
from tests.harness.base import Harness
from tests.scenario import Scenario
from workflow_retention.archive import open_archive
from workflow_retention.exceptions import RetentionError


def test_a_restored_run_never_takes_the_idempotency_key_a_live_run_now_holds(
        archived_backend: Harness, scenario: Scenario, folder: Any) -> None:  # noqa: F811
    from pyworkflow.storage.schemas import RunStatus, WorkflowRun

    h = archived_backend
    pw = h.pyworkflow()
    victim, key = next((r, run.idempotency_key) for r in sorted(scenario.deleted)
                       if (run := h.run(pw.get_run(r))) is not None and run.idempotency_key and not run.parent_run_id)
    store = open_archive(f"file://{folder}")
    purge(h, store)
    assert h.run(pw.get_run(victim)) is None
    now = datetime.now(UTC)
    h.run(pw.create_run(WorkflowRun(run_id="run_newcomer", workflow_name="conformance", status=RunStatus.RUNNING,
                                    created_at=now, updated_at=now, idempotency_key=key)))
    try:
        report = h.retention().restore(store, [victim])
    except RetentionError:
        report = None  # refused loudly: fine
    found = h.run(pw.get_run_by_idempotency_key(key))
    assert found is not None and found.run_id == "run_newcomer", f"the key now names {found and found.run_id}"
    if report is not None and victim in report.written:
        pytest.fail("restored a run whose idempotency key a live run holds")  # two runs with one key


def test_a_line_holding_another_runs_records_never_writes_into_that_run(
        archived_backend: Harness, scenario: Scenario, folder: Any) -> None:  # noqa: F811
    """A line (in a purge folder without a manifest, as a crash leaves, read unverified) for a run never
    archived, holding the records of a live run: refused, the live run unchanged, nothing of the line written."""
    import json

    from pyworkflow.storage.schemas import RunStatus

    from tests.conformance.checks import snapshot
    from workflow_retention.archive import decode_lines, encode_lines

    h = archived_backend
    pw = h.pyworkflow()
    store = open_archive(f"file://{folder}")
    purge(h, store)
    lines = {line["run_id"]: line for obj in sorted(folder.rglob("batch-*.jsonl.gz"))
             for line in decode_lines(obj.read_bytes()) if not line.get("part")}
    roots = sorted(r for r, line in lines.items() if not line.get("parent_run_id") and r in scenario.deleted)
    live, template = roots[0], roots[1]
    h.retention().restore(store, [live])  # live again, and the engine changes it
    h.run(pw.update_run_status(live, RunStatus.FAILED))
    before = snapshot(h.inventory())
    forged = json.loads(json.dumps(lines[template]).replace(template, "run_forged_x"))
    for kind, records in lines[live]["records"].items():  # its events, steps, hooks...: not its record, nor its key
        if kind in ("workflow_runs", "runs_by_idempotency_key", "steps_by_id", "hooks_by_id", "hooks_by_token",
                    "runs", "_runs", "_idempotency_index"):
            continue
        forged["records"].setdefault(kind, []).extend(r for r in records if "GSI3PK" not in json.dumps(r))
    forged["archived_at"] = "9999-01-01T00:00:00+00:00"
    store.put_new("purges/9999-01-01-forged/batch-000001.jsonl.gz", encode_lines([forged]))
    try:
        report = h.retention().restore(store, ["run_forged_x"])
    except RetentionError:
        report = None
    assert report is None or "run_forged_x" not in report.written
    assert snapshot(h.inventory()) == before
