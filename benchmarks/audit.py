"""``audit`` and ``orphans --dry-run`` at scale, each in a fresh process: seconds and peak RSS.

``python -m benchmarks.audit TARGET --n 2000 10000 [--profile no-holds]``

For each N the target seeds one store; then, each in its own process:

1. ``workflow-retention audit --days 30`` on the seeded store;
2. pyworkflow-engine 0.4.0's own ``delete_old_runs`` (the target's baseline),
   which leaves its orphans behind;
3. ``workflow-retention orphans --dry-run`` on what it left.

Peak RSS is the measuring process's VmHWM, reset after start-up and (for
in-process stores such as ``memory://``) after seeding, so it is the command's
own. ``--profile no-holds`` lets the baseline finish on SQL stores, where an
expired parent with a surviving child makes it fail and roll back.
Results are appended to ``benchmarks/results/audit.jsonl``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import io
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks.child import call_baseline, reset_peak, run_measured, status_kb
from benchmarks.data import PROFILES

RESULTS = Path(__file__).parent / "results"


def child(target_name: str, url: str, what: str, n: str, now_text: str) -> None:
    """In the measuring process: run ``audit`` or ``orphans`` through the CLI's own code path."""
    from workflow_retention import cli

    target = importlib.import_module(f"benchmarks.targets.{target_name}")
    now = datetime.fromisoformat(now_text)
    if hasattr(target, "setup_in_child"):  # an in-process store: seed it (and sweep it) here
        target.setup_in_child(url, "audit", int(n), now)
        if what == "orphans":
            call_baseline(target, url, now - timedelta(days=30))
    gc.collect()
    reset_peak()  # VmHWM: from here on
    args = ["audit", "--days", "30"] if what == "audit" else ["orphans", "--dry-run"]
    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = cli.main([*args, "--storage", url, "--json"])
    seconds = time.perf_counter() - started
    report = json.loads(out.getvalue()) if code == 0 else {}
    found = report["purge_preview"]["counts"].get("runs", 0) if what == "audit" else sum(report["counts"].values())
    print("RESULT " + json.dumps({"exit": code, "seconds": round(seconds, 2), "found": found,
                                  "peak_rss_mb": round(status_kb("VmHWM") / 1024, 1)}))


def measure(target_name: str, url: str, what: str, n: int, now: datetime) -> dict:
    row = run_measured(["benchmarks.audit", "--child", target_name, url, what, str(n), now.isoformat()])
    if "error" in row:
        raise SystemExit(f"{what} on {target_name} failed: {row['error']}")
    if row["exit"] != 0:
        raise SystemExit(f"{what} on {target_name} exited {row['exit']}")
    return row


def bench(target_name: str, sizes: list[int]) -> list[dict]:
    target = importlib.import_module(f"benchmarks.targets.{target_name}")
    rows = []
    for n in sizes:
        now = datetime.now(UTC).replace(microsecond=0)
        url = target.prepare(n, "audit", now)
        try:
            for what in ("audit", "orphans"):
                if what == "orphans" and not hasattr(target, "setup_in_child"):
                    call_baseline(target, url, now - timedelta(days=30))
                row = {"target": target_name, "n": n, "task": what, **measure(target_name, url, what, n, now)}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            target.cleanup(url)
    return rows


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        child(*argv[1:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target")
    p.add_argument("--n", type=int, nargs="+", default=[2000, 10000])
    p.add_argument("--profile", choices=sorted(PROFILES), default="mixed", help="data set (see benchmarks/data.py)")
    args = p.parse_args(argv)
    os.environ["BENCH_PROFILE"] = args.profile
    rows = bench(args.target, args.n)
    meta = {"command": "python -m benchmarks.audit " + " ".join(argv), "profile": args.profile,
            "date": datetime.now(UTC).isoformat(timespec="seconds"), "python": platform.python_version()}
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "audit.jsonl").open("a") as fh:
        for row in rows:
            fh.write(json.dumps({**meta, **row}) + "\n")
    print(f"\n`{meta['command']}` ({meta['date']})\n")
    print("| target | n | task | seconds | peak RSS MB | found |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {r['n']} | {r['task']} | {r['seconds']} | {r['peak_rss_mb']} | {r['found']} |")


if __name__ == "__main__":
    main()
