"""Nothing is deleted unarchived, even when the engine writes between the archive and the delete (issue 20).

The archive reads a batch at its boundary, outside the delete. An event pyworkflow-engine's own storage class
appends to one of the batch's runs after that read (a write that leaves the run's status and updated_at
alone) must end either kept with its run, or in the archive: a restore gives it back. A store that cannot
check this (``Capability.ARCHIVE_RECHECK``: the file store) says so in the purge's warnings.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conformance.checks import run_ids
from tests.conformance.test_archive import (  # noqa: F401 - fixtures
    after_each_archive,
    archived_backend,
    folder,
    purge,
    scenario,
)
from tests.harness.base import Harness
from tests.scenario import Scenario
from tests.sql.live_writer import event_of
from workflow_retention.archive import open_archive
from workflow_retention.base import Capability


def records_of(h: Harness, run_id: str) -> set[tuple[str, str, str]]:
    """The run's raw records (kind, key, digest), its record included."""
    return {(i.kind, i.key, i.digest) for i in h.inventory() if i.run_id == run_id or (i.kind == "runs"
                                                                                          and i.key == run_id)}


def test_an_event_appended_after_the_archive_is_kept_or_archived(
        archived_backend: Harness, scenario: Scenario, folder: Any,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = archived_backend
    pw = h.pyworkflow()
    store = open_archive(f"file://{folder}")
    touched: dict[str, Any] = {}

    def engine_appends(ids: list[str]) -> None:
        victim = next((i for i in ids if i in scenario.deleted), None)
        if victim is not None and not touched:
            before = records_of(h, victim)
            h.run(pw.record_event(event_of(victim, "hook.received", hook_id="late")))  # before the delete
            touched[victim] = records_of(h, victim)
            assert touched[victim] != before, "the engine's write changed nothing"

    after_each_archive(monkeypatch, engine_appends)
    report = purge(h, store)
    [(victim, written)] = touched.items()
    if Capability.ARCHIVE_RECHECK not in h.retention().capabilities:  # the gap is said, not hidden
        assert any("does not re-check archived runs" in w for w in report.warnings), report.warnings
        return
    if victim in run_ids(h.inventory()):  # kept (the delete saw the write), with everything
        assert records_of(h, victim) == written
        return
    restored = h.retention().restore(store)  # its whole family (a child needs its parent)
    assert victim in restored.written, restored.to_dict()
    assert records_of(h, victim) == written, "the late event was deleted without being archived"
