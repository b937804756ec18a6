"""Scale-out on real Celery workers through a latency proxy (issue 18, "Measure").

``python -m benchmarks.shards TARGET --n N --shards 1 2 4 8 --delay-ms 10 [--repeat K] [--concurrency 8]``

For every shard count (and repetition; the order rotates each repetition) the target seeds a fresh store
(``prepare``: ``workflow_retention.seed.generate(N, now=NOW, seed=1)``, as ``benchmarks.run`` does; the same
data for every slot, seeded directly, not through the proxy), then:

1. a :class:`benchmarks.proxy.DelayProxy` is put in front of the store's server, adding ``--delay-ms`` to
   every client->server read; the workers reach the store only through it;
2. a real Celery worker is started as a subprocess, ``celery -A benchmarks.shards_app worker -P prefork
   -c CONCURRENCY``, on a real Redis broker and result backend (``--redis``, a database of this benchmark's
   own; a queue of this run's own), with ``PYWORKFLOW_RETENTION_STORAGE_URL`` = the proxied store,
   ``PYWORKFLOW_DATA_RETENTION_DAYS=30`` and ``PYWORKFLOW_RETENTION_SHARDS`` = the shard count (the start-up
   audit is off: it would run during the purge);
3. the clock starts, ``workflow_retention.run_retention`` is sent; with one shard its result is the purge,
   with more it is the chord's description, and the clock stops when the callback's result (the final pass
   and the merged report) is in;
4. the worker is stopped by its PID (SIGTERM, then SIGKILL), the proxy is stopped, and the purge is checked
   directly on the store: a dry run with the purge's own cutoff must find **zero** runs left to delete
   (``left``), and the target's ``extra`` counts what is left and the orphans (``orphans_left``); a row whose
   check fails says so (``error``) and gets no ratio;
5. the store is dropped.

``runs_per_s`` is the merged report's runs over the wall-clock seconds of step 3; ``x1`` is the ratio to the
one-shard row of the same repetition. ``proxy_cpu_s`` (this process: the proxy's thread), ``worker_cpu_s``
(the worker and its pool processes) and ``server_cpu_s`` (the store's server, where the target names it)
show where the CPU went; ``load`` is the 1-minute load average before and after. Results are appended to
``benchmarks/results/shards.jsonl`` and printed as a Markdown table.

The servers: the targets' own (``DYNAMODB_ENDPOINT_URL``; ``CASSANDRA_CONTACT_POINTS``, ``CASSANDRA_PORT``,
``CASSANDRA_PROTOCOL_VERSION``; else they start local ones).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from benchmarks.proxy import DelayProxy
from benchmarks.run import server_cpu
from workflow_retention.timeutil import parse_timestamp

RESULTS = Path(__file__).parent / "results"
TASK = "workflow_retention.run_retention"
COLUMNS = ("target", "n", "delay_ms", "shards", "rep", "runs", "seconds", "runs_per_s", "x1", "final_pass_s",
           "final_pass_runs", "left", "orphans_left", "retries", "proxy_reads", "proxy_cpu_s", "worker_cpu_s",
           "server_cpu_s", "load")


# -- where the proxy goes ------------------------------------------------------------------------------------


def upstream(url: str) -> tuple[str, int]:
    """The server a store URL names: DynamoDB's ``endpoint_url``, else the URL's own host and port."""
    parts = urlsplit(url)
    endpoint = parse_qs(parts.query).get("endpoint_url")
    where = urlsplit(endpoint[-1]) if endpoint else parts
    if where.hostname is None or where.port is None:
        raise ValueError(f"{url}: the server's host and port must be explicit to put a proxy in front of it")
    return where.hostname, where.port


def through(url: str, port: int) -> str:
    """``url`` with its server replaced by the proxy at ``127.0.0.1:port``."""
    host, original = upstream(url)
    old = f"{host}:{original}"
    if url.count(old) != 1:
        raise ValueError(f"{url}: cannot tell where {old} is to replace it")
    return url.replace(old, f"127.0.0.1:{port}")


# -- CPU -------------------------------------------------------------------------------------------------------


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _tree_cpu(pid: int) -> float:
    import psutil  # type: ignore[import-untyped]

    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return total


def _server_pids(target: ModuleType) -> list[int] | None:
    for name in ("server_pids", "_server_pids"):
        if hasattr(target, name):
            return list(getattr(target, name)())
    return None


# -- the worker ------------------------------------------------------------------------------------------------


class Worker:
    """``celery -A benchmarks.shards_app worker`` as a subprocess, stopped by its PID."""

    def __init__(self, env: dict[str, str], concurrency: int, queue: str, log: Path) -> None:
        self.node = f"bench-shards-{os.getpid()}-{uuid.uuid4().hex[:6]}@%h"
        self.log = log
        celery = Path(sys.executable).with_name("celery")
        command = [str(celery) if celery.exists() else sys.executable, *([] if celery.exists() else ["-m", "celery"]),
                   "-A", "benchmarks.shards_app", "worker", "-P", "prefork", "-c", str(concurrency), "-Q", queue,
                   "-n", self.node, "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
        self.handle = log.open("ab")
        self.proc = subprocess.Popen(command, env=env, stdout=self.handle, stderr=subprocess.STDOUT,
                                     cwd=Path(__file__).resolve().parents[1])
        self.pid = self.proc.pid

    def wait_ready(self, app: Any, timeout: float = 180) -> None:
        import socket

        node = self.node.replace("%h", socket.gethostname())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited ({self.proc.returncode}); see {self.log}")
            if app.control.ping(destination=[node], timeout=1.0):
                return
        raise RuntimeError(f"the worker did not answer a ping within {timeout:.0f}s; see {self.log}")

    def stop(self) -> None:
        """SIGTERM (warm shutdown), then SIGKILL to it and its pool processes, all by PID."""
        import psutil

        try:
            children = [c.pid for c in psutil.Process(self.pid).children(recursive=True)]
        except psutil.Error:
            children = []
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(30)
        for pid in children:
            try:
                if psutil.Process(pid).ppid() in (self.pid, 1):
                    os.kill(pid, signal.SIGKILL)
            except (psutil.Error, ProcessLookupError):
                pass
        self.handle.close()


# -- one purge ---------------------------------------------------------------------------------------------------


def purge_on_celery(app: Any, timeout: float) -> tuple[dict[str, Any], float]:
    """Send the retention task, wait for the purge (and, fanned out, for the chord's callback); the result and
    the wall-clock seconds."""
    from celery.result import AsyncResult

    started = time.perf_counter()
    result = app.send_task(TASK).get(timeout=timeout, propagate=True)
    if result.get("status") == "dispatched":
        result = AsyncResult(result["callback"], app=app).get(timeout=timeout, propagate=True)
    return result, time.perf_counter() - started


def verify(target: ModuleType, url: str, slot: str, cutoff: datetime) -> dict[str, Any]:
    """Directly on the store: the runs a purge with the same cutoff would still delete (must be 0), and the
    target's own count of what is left (and of orphans)."""
    from workflow_retention.backends import by_url

    with by_url(url) as backend:
        dry = backend.delete_old_runs(cutoff, dry_run=True)
    out: dict[str, Any] = {"left": dry.runs, "held_left": dry.held}
    if hasattr(target, "extra"):
        out.update(target.extra(url, slot))
    return out


def one(target_name: str, target: ModuleType, n: int, shards: int, rep: int, delay_ms: float, now: datetime,
        args: argparse.Namespace, queue: str, app: Any) -> dict[str, Any]:
    slot = f"sh{shards}"
    row: dict[str, Any] = {"target": target_name, "n": n, "delay_ms": delay_ms, "shards": shards, "rep": rep,
                           "concurrency": args.concurrency}
    seeded = time.perf_counter()
    url = target.prepare(n, slot, now)  # a seed that fails ends the benchmark: nothing to compare
    row["seed_s"] = round(time.perf_counter() - seeded, 1)
    try:
        host, port = upstream(url)
        with DelayProxy(host, port, delay_ms) as proxy:
            env = {**os.environ, "PYWORKFLOW_RETENTION_STORAGE_URL": through(url, proxy.port),
                   "PYWORKFLOW_DATA_RETENTION_DAYS": "30", "PYWORKFLOW_RETENTION_SHARDS": str(shards),
                   "PYWORKFLOW_RETENTION_STARTUP_AUDIT": "0s", "BENCH_SHARDS_REDIS": args.redis,
                   "BENCH_SHARDS_QUEUE": queue}
            if args.batch_size:
                env["PYWORKFLOW_RETENTION_BATCH_SIZE"] = str(args.batch_size)
            for name in ("PYWORKFLOW_RETENTION_LOCK_URL", "PYWORKFLOW_RETENTION_STATE_URL",
                         "PYWORKFLOW_RETENTION_PUSHGATEWAY_URL", "PYWORKFLOW_RETENTION_REPAIR_ORPHANS"):
                env.pop(name, None)
            worker = Worker(env, args.concurrency, queue, args.log)
            try:
                worker.wait_ready(app)
                pids = _server_pids(target)
                names = tuple(getattr(target, "SERVER_PROCESSES", ()))
                cpu = (_own_cpu(), _tree_cpu(worker.pid), server_cpu(names, pids) if names or pids else 0.0)
                reads, logged = proxy.reads, args.log.stat().st_size
                row["load"] = [round(os.getloadavg()[0], 2)]
                result, seconds = purge_on_celery(app, args.timeout)
                row["load"].append(round(os.getloadavg()[0], 2))
                row.update(proxy_cpu_s=round(_own_cpu() - cpu[0], 2),
                           worker_cpu_s=round(_tree_cpu(worker.pid) - cpu[1], 2),
                           proxy_reads=proxy.reads - reads, proxy_connections=proxy.connections)
                with args.log.open("rb") as fh:  # the worker's lines during this purge
                    fh.seek(logged)
                    lines = fh.read().decode(errors="replace")
                row["retries"] = lines.count("will be retried")
                if names or pids:
                    row["server_cpu_s"] = round(server_cpu(names, pids) - cpu[2], 2)
            finally:
                worker.stop()
        runs = int((result.get("counts") or {}).get("runs", 0))
        final = result.get("final_pass") or {}
        row.update(status=result.get("status"), runs=runs, held=result.get("held"), batches=result.get("batches"),
                   seconds=round(seconds, 3), report_s=result.get("duration_s"),
                   runs_per_s=round(runs / seconds, 1) if seconds else None,
                   final_pass_runs=(final.get("counts") or {}).get("runs", 0) if final else None,
                   final_pass_s=final.get("duration_s") if final else None,
                   shard_runs=[s["runs"] for s in result.get("shards", [])] or None, cutoff=result.get("cutoff"))
        row.update(verify(target, url, slot, parse_timestamp(result["cutoff"])))
        problems = [p for p in (
            f"status {row['status']}" if row["status"] != "purged" else "",
            "no run purged" if not runs else "",
            f"{row['left']} expired runs left" if row["left"] else "",
            f"{row.get('orphans_left')} orphans left" if row.get("orphans_left") else "") if p]
        if row.get("retries"):
            row["note"] = f"{row['retries']} shard retries (worker log)"

        if problems:
            row["error"] = "; ".join(problems)
    except Exception as exc:  # noqa: BLE001 - the row records it; the other slots still run
        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        target.cleanup(url)
    return row


def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    target = importlib.import_module(f"benchmarks.targets.{args.target}")
    queue = f"bench-shards-{os.getpid()}"
    os.environ["BENCH_SHARDS_REDIS"], os.environ["BENCH_SHARDS_QUEUE"] = args.redis, queue
    app = importlib.import_module("benchmarks.shards_app").app
    rows: list[dict[str, Any]] = []
    for n in args.n:
        now = datetime.now(UTC).replace(microsecond=0)
        for delay in args.delay_ms:
            for rep in range(args.repeat):
                order = args.shards[rep % len(args.shards):] + args.shards[:rep % len(args.shards)]
                for shards in order:
                    row = one(args.target, target, n, shards, rep, delay, now, args, queue, app)
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    for row in rows:  # the ratio to one shard of the same N, delay and repetition
        base = next((r for r in rows if r["shards"] == 1 and not r.get("error") and r.get("runs_per_s")
                     and (r["n"], r["delay_ms"], r["rep"]) == (row["n"], row["delay_ms"], row["rep"])), None)
        if base and row.get("runs_per_s") and not row.get("error"):
            row["x1"] = round(row["runs_per_s"] / base["runs_per_s"], 2)
            if abs(row["runs"] - base["runs"]) > max(2, base["runs"] // 200):  # more than the cutoff's drift
                row["note"] = "; ".join(x for x in (row.get("note"), f"the report counts {row['runs']} runs, one "
                                                    f"shard's {base['runs']} (both left 0)") if x)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = [*COLUMNS, "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r["n"], r["delay_ms"], r["rep"], r["shards"])):
        cells = [("-" if r.get(k) is None else "/".join(map(str, r[k])) if isinstance(r.get(k), list)
                  else str(r[k])) for k in COLUMNS]
        note = "; ".join(x for x in (r.get("error"), r.get("note")) if x)
        lines.append("| " + " | ".join(cells) + f" | {note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="a module of benchmarks/targets (dynamodb, cassandra, postgres...)")
    p.add_argument("--n", type=int, nargs="+", default=[10000], help="runs seeded per store")
    p.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--delay-ms", type=float, nargs="+", default=[10.0], help="the proxy's delay per request")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=8, help="the worker's prefork pool size")
    p.add_argument("--batch-size", type=int, default=0, help="0: the backend's default")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/13", help="broker and result backend")
    p.add_argument("--timeout", type=float, default=3600, help="per purge, seconds")
    p.add_argument("--log", type=Path, default=None, help="the workers' log (default: a file in the temp dir)")
    args = p.parse_args(argv)
    if 1 not in args.shards:
        p.error("--shards must include 1: the ratios are to one shard")
    args.log = args.log or Path(tempfile.gettempdir()) / f"bench_shards_{args.target}_{os.getpid()}.log"
    print(f"workers log to {args.log}", file=sys.stderr, flush=True)
    started = datetime.now(UTC)
    rows = bench(args)
    meta = {"command": "python -m benchmarks.shards " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": started.isoformat(timespec="seconds"), "python": platform.python_version(),
            "cpus": os.cpu_count()}
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "shards.jsonl").open("a") as fh:
        for row in rows:
            fh.write(json.dumps({**meta, **row}, default=str) + "\n")
    print(f"\n`{meta['command']}` ({meta['date']}, Python {meta['python']}, {meta['cpus']} CPUs)\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
