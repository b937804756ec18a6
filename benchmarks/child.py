"""One timed purge in a fresh process: ``python -m benchmarks.child TARGET SLOT URL CUTOFF BATCH N NOW``.

Slots: ``ours``; ``policy`` (ours with a policy of status and workflow rules that expires exactly the days
cutoff's runs: issue 21); ``archived`` (ours with a file archive: every batch written, read back and verified
before it is deleted); ``baseline`` (pyworkflow-engine's purge); ``floor``.

Prints one JSON line: seconds, runs, peak RSS (VmHWM, reset right before the
purge) and RSS growth during the purge, plus whatever the target adds.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)


def call_baseline(target: Any, url: str, cutoff: datetime) -> Any:
    """The target's pyworkflow purge (a coroutine is run to completion); its result."""
    result = target.baseline(url, cutoff)
    return asyncio.run(result) if asyncio.iscoroutine(result) else result


def run_measured(module_args: list[str], timeout: float | None = None) -> dict:
    """``python -m <module_args>`` in a fresh process: the dict of its ``RESULT`` line, or ``{"error": ...}``."""
    cmd = [sys.executable, "-m", *module_args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).parent.parent)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    line = next((out for out in proc.stdout.splitlines() if out.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0][:300]}"}
    return json.loads(line[len("RESULT "):])


def main(target_name: str, slot: str, url: str, cutoff_text: str, batch: str, n: str, now_text: str) -> None:
    from workflow_retention.backends import by_url

    target = importlib.import_module(f"benchmarks.targets.{target_name}")
    cutoff, now = datetime.fromisoformat(cutoff_text), datetime.fromisoformat(now_text)
    if hasattr(target, "setup_in_child"):  # in-process stores are seeded in the measuring process
        target.setup_in_child(url, slot, int(n), now)
    gc.collect()
    reset_peak()
    before = status_kb("VmRSS")
    out: dict = {"slot": slot}
    started = time.perf_counter()
    if slot == "ours":
        if hasattr(target, "run_ours"):
            out.update(target.run_ours(url, cutoff, int(batch)))
        else:
            report = by_url(url, batch_size=int(batch) or None).delete_old_runs(cutoff)
            out.update(runs=report.runs, held=report.held, batches=report.batches, counts=dict(report.counts))
    elif slot == "archived":  # ours, archiving every batch to a fresh file folder first (issue 20)
        folder = Path(tempfile.mkdtemp(prefix="wr_bench_archive_"))
        try:
            backend = by_url(url, batch_size=int(batch) or None)
            report = backend.delete_old_runs(cutoff, archive=f"file://{folder}")
            backend.close()
            out.update(runs=report.runs, held=report.held, batches=report.batches, counts=dict(report.counts),
                       archive_objects=(report.archive or {}).get("objects"),
                       archive_bytes=sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    elif slot == "policy":  # ours with a retention policy that expires exactly the runs of the days cutoff (issue 21)
        from workflow_retention.planning import Expiry
        from workflow_retention.policy import parse_policy

        days = f"{(now - cutoff).days}d"
        policy = parse_policy({"retention": {"default": days, "min": "1d", "status": {"failed": days},
                                             "workflow": {"order_*": days, "invoice_sync": days,
                                                          "billing.*": "730d"}}})
        backend = by_url(url, batch_size=int(batch) or None)
        report = backend.delete_old_runs(Expiry(policy, now))
        backend.close()
        out.update(runs=report.runs, held=report.held, batches=report.batches, counts=dict(report.counts))
    elif slot == "baseline":
        result = call_baseline(target, url, cutoff)
        if isinstance(result, int):
            out["runs"] = result
        elif isinstance(result, dict):
            out.update(result)
    elif slot == "floor":
        result = target.floor(url, cutoff)
        if isinstance(result, dict):
            out.update(result)
    else:
        raise SystemExit(f"unknown slot {slot!r}")
    out["seconds"] = round(time.perf_counter() - started, 3)
    out["peak_rss_mb"] = round(status_kb("VmHWM") / 1024, 1)
    out["rss_growth_mb"] = round((status_kb("VmHWM") - before) / 1024, 1)
    if hasattr(target, "extra_in_child"):
        out.update(target.extra_in_child(url, slot))
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
