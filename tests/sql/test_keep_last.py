"""keep_last on SQL (issue 21): an unreadable created_at never takes the place of a readable run."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from tests.ops.test_policy_cli import RUNS, seed_runs
from workflow_retention.backends import by_url
from workflow_retention.planning import Expiry
from workflow_retention.policy import parse_policy

POLICY = parse_policy({"retention": {"default": "1d", "keep_last": 2}})


def test_an_unreadable_created_at_does_not_displace_a_readable_run_in_keep_last(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    url = f"sqlite://{path}"
    by_url(url).seed(seed_runs())
    with sqlite3.connect(path) as db:  # as text it sorts after every timestamp: ranked newest by the server
        db.execute("UPDATE workflow_runs SET created_at = 'garbage' WHERE run_id = 'run_orders_pinned'")
    backend = by_url(url)
    with backend:
        assert backend._newest_runs(set(), 2)["orders"] == ["run_orders_new", "run_orders_old"]
        report = backend.delete_old_runs(Expiry(POLICY, datetime.now(UTC)))
        left = set(backend._read_runs(set(RUNS)))
    # orders: the two newest readable runs stay, the unreadable one is left alone (reported), the failed goes
    assert {"run_orders_new", "run_orders_old", "run_orders_pinned"} <= left
    assert "run_orders_failed" not in left
    assert report.skipped == 1
