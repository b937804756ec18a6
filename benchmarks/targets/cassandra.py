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

The floor (:func:`floor`) is the least work the server can do for the same
result: before the clock (``setup_in_child``) every table pyworkflow writes
is scanned for the full primary key of each row and the run it names; inside
the clock the deletable runs are picked from those rows in memory (terminal,
``updated_at`` before the cutoff, no surviving descendant: the same plan our
purge applies, through :mod:`workflow_retention.planning`), and every row of
every table that names one of them (its record, events, steps, hooks, flag,
checkpoints by the longest run-id prefix, idempotency, step, hook and token
lookups, status, workflow and parent listing rows) is deleted with one
prepared single-row ``DELETE`` by full primary key, ``execute_concurrent`` at
``FLOOR_CONCURRENCY`` in flight. No reads, checks, markers, counts or
timestamps: what ``extra`` counts afterwards must equal what our purge leaves.

``BENCH_CASSANDRA_FLOOR=batched`` (read in the child) makes the floor
stricter, for reference: the same rows, but each run's ``events``, ``steps``
and ``hooks`` rows go with one partition delete each, and the deletes travel
in UNLOGGED batches of 32 statements, as our purge sends its own. The default
(``rows``) is the floor of issue 17. Each floor row names its method (``floor_method``).

``server_cpu_s``: CPU seconds the Cassandra server process (the ``java``
whose ``cassandra.yaml`` has this ``native_transport_port``) spent between
the clock's start and stop, read from ``/proc`` inside the measuring child.

For every slot cassandra-driver is imported before the clock (a fixed
per-process cost, about 0.2 s, that is no part of a purge); each slot
connects inside it.

The baseline is pyworkflow-engine 0.4.0's own ``delete_old_runs`` on its own
``CassandraStorageBackend``, handed a connected protocol-v3 session (as
shipped it cannot connect to 2.1: protocol v4 and an unquoted ``token`` in its
DDL). The server rejects its discovery query, so it deletes nothing; the row
records the error.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import re
import sys
import time
import uuid
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.data import seed_store
from benchmarks.procs import command_lines
from workflow_retention.backends.cassandra import CassandraBackend
from workflow_retention.backends.cassandra.layout import RUN_COLUMNS, SOURCES, TABLES, ms, timestamp_columns
from workflow_retention.backends.cassandra.runs import run_ref
from workflow_retention.exceptions import StorageError
from workflow_retention.planning import RunRef, key_owners, key_prefixes, plan_deletion

_SERVER: dict[str, Any] = {}
_ROWS_BEFORE: dict[str, dict[str, int]] = {}
#: The floor's rows, gathered before the clock: url -> (runs, table -> [(primary key values, owner run_id)]).
_FLOOR_ROWS: dict[str, tuple[list[Any], dict[str, list[tuple[tuple[Any, ...], str]]]]] = {}
#: Deletes in flight for the floor (our purge's default ``concurrency`` is 64; the floor is as fast at 64-256).
FLOOR_CONCURRENCY = 64
#: The stricter floor (``BENCH_CASSANDRA_FLOOR=batched``): statements per UNLOGGED batch, tables deleted by partition.
FLOOR_BATCH = 32
PARTITIONED = ("events", "steps", "hooks")


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


#: Requests in flight while seeding (not measured): fewer than the purge's 64, so that a server shared with
#: other work does not time out writes (seen at N = 10,000 with the load average above 5).
SEED_CONCURRENCY = 16


def _count_into(url: str, backend: Any) -> None:
    _ROWS_BEFORE[url] = _count_rows(backend)


def prepare(n: int, slot: str, now: datetime, attempts: int = 3) -> str:
    """A fresh keyspace seeded with ``bench_runs(n, now)``; a seed that fails (a write timeout on a loaded
    server) is dropped and done again in a new keyspace (event ids are TIMEUUIDs: a partial seed cannot
    be resumed)."""
    for attempt in range(attempts):
        url = _url(f"bench_{slot}_{n}_{uuid.uuid4().hex[:8]}")
        seeding = url + ("&" if "?" in url else "?") + f"concurrency={SEED_CONCURRENCY}"
        try:
            seed_store(seeding, n, now, then=functools.partial(_count_into, url))
            return url
        except StorageError as exc:
            cleanup(url)
            if attempt + 1 == attempts:
                raise
            print(f"seeding {url} failed ({str(exc)[:120]}): again", file=sys.stderr, flush=True)
            time.sleep(10)
    raise AssertionError("unreachable")


def _server_pids() -> list[int]:
    """The Cassandra server(s) listening on this target's CQL port (``java`` running CassandraDaemon)."""
    port = (os.environ.get("CASSANDRA_PORT") or "9042") if os.environ.get("CASSANDRA_CONTACT_POINTS") \
        else _address().partition("?")[0].rpartition(":")[2]
    pids = []
    prefix = "-Dcassandra.config=file://"
    for pid, args in command_lines():
        config = next((a[len(prefix):] for a in args if a.startswith(prefix)), None)
        if "org.apache.cassandra.service.CassandraDaemon" not in args or config is None:
            continue
        try:
            text = Path(config).read_text()
        except OSError:
            continue
        if re.search(rf"^native_transport_port:\s*{port}\s*$", text, re.M):
            pids.append(pid)
    return pids


