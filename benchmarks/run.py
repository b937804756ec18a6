"""Our purge, the floor and pyworkflow-engine 0.4.0's ``delete_old_runs`` on identical data, in the same run.

``python -m benchmarks.run TARGET --n 2000 10000 [--slots ours baseline floor] [--repeat 3] [--batch-size 500]``

For each N the target seeds one isolated store per slot with the same
``workflow_retention.seed.generate(N, now=NOW, seed=1)`` data; each purge runs
in a fresh process (``benchmarks.child``) so that its peak RSS is its own.
With ``--repeat K`` the slots run K times, interleaved (the order rotates each
repetition), and a summary gives the same-run ratios ours/floor and
ours/baseline per repetition. A target that names its server processes
(``SERVER_PROCESSES``), or their ids (``server_pids()``, for servers that run
as a generic ``java``), gets ``server_cpu_s``: the CPU those processes spent
during the purge (``/proc``: their utime + stime, and that of their children
they reaped: a PostgreSQL backend that exits is counted by the postmaster).
Results are appended to ``benchmarks/results/<target>.jsonl`` and printed as
Markdown tables for ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks.child import run_measured
from benchmarks.data import PROFILES

RESULTS = Path(__file__).parent / "results"
COLUMNS = ("target", "n", "slot", "runs", "seconds", "runs_per_s", "peak_rss_mb", "rss_growth_mb")


def run_child(target: str, slot: str, url: str, cutoff: datetime, batch: int, n: int, now: datetime,
              timeout: float) -> dict:
    row = run_measured(["benchmarks.child", target, slot, url, cutoff.isoformat(), str(batch), str(n),
                        now.isoformat()], timeout)
    return {"slot": slot, **row}


def server_cpu(names: tuple[str, ...], pids: list[int] | None = None) -> float:
    """CPU seconds spent so far by the processes called ``names`` (or with ids ``pids``) and the children
    they reaped."""
    total, tick = 0, os.sysconf("SC_CLK_TCK")
    stats = [Path(f"/proc/{pid}/stat") for pid in pids] if pids is not None else Path("/proc").glob("[0-9]*/stat")
    for stat in stats:
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm, fields = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if pids is not None or comm in names:
            total += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return total / tick


def bench(target_name: str, sizes: list[int], slots: list[str], batch: int, timeout: float,
          max_baseline_n: int | None, repeat: int = 1) -> list[dict]:
    target = importlib.import_module(f"benchmarks.targets.{target_name}")
    servers = getattr(target, "SERVER_PROCESSES", ())
    pids = target.server_pids() if hasattr(target, "server_pids") else None  # instead of names, if given
    rows = []
    for n in sizes:
        now = datetime.now(UTC).replace(microsecond=0)
        cutoff = now - timedelta(days=30)
        for rep in range(repeat):
            for slot in slots[rep % len(slots):] + slots[:rep % len(slots)]:
                if slot == "floor" and not hasattr(target, "floor"):
                    continue
                if slot == "baseline" and max_baseline_n and n > max_baseline_n:
                    rows.append({"target": target_name, "n": n, "slot": slot, "rep": rep,
                                 "error": f"not run above N={max_baseline_n} (see notes)"})
                    continue
                seeded = time.perf_counter()
                url = target.prepare(n, slot, now)
                seed_s = round(time.perf_counter() - seeded, 1)
                try:
                    cpu = server_cpu(servers, pids) if servers or pids else 0.0
                    row = run_child(target_name, slot, url, cutoff, batch, n, now, timeout)
                    if servers or pids:
                        row["server_cpu_s"] = round(server_cpu(servers, pids) - cpu, 2)
                    if hasattr(target, "extra"):
                        row.update(target.extra(url, slot))
                finally:
                    target.cleanup(url)
                row.update(target=target_name, n=n, seed_s=seed_s, rep=rep)
                if row.get("runs") and row.get("seconds"):
                    row["runs_per_s"] = round(row["runs"] / row["seconds"], 1)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def ratios(rows: list[dict]) -> str:
    """Same-run ratios per N and repetition: ours/floor and ours/baseline, in seconds (and server CPU)."""
    lines = ["| n | rep | ours s | floor s | baseline s | ours/floor | ours/baseline | server CPU ours/floor |",
             "|---|---|---|---|---|---|---|---|"]
    keyed = {(r["n"], r.get("rep", 0), r["slot"]): r for r in rows if r.get("seconds")}
    for n, rep in sorted({(n, rep) for n, rep, _ in keyed}):
        ours, floor, base = (keyed.get((n, rep, s)) for s in ("ours", "floor", "baseline"))
        if ours is None:
            continue

        def ratio(a: dict | None, b: dict | None, key: str = "seconds") -> str:
            return f"{a[key] / b[key]:.2f}x" if a and b and a.get(key) and b.get(key) else "-"

        lines.append(f"| {n} | {rep} | {ours['seconds']} | {floor['seconds'] if floor else '-'} | "
                     f"{base['seconds'] if base else '-'} | {ratio(ours, floor)} | {ratio(ours, base)} | "
                     f"{ratio(ours, floor, 'server_cpu_s')} |")
    return "\n".join(lines)


def markdown(rows: list[dict]) -> str:
    extra_keys = sorted({k for r in rows for k in r} - set(COLUMNS) - {"counts", "seed_s", "error", "held", "batches"})
    head = list(COLUMNS) + extra_keys + ["note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r.get(k, "")) for k in COLUMNS + tuple(extra_keys)] + [r.get("error", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target")
    p.add_argument("--n", type=int, nargs="+", default=[2000, 10000])
    p.add_argument("--slots", nargs="+", default=["ours", "baseline", "floor"])
    p.add_argument("--batch-size", type=int, default=0, help="0: the backend's default")
    p.add_argument("--timeout", type=float, default=3600, help="per purge, seconds")
    p.add_argument("--max-baseline-n", type=int, help="skip the baseline above this N (say why in the notes)")
    p.add_argument("--repeat", type=int, default=1, help="run the slots this many times, interleaved")
    p.add_argument("--profile", choices=sorted(PROFILES), default="mixed", help="data set (see benchmarks/data.py)")
    args = p.parse_args(argv)
    os.environ["BENCH_PROFILE"] = args.profile  # read by the targets, here and in the child processes
    rows = bench(args.target, args.n, args.slots, args.batch_size, args.timeout, args.max_baseline_n, args.repeat)
    RESULTS.mkdir(exist_ok=True)
    meta = {"command": "python -m benchmarks.run " + " ".join(argv or sys.argv[1:]),
            "date": datetime.now(UTC).isoformat(timespec="seconds"), "python": platform.python_version(),
            "profile": args.profile,
            "cpus": os.cpu_count()}
    with (RESULTS / f"{args.target}.jsonl").open("a") as fh:
        for row in rows:
            fh.write(json.dumps({**meta, **row}) + "\n")
    print(f"\n`{meta['command']}` ({meta['date']}, Python {meta['python']}, {meta['cpus']} CPUs)\n")
    print(markdown(rows))
    print("\nSame-run ratios:\n")
    print(ratios(rows))


if __name__ == "__main__":
    main()
