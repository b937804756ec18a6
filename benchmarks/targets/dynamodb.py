"""Benchmark target: a pyworkflow DynamoDB table on DynamoDB Local.

The endpoint is ``DYNAMODB_ENDPOINT_URL`` if set, else the npm package's
DynamoDB Local jar, started by the runner process on first use and stopped at
its exit (dummy credentials are set for that case only). Every slot gets its
own table, seeded identically with ``bench_runs(n, now)``.

Besides time and memory each row reports the write cost of the purge:
``write_units`` counts item writes the way DynamoDB bills them for items up to
1 KB (1 unit per put or delete, including deletes of keys that do not exist),
``wu_per_run`` divides that by the runs deleted, and ``orphans_left`` counts
items that still name a missing run. DynamoDB Local's own ``ConsumedCapacity``
figures are not used (it reports, e.g., 2.0 units for a 100-item transaction).

The ``floor`` slot is the least work the store can do for the same result: the
keys of every item ours deletes (all items of the expired, deletable runs, the
checkpoints they own, old stream items and soft-deleted schedules) are
gathered by one Scan in ``prepare`` (in the runner, so neither in the floor's
time nor in its server CPU); the timed part is one ``DeleteRequest`` per item,
BatchWriteItem x25, on 8 threads.
``server_pids`` names DynamoDB Local's ``java`` process (the one listening on
the endpoint's port), so the runner reports its CPU (``server_cpu_s``).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import tempfile
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from benchmarks.data import seed_store
from benchmarks.procs import command_lines
from workflow_retention.backends import by_url
from workflow_retention.backends.dynamodb import DynamoDBBackend

_SERVER: dict[str, Any] = {}
_DUMMY = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}
CUTOFF_DAYS = 30  # benchmarks.run's cutoff: the floor's keys are gathered for it before the clock
FLOOR_THREADS, FLOOR_BATCH = 8, 25
_FLOOR: dict[str, Any] = {}  # in the floor's process: its cutoff, runs, keys and client


def _endpoint() -> str:
    for name, value in _DUMMY.items():  # DynamoDB Local checks none; the child processes inherit them
        os.environ.setdefault(name, value)
    if os.environ.get("DYNAMODB_ENDPOINT_URL"):
        return os.environ["DYNAMODB_ENDPOINT_URL"]
    if "url" not in _SERVER:
        from tests.dynamodb.local import start_local

        _SERVER["url"], stop = start_local()
        atexit.register(stop)
    return _SERVER["url"]


def _parts(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return parts.netloc, query["region"], query["endpoint_url"]


def _backend(url: str, **options: Any) -> DynamoDBBackend:
    backend = by_url(url, **options)
    assert isinstance(backend, DynamoDBBackend)
    return backend


def run_ours(url: str, cutoff: datetime, batch: int) -> dict[str, Any]:
    backend = _backend(url, batch_size=batch or None)
    try:
        report = backend.delete_old_runs(cutoff)
        cap = backend.table.capacity
        units = cap.items_written
    finally:
        backend.close()
    return {"runs": report.runs, "held": report.held, "batches": report.batches, "counts": dict(report.counts),
            "items_deleted": sum(report.counts.values()), "write_units": units,
            "wu_per_run": round(units / max(report.runs, 1), 2), "calls": cap.calls}


async def _baseline(url: str, cutoff: datetime) -> dict[str, Any]:
    from pyworkflow.storage.dynamodb import DynamoDBStorageBackend

    table, region, endpoint = _parts(url)
    pw = DynamoDBStorageBackend(table_name=table, region=region, endpoint_url=endpoint)
    seen = {"deletes": 0, "calls": 0}

    def count(params: dict[str, Any], **_: Any) -> None:
        seen["calls"] += 1
        seen["deletes"] += sum(len(v) for v in params.get("RequestItems", {}).values())

    def call(**_: Any) -> None:
        seen["calls"] += 1

    pw._session.register("before-parameter-build.dynamodb.BatchWriteItem", count)
    pw._session.register("before-parameter-build.dynamodb.Query", call)
    runs = await pw.delete_old_runs(cutoff)
    return {"runs": runs, "write_units": seen["deletes"], "wu_per_run": round(seen["deletes"] / max(runs, 1), 2),
            "calls": seen["calls"]}


def baseline(url: str, cutoff: datetime) -> dict[str, Any]:
    for name, value in _DUMMY.items():
        os.environ.setdefault(name, value)
    return asyncio.run(_baseline(url, cutoff))


def extra(url: str, slot: str) -> dict[str, Any]:
    """Items left in the table, and how many of them name a run that no longer exists."""
    from workflow_retention.backends.dynamodb.layout import classify
    from workflow_retention.report import Kind

    backend = _backend(url)
    try:
        owners: list[str] = []
        runs: set[str] = set()
        total = 0
        for page in backend.table.scan(Limit=1000):
            for item in page:
                total += 1
                kind, owner, _ = classify(item)
                if kind == Kind.RUNS and owner is not None:
                    runs.add(owner)
                elif owner is not None:
                    owners.append(owner)
    finally:
        backend.close()
    return {"items_left": total, "orphans_left": sum(1 for o in owners if o not in runs)}


# -- the floor: keys known before the clock, one delete per item, BatchWriteItem x25 on 8 threads ------


def _client(url: str, workers: int = FLOOR_THREADS) -> Any:
    import boto3
    from botocore.config import Config

    _, region, endpoint = _parts(url)
    return boto3.session.Session().client("dynamodb", region_name=region, endpoint_url=endpoint,
                                          config=Config(max_pool_connections=workers + 4,
                                                        retries={"total_max_attempts": 1, "mode": "standard"}))


def _scan_all(url: str) -> list[dict[str, Any]]:
    """Every item of the table (consistent Scan), as the low-level client returns it."""
    table, _, _ = _parts(url)
    client = _client(url, 1)
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = client.scan(**params)
        items += page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return items
        params["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def doomed_keys(items: Iterable[dict[str, Any]], cutoff: datetime) -> tuple[int, list[dict[str, Any]]]:
    """(runs, keys) a complete purge at ``cutoff`` deletes, decided on a snapshot of the whole table.

    The same rules as ours (``workflow_retention.planning``): eligible runs go with their eligible
    descendants, a parent of a run that stays is held; each run takes its ``RUN#`` partition, hooks (by
    their ``run_id``), token items, flag and the checkpoints it owns (``key_owners``); old stream items
    and soft-deleted schedules go too.
    """
    from workflow_retention.backends.dynamodb.layout import RUN_SK, checkpoint_key, key_of, text
    from workflow_retention.backends.dynamodb.streams import old_stream_items
    from workflow_retention.planning import DELETED_SCHEDULE, RunRef, key_owners, plan_deletion
    from workflow_retention.timeutil import older

    class Quiet:
        skipped = 0

        def warn(self, message: str) -> None:
            pass

    items = list(items)
    runs: dict[str, RunRef] = {}
    kids: dict[str, list[RunRef]] = {}
    for item in items:
        pk = item["PK"]["S"]
        if pk.startswith("RUN#") and item["SK"]["S"] == RUN_SK:
            ref = RunRef.parse(pk[4:], text(item, "status"), text(item, "updated_at"), text(item, "parent_run_id"))
            runs[ref.run_id] = ref
            if ref.parent_run_id:
                kids.setdefault(ref.parent_run_id, []).append(ref)
    eligible = [r for r in runs.values() if r.eligible(cutoff)]
    roots = [r for r in eligible if not (r.parent_run_id in runs and runs[r.parent_run_id].eligible(cutoff))]
    plan = plan_deletion(roots, lambda ids: {i: kids.get(i, []) for i in ids}, cutoff)
    doomed = {r.run_id for r in plan.order()[0]}
    checkpoints = {k: i for i in items if (k := checkpoint_key(i)) is not None}
    owners = key_owners(checkpoints, lambda ids: ids & runs.keys())
    hooks = {i["PK"]["S"] for i in items if i["PK"]["S"].startswith("HOOK#") and text(i, "run_id") in doomed}
    keys = []
    for item in items:
        pk, sk = item["PK"]["S"], item["SK"]["S"]
        head, _, rest = pk.partition("#")
        if (head == "RUN" and rest in doomed or pk in hooks or head == "TOKEN" and sk in hooks
                or head == "CANCEL" and rest in doomed
                or head == "CHECKPOINT" and owners.get(rest) in doomed
                or head == "SCHEDULE" and text(item, "status") == DELETED_SCHEDULE
                and older(text(item, "updated_at"), cutoff)):
            keys.append(key_of(item))
    keys += [key_of(i) for _, i in old_stream_items(items, cutoff, Quiet())]
    return len(doomed), keys


def _floor_file(url: str) -> Path:
    return Path(tempfile.gettempdir()) / f"wr_floor_{_parts(url)[0]}.json"


def prepare(n: int, slot: str, now: datetime) -> str:
    """A table seeded with ``bench_runs(n, now)``; for the floor, also the keys it deletes (one Scan, here in
    the runner: neither its time nor its server CPU is the floor's)."""
    url = f"dynamodb://bench_{slot}_{n}_{uuid.uuid4().hex[:8]}?region=us-east-1&endpoint_url={_endpoint()}"
    seed_store(url, n, now)
    if slot == "floor":
        cutoff = now - timedelta(days=CUTOFF_DAYS)
        runs, keys = doomed_keys(_scan_all(url), cutoff)
        _floor_file(url).write_text(json.dumps({"cutoff": cutoff.isoformat(), "runs": runs, "keys": keys}))
    return url


def setup_in_child(url: str, slot: str, n: int, now: datetime) -> None:
    """For the floor only: load the keys ``prepare`` gathered, before the clock (benchmarks.child)."""
    if slot == "floor":
        _FLOOR.update(json.loads(_floor_file(url).read_text()), client=_client(url))


def floor(url: str, cutoff: datetime) -> dict[str, Any]:
    """Delete the keys gathered before the clock: BatchWriteItem x25 on 8 threads, unprocessed items retried."""
    table, _, _ = _parts(url)
    if datetime.fromisoformat(_FLOOR["cutoff"]) != cutoff:
        raise ValueError(f"the floor's keys were gathered for the cutoff {_FLOOR['cutoff']}, not {cutoff}")
    runs, keys, client = _FLOOR["runs"], _FLOOR["keys"], _FLOOR["client"]
    calls = [0]

    def write(chunk: list[dict[str, Any]]) -> None:
        request = {table: [{"DeleteRequest": {"Key": k}} for k in chunk]}
        while request:
            calls[0] += 1
            request = client.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}

    with ThreadPoolExecutor(FLOOR_THREADS) as pool:
        list(pool.map(write, [keys[i:i + FLOOR_BATCH] for i in range(0, len(keys), FLOOR_BATCH)]))
    return {"runs": runs, "items_deleted": len(keys), "write_units": len(keys),
            "wu_per_run": round(len(keys) / max(runs, 1), 2), "calls": calls[0]}


