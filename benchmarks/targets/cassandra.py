"""Benchmark target: pyworkflow's Cassandra keyspace on a real Cassandra.

The cluster is ``CASSANDRA_CONTACT_POINTS`` (+ ``CASSANDRA_PORT``,
``CASSANDRA_PROTOCOL_VERSION``) if set, else the local Apache Cassandra 2.1.0
of the test setup (``tests.cassandra_local``), started by the runner process
on first use and stopped at its exit. Every slot gets its own keyspace,
seeded identically with ``bench_runs(n, now)``.

Besides time and memory each row reports, for our purge, ``requests`` (round
trips) and ``statements`` (CQL statements the server executed, each member of
an UNLOGGED batch counted) per purged run, next to ``rows_per_run``: the rows
the purge removed divided by the runs it removed (the physical minimum is one
delete per row; a partition delete removes many rows at once).

The baseline is pyworkflow-engine 0.4.0's own ``delete_old_runs`` on its own
``CassandraStorageBackend``, handed a connected protocol-v3 session (as
shipped it cannot connect to 2.1: protocol v4 and an unquoted ``token`` in its
DDL). The server rejects its discovery query, so it deletes nothing; the row
records the error.
"""

from __future__ import annotations

import atexit
import os
import re
import uuid
from datetime import datetime
from typing import Any

from benchmarks.data import seed_store
from workflow_retention.backends.cassandra import CassandraBackend
from workflow_retention.backends.cassandra.layout import TABLES
from workflow_retention.planning import key_owners, key_prefixes

_SERVER: dict[str, Any] = {}
_ROWS_BEFORE: dict[str, dict[str, int]] = {}


def _address() -> str:
    if os.environ.get("CASSANDRA_CONTACT_POINTS"):
        port = os.environ.get("CASSANDRA_PORT") or "9042"
        version = os.environ.get("CASSANDRA_PROTOCOL_VERSION")
        return f"{os.environ['CASSANDRA_CONTACT_POINTS']}:{port}" + (f"?protocol_version={version}" if version else "")
    if "address" not in _SERVER:
        from tests import cassandra_local

        address, stop = cassandra_local.start()
        atexit.register(stop)
        _SERVER["address"] = f"{address}?protocol_version={cassandra_local.PROTOCOL_VERSION}"
    return _SERVER["address"]


def _url(keyspace: str) -> str:
    hosts, _, query = _address().partition("?")
    return f"cassandra://{hosts}/{keyspace}" + (f"?{query}" if query else "")


def _count_rows(backend: Any) -> dict[str, int]:
    session, keyspace = backend.cql.session, backend.settings.keyspace
    counts = {}
    for table in TABLES:
        statement = session.prepare(f"SELECT * FROM {keyspace}.{table}")
        statement.fetch_size = 2000
        counts[table] = sum(1 for _ in session.execute(statement, timeout=120))
    return counts


def prepare(n: int, slot: str, now: datetime) -> str:
    url = _url(f"bench_{slot}_{n}_{uuid.uuid4().hex[:8]}")
    return seed_store(url, n, now, then=lambda backend: _ROWS_BEFORE.__setitem__(url, _count_rows(backend)))


def run_ours(url: str, cutoff: datetime, batch: int) -> dict[str, Any]:
    backend = CassandraBackend.from_url(url, batch_size=batch or None)
    try:
        report = backend.delete_old_runs(cutoff)
    finally:
        backend.close()
    runs = max(report.runs, 1)
    requests, statements = sum(backend.requests.values()), sum(backend.statements.values())
    lwt = sum(v for k, v in backend.statements.items() if k.endswith("_if"))
    return {"runs": report.runs, "held": report.held, "batches": report.batches, "counts": dict(report.counts),
            "requests": requests, "statements": statements, "requests_per_run": round(requests / runs, 2),
            "statements_per_run": round(statements / runs, 2), "lwt_per_run": round(lwt / runs, 2)}


def baseline(url: str, cutoff: datetime) -> dict[str, Any]:
    import asyncio

    from pyworkflow.storage.cassandra import CassandraStorageBackend

    backend = CassandraBackend.from_url(url)
    backend.open()
    pw = CassandraStorageBackend(contact_points=list(backend.settings.contact_points), port=backend.settings.port,
                                 keyspace=backend.settings.keyspace, replication_factor=1,
                                 protocol_version=backend.settings.protocol_version or 4)
    pw._session, pw._initialized = backend.cql.session, True  # its tables exist; its DDL cannot run on 2.1
    try:
        return {"runs": asyncio.run(pw.delete_old_runs(cutoff))}
    except Exception as exc:  # the server's answer is the result
        return {"runs": 0, "baseline_error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    finally:
        backend.close()


def extra(url: str, slot: str) -> dict[str, Any]:
    backend = CassandraBackend.from_url(url)
    try:
        left = _count_rows(backend)
        session, keyspace = backend.cql.session, backend.settings.keyspace
        runs = {row.run_id for row in session.execute(f"SELECT run_id FROM {keyspace}.workflow_runs")}
        named = 0
        for table in TABLES:
            if table in ("workflow_runs", "checkpoints") or not re.search(r"(^|, )run_id TEXT", TABLES[table]):
                continue
            named += sum(1 for row in session.execute(f"SELECT run_id FROM {keyspace}.{table}")
                         if row.run_id not in runs)
        # a checkpoint <run_id>:<step_id> belongs to the longest prefix naming a run (as the purge decides)
        keys = [row.step_run_id for row in session.execute(f"SELECT step_run_id FROM {keyspace}.checkpoints")]
        owners = key_owners([k for k in keys if key_prefixes(k)], runs.intersection)
        named += sum(1 for owner in owners.values() if owner is None)
    finally:
        backend.close()
    before = _ROWS_BEFORE.get(url, {})
    deleted = sum(before.values()) - sum(left.values())
    runs_deleted = before.get("workflow_runs", 0) - left["workflow_runs"]
    return {"rows_deleted": deleted, "rows_per_run": round(deleted / max(runs_deleted, 1), 2),
            "rows_left": sum(left.values()), "orphans_left": named}


def cleanup(url: str) -> None:
    backend = CassandraBackend.from_url(url)
    try:
        backend.cql.session.execute(f"DROP KEYSPACE IF EXISTS {backend.settings.keyspace}", timeout=120)
    finally:
        backend.close()
    _ROWS_BEFORE.pop(url, None)