def _cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            text = Path(f"/proc/{pid}/stat").read_text()
            fields = text[text.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])  # utime stime (all threads)
    return total / os.sysconf("SC_CLK_TCK")


def setup_in_child(url: str, slot: str, n: int, now: datetime) -> None:
    """Before the clock: the driver imported (every slot); for the floor, every row's key and owner read."""
    from workflow_retention.backends.cassandra.client import driver

    driver()
    if slot == "floor":
        _gather(url)
    _SERVER["pids"] = _server_pids()
    _SERVER["cpu"] = _cpu_s(_SERVER["pids"])


def extra_in_child(url: str, slot: str) -> dict[str, Any]:
    """Right after the clock: the server's CPU during the purge (absent if its process is not on this host)."""
    pids = _SERVER.get("pids")
    return {"server_cpu_s": round(_cpu_s(pids) - _SERVER["cpu"], 2)} if pids else {}


def _gather(url: str) -> None:
    backend = CassandraBackend.from_url(url)
    try:
        session = backend.cql.session
        runs = list(session.execute(session.prepare(f"SELECT {RUN_COLUMNS} FROM workflow_runs"), timeout=120))
        rows: dict[str, list[tuple[tuple[Any, ...], str]]] = {}
        for source in SOURCES:
            stamped = timestamp_columns(source.table)
            owner = source.owner or source.key[0]
            select = ", ".join(ms(c) if c in stamped else c for c in dict.fromkeys([*source.key, owner]))
            statement = session.prepare(f"SELECT {select} FROM {source.table}")
            statement.fetch_size = 5000
            rows[source.table] = [(tuple(row[:len(source.key)]), getattr(row, owner.strip('"')))
                                  for row in session.execute(statement, timeout=120)]
    finally:
        backend.close()
    _FLOOR_ROWS[url] = (runs, rows)


def _doomed(runs: list[Any], cutoff: datetime) -> set[str]:
    """The runs our purge deletes: expired and eligible, with every descendant deletable (planning's rules)."""
    refs = {ref.run_id: ref for ref in map(run_ref, runs)}
    kids: dict[str, list[RunRef]] = defaultdict(list)
    for ref in refs.values():
        if ref.parent_run_id:
            kids[ref.parent_run_id].append(ref)
    roots = [r for r in refs.values() if r.eligible(cutoff) and not (
        r.parent_run_id in refs and refs[r.parent_run_id].eligible(cutoff))]
    plan = plan_deletion(roots, lambda ids: {i: kids.get(i, []) for i in ids}, cutoff)
    return {r.run_id for r in plan.order()[0]}


def floor(url: str, cutoff: datetime) -> dict[str, Any]:
    """Every row of the deletable runs, one prepared single-row delete each, keys known before the clock."""
    from cassandra.concurrent import execute_concurrent

    runs, rows = _FLOOR_ROWS.pop(url)
    doomed = _doomed(runs, cutoff)
    existing = {r.run_id for r in runs}
    backend = CassandraBackend.from_url(url)
    try:
        session = backend.cql.session
        batched = os.environ.get("BENCH_CASSANDRA_FLOOR", "rows") == "batched"
        work: list[tuple[Any, tuple[Any, ...]]] = []
        counts: dict[str, int] = {}
        for source in SOURCES:
            key = source.key[:1] if batched and source.table in PARTITIONED else source.key
            where = " AND ".join(f"{c} = ?" for c in key)
            delete = session.prepare(f"DELETE FROM {source.table} WHERE {where}")
            if source.owner is None:  # checkpoints: <run_id>:<step_id>, owned by the longest existing prefix
                keys = [key for key, _ in rows[source.table] if key_prefixes(key[0])]
                owners = key_owners([k[0] for k in keys], existing.intersection)
                doomed_rows = [key for key in keys if owners[key[0]] in doomed]
            else:
                doomed_rows = [key for key, owner in rows[source.table] if owner in doomed]
            counts[source.table] = len(doomed_rows)
            if key is not source.key:
                doomed_rows = list(dict.fromkeys(k[:1] for k in doomed_rows))
            work += [(delete, k) for k in doomed_rows]
        delete_run = session.prepare("DELETE FROM workflow_runs WHERE run_id = ?")
        work += [(delete_run, (run_id,)) for run_id in sorted(doomed)]
        if batched:
            work = _batches(work)
        for _ in execute_concurrent(session, work, concurrency=FLOOR_CONCURRENCY, raise_on_first_error=True,
                                    results_generator=True):  # consumed: each result is dropped as it comes
            pass
    finally:
        backend.close()
    return {"runs": len(doomed), "floor_method": "batched" if batched else "rows", "counts": counts,
            "requests": len(work), "requests_per_run": round(len(work) / max(len(doomed), 1), 2)}


def _batches(work: list[tuple[Any, tuple[Any, ...]]]) -> list[tuple[Any, tuple[Any, ...]]]:
    """The floor's deletes in UNLOGGED batches of :data:`FLOOR_BATCH` statements (as our purge packs them)."""
    from cassandra.query import BatchStatement, BatchType

    out: list[tuple[Any, tuple[Any, ...]]] = []
    for start in range(0, len(work), FLOOR_BATCH):
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for statement, values in work[start:start + FLOOR_BATCH]:
            batch.add(statement, values)
        out.append((batch, ()))
    return out


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
    except Exception as exc:  # noqa: BLE001 - the server's answer is the result
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