def server_pids() -> list[int]:
    """DynamoDB Local's process: the ``java`` running DynamoDBLocal.jar on the endpoint's port."""
    port = str(urlsplit(_endpoint()).port or "")
    return [pid for pid, words in command_lines()
            if any(w.endswith("DynamoDBLocal.jar") for w in words) and "-port" in words
            and words[words.index("-port") + 1:][:1] == [port]]


def cleanup(url: str) -> None:
    _floor_file(url).unlink(missing_ok=True)
    backend = _backend(url)
    try:
        backend.table.client.delete_table(TableName=backend.table_name)
    finally:
        backend.close()


# -- where a purge's time goes: ``python -m benchmarks.targets.dynamodb profile N [--workers W]`` ---------


def profile(n: int, workers: int) -> None:
    """Seed ``bench_runs(n, now)``, purge it with ours through a client that times every request, and print
    per request type: calls, seconds spent waiting and DynamoDB Local's CPU (``server_pids``) meanwhile.

    With ``--workers 1`` the requests do not overlap, so each one's server CPU is its own (other users of the
    same DynamoDB Local still count).
    """
    import threading
    import time
    from collections import defaultdict
    from datetime import UTC

    import boto3
    from botocore.config import Config

    now = datetime.now(UTC).replace(microsecond=0)
    url = prepare(n, "profile", now)
    pids = server_pids()

    def cpu() -> float:
        total = 0
        for pid in pids:
            text = Path(f"/proc/{pid}/stat").read_text()
            fields = text[text.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    stats: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    lock = threading.Lock()
    table, region, endpoint = _parts(url)
    real = boto3.client("dynamodb", endpoint_url=endpoint, region_name=region,
                        config=Config(retries={"total_max_attempts": 1, "mode": "standard"},
                                      max_pool_connections=workers + 4))

    def what(op: str, params: dict[str, Any]) -> str:
        if op == "execute_statement":
            return f"{op} {params['Statement'].split(' WHERE ')[0].split(' FROM ')[-1].replace(table, 'T')}"
        if op == "query":
            values = list(params.get("ExpressionAttributeValues", {}).values())
            return f"{op} {params.get('IndexName') or 'table'} {values[0]['S'].split('#')[0] if values else ''}"
        if op == "batch_write_item":
            request = next(iter(params["RequestItems"].values()))[0]
            kind = next(iter(request))
            body = request[kind].get("Key") or request[kind].get("Item")
            return f"{op} {kind} {'markers' if body['PK']['S'].startswith('RETENTION#') else 'items'}"
        return op

    class Timed:
        def __init__(self) -> None:
            self.meta, self.exceptions = real.meta, real.exceptions

        def __getattr__(self, op: str) -> Any:
            fn = getattr(real, op)
            if not callable(fn):
                return fn

            def call(**params: Any) -> Any:
                started, server = time.perf_counter(), cpu()
                try:
                    return fn(**params)
                finally:
                    with lock:
                        row = stats[what(op, params)]
                        row[0] += 1
                        row[1] += time.perf_counter() - started
                        row[2] += cpu() - server
            return call

    backend = DynamoDBBackend(table, region=region, endpoint_url=endpoint, client=Timed(), workers=workers)
    started, client_cpu, server = time.perf_counter(), time.process_time(), cpu()
    try:
        report = backend.delete_old_runs(now - timedelta(days=CUTOFF_DAYS))
        print(f"N={n} workers={workers}: {report.runs} runs in {time.perf_counter() - started:.2f}s, client CPU "
              f"{time.process_time() - client_cpu:.2f}s, server CPU {cpu() - server:.2f}s")
        print("| requests | request | seconds waited | server CPU s |\n|---|---|---|---|")
        for name, (calls, waited, spent) in sorted(stats.items(), key=lambda kv: -kv[1][2]):
            print(f"| {calls:.0f} | {name} | {waited:.2f} | {spent:.2f} |")
    finally:
        backend.close()
        cleanup(url)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Where a DynamoDB purge's time goes (see profile()).")
    parser.add_argument("command", choices=["profile"])
    parser.add_argument("n", type=int)
    parser.add_argument("--workers", type=int, default=8)
    arguments = parser.parse_args()
    profile(arguments.n, arguments.workers)
