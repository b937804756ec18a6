"""Memory bounded by the batch, and work linear in the store, on DynamoDB Local."""

from __future__ import annotations

import tracemalloc
from datetime import timedelta

from tests.harness.dynamodb import DynamoDBHarness
from tests.scenario import NOW
from tests.services import Service
from workflow_retention.seed import generate


def purge_profile(service: Service, n: int) -> dict[str, float]:
    """Seed ``n`` runs into a fresh table, purge with batches of 50, Scan pages of 100 items and the Scan's
    join over 100 items (so that both stores fill every page and every join: with 1,000-item pages, or a
    600-item join, the smaller store's are partly empty, and the peak grew with N until they filled); peak
    traced memory and calls per run."""
    from workflow_retention.backends.dynamodb import purge

    h = DynamoDBHarness(service.url)
    purge.SCAN_PAGE, page = 100, purge.SCAN_PAGE
    purge.JOIN_ITEMS, join = 100, purge.JOIN_ITEMS
    try:
        h.retention(batch_size=500).seed(generate(n, now=NOW, seed=3))
        backend = h.retention(batch_size=50)
        backend.open()
        tracemalloc.start()
        try:
            report = backend.delete_old_runs(NOW - timedelta(days=30))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return {"runs": report.runs, "peak": peak, "calls_per_run": backend.table.capacity.calls / report.runs}
    finally:
        purge.SCAN_PAGE, purge.JOIN_ITEMS = page, join
        h.close()


def test_memory_is_flat_and_calls_linear_as_the_store_grows(dynamodb_service: Service) -> None:
    small, large = purge_profile(dynamodb_service, 120), purge_profile(dynamodb_service, 480)
    assert large["runs"] > 3.5 * small["runs"]
    assert large["peak"] < 1.5 * small["peak"], (small, large)
    assert large["calls_per_run"] < 1.25 * small["calls_per_run"], (small, large)
