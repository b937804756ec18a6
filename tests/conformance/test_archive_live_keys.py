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
