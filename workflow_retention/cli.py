"""The workflow-retention command: purge, check, seed, orphans, audit, metrics, status."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from workflow_retention import config, metrics, rules, status, values
from workflow_retention.archive import ArchiveStore, open_archive
from workflow_retention.backends import by_url
from workflow_retention.base import MAX_SHARDS, BatchInfo, Shard, StorageBackend, validate_shards
from workflow_retention.exceptions import ConfigurationError, RetentionError, StorageError
from workflow_retention.history import History, fill_snapshot, record_run
from workflow_retention.lock import open_lease
from workflow_retention.planning import Expiry
from workflow_retention.policy import Policy
from workflow_retention.report import AuditReport, OrphanReport, PurgeReport, SpaceReport
from workflow_retention.seed import StoreNotEmpty, fresh_salt, generate
from workflow_retention.shards import ShardedPurge, purge_sharded
from workflow_retention.timeutil import utcnow
from workflow_retention.urls import redact_url, remove_secrets

log = logging.getLogger("workflow_retention.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3


def _argument(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` from a :mod:`workflow_retention.values` parser: a bad value exits 2 with its message."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ConfigurationError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


_positive_days = _argument(lambda text: config.parse_retention_days(text, "--days"))
_runs = _argument(lambda text: values.integer(text, "--runs", minimum=0, maximum=10_000_000, example=1000))
_seed = _argument(lambda text: values.integer(text, "--seed", minimum=0, maximum=2**31 - 1, example=42))
_age_days = _argument(lambda text: values.number(text, "--max-age-days", maximum=values.MAX_DAYS, example="120"))
_max_age = _argument(lambda text: values.duration(text, "--max-age", minimum=timedelta(seconds=1)))
_shards = _argument(lambda text: validate_shards(text, "--shards"))
#: The most processes ``purge --workers`` starts.
MAX_WORKERS = 256
_workers = _argument(lambda text: values.integer(text, "--workers", maximum=MAX_WORKERS, example=4))


DESCRIPTION = ("Delete expired PyWorkflow runs with everything that belongs to them (purge), repair what "
               "earlier purges left behind (orphans), and show what a store holds (audit, check).")


def _parser() -> argparse.ArgumentParser:
    from workflow_retention import __version__

    p = argparse.ArgumentParser(prog="workflow-retention", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level, tracebacks on error")
    # -v is accepted after the subcommand too; SUPPRESS keeps a subparser from resetting the main one's value.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="log progress at INFO level, tracebacks on error")
    sub = p.add_subparsers(dest="command", required=True)
    add_parser = sub.add_parser
    sub.add_parser = lambda name, **kw: add_parser(name, parents=[verbose], **kw)  # type: ignore[method-assign]

    def storage(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--storage", metavar="URL", help=f"storage URL; default: ${config.STORAGE_URL} or "
                                                           "PyWorkflow's PYWORKFLOW_STORAGE_* variables")
        sp.add_argument("--batch-size", help=f"runs per batch, 1 to 10000 (default: ${config.BATCH_SIZE} or the "
                                             "backend's)")

    purge = sub.add_parser("purge", help="delete terminal runs older than the cutoff")
    storage(purge)
    when = purge.add_mutually_exclusive_group()
    when.add_argument("--days", type=_positive_days, help=f"cutoff = now - N days (default: ${config.RETENTION_DAYS})")
    when.add_argument("--older-than", metavar="ISO8601", help="explicit cutoff, with a UTC offset")
    purge.add_argument("--allow-recent-cutoff", action="store_true",
                       help=f"allow a cutoff newer than ${config.MIN_AGE} (default 1h) ago: runs that finished "
                            "minutes ago would be deleted")
    purge.add_argument("--dry-run", action="store_true", help="count what would go; change nothing")
    purge.add_argument("--no-pins", action="store_true",
                       help="purge by the policy although no state store is configured, so no pin or legal hold is "
                            "read (without it such a purge is refused)")
    purge.add_argument("--json", action="store_true", help="print the report as JSON")
    purge.add_argument("--shards", type=_shards, default=1,
                       help="split the store into N shards purged side by side, then a final whole-store pass "
                            f"(1 to {MAX_SHARDS}; default 1; backends that cannot be split purge as one)")
    purge.add_argument("--workers", type=_workers, default=None,
                       help=f"processes purging shards at once (1 to {MAX_WORKERS}; default: one per shard)")
    purge.add_argument("--vacuum", action="store_true",
                       help="SQLite: after the purge, give the free pages back to the file system (PRAGMA "
                            "incremental_vacuum when auto_vacuum=INCREMENTAL, else a full VACUUM, which rewrites the "
                            "file and holds the write lock until done)")

    purge.add_argument("--archive", metavar="URL",
                       help=f"archive every batch there, verified, before deleting it (default: ${config.ARCHIVE_URL}; "
                            "file:///dir or s3://bucket/prefix; see docs/archive.md)")

    restore = sub.add_parser("restore", help="write archived runs back into the store, refusing runs that exist")
    restore.add_argument("--storage", metavar="URL", help=f"storage URL; default: ${config.STORAGE_URL} or "
                                                          "PyWorkflow's PYWORKFLOW_STORAGE_* variables")
    restore.add_argument("--batch-size", help="runs per existence check, 1 to 10000")
    restore.add_argument("--archive", metavar="URL", help=f"the archive (default: ${config.ARCHIVE_URL})")
    which = restore.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", metavar="RUN_ID", action="append", dest="runs", help="a run to restore (repeatable)")
    which.add_argument("--all", action="store_true", help="every run in the archive")
    restore.add_argument("--json", action="store_true", help="print what was written and refused as JSON")

    archive_ = sub.add_parser("archive", help="list the purges in an archive (ls) and the runs of one (show)")
    archive_.add_argument("--archive", metavar="URL", help=f"the archive (default: ${config.ARCHIVE_URL})")
    archive_.add_argument("action", choices=("ls", "show"), help="ls: the purges; show PURGE: its runs")
    archive_.add_argument("purge", nargs="?", metavar="PURGE", help="for show: a purge folder or id (from ls)")
    archive_.add_argument("--json", action="store_true", help="print as JSON")

    check = sub.add_parser("check", help="validate the configuration and the connection")
    storage(check)

    seed = sub.add_parser("seed", help="write a realistic sample store in the PyWorkflow layout")
    storage(seed)
    seed.add_argument("--runs", type=_runs, default=1000, help="number of runs (default 1000)")
    seed.add_argument("--seed", type=_seed, default=42, help="random seed (default 42)")
    seed.add_argument("--max-age-days", type=_age_days, default=120.0, help="ages spread over this many days")
    seed.add_argument("--append", action="store_true",
                      help="add the sample runs to a store that already holds runs (with fresh ids; without it, "
                           "seed refuses such a store)")

    orphans = sub.add_parser("orphans", help="find and delete data whose run record is gone")
    storage(orphans)
    orphans.add_argument("--dry-run", action="store_true", help="count orphans; change nothing")
    orphans.add_argument("--grace", default="1h", help="leave data younger than this alone (default 1h)")
    orphans.add_argument("--json", action="store_true", help="print the report as JSON")

    audit = sub.add_parser("audit", help="show what the store holds and what a purge would delete")
    storage(audit)
    audit.add_argument("--days", type=_positive_days,
                       help=f"preview a purge with this cutoff (default: ${config.RETENTION_DAYS})")
    audit.add_argument("--grace", default="1h", help="orphan grace period (default 1h)")
    audit.add_argument("--json", action="store_true", help="print the report as JSON")

    metrics_ = sub.add_parser("metrics", help="print Prometheus metrics (text format) for a textfile collector")
    storage(metrics_)
    metrics_.add_argument("--days", type=_positive_days,
                          help=f"count the runs a purge with this cutoff would delete (default: "
                               f"${config.RETENTION_DAYS})")
    metrics_.add_argument("--grace", default="1h", help="orphan grace period (default 1h)")

    status_ = sub.add_parser("status", help="last runs, last success, next run, lease holder; exit 1 when the last "
                                            "success is older than --max-age")
    status_.add_argument("--storage", metavar="URL", help=f"storage URL; default: ${config.STORAGE_URL} or "
                                                          "PyWorkflow's PYWORKFLOW_STORAGE_* variables")
    status_.add_argument("--max-age", type=_max_age, default=timedelta(days=2),
                         help="unhealthy (exit 1) when the last successful purge is older than this (default 2d)")
    status_.add_argument("--json", action="store_true", help="print the status as JSON")

    explain = sub.add_parser("explain", help="would a purge delete this run now, and if not, why not")
    explain.add_argument("run_id", metavar="RUN_ID", help="the run to explain")
    storage(explain)
    when = explain.add_mutually_exclusive_group()
    when.add_argument("--days", type=_positive_days, help=f"cutoff = now - N days (default: ${config.RETENTION_DAYS})")
    when.add_argument("--older-than", metavar="ISO8601", help="explicit cutoff, with a UTC offset")
    explain.add_argument("--allow-recent-cutoff", action="store_true", help="as for purge")
    explain.add_argument("--json", action="store_true", help="print the explanation as JSON")

    pin = sub.add_parser("pin", help="pins and legal holds: runs (and workflow name patterns) no purge deletes")
    pin.add_argument("action", choices=("add", "rm", "ls"), help="add or rm pins, or ls them")
    pin.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="runs to pin or unpin")
    pin.add_argument("--workflow", metavar="PATTERN", action="append", default=[],
                     help="a workflow name or glob to pin or unpin (repeatable): every run of it is kept")
    pin.add_argument("--reason", default="", help="why (required for add): an investigation, a legal hold, a ticket")
    pin.add_argument("--storage", metavar="URL", help=f"the store the pins belong to; default: ${config.STORAGE_URL} "
                                                      "or PyWorkflow's PYWORKFLOW_STORAGE_* variables")
    pin.add_argument("--json", action="store_true", help="ls: print as JSON")

    policy_ = sub.add_parser("policy", help=f"show the retention policy (${config.POLICY}) or accept a shorter one")
    policy_.add_argument("action", choices=("show", "accept"),
                         help="show: the policy, the one last applied, what is held back; accept: let the Celery "
                              "task apply a policy that deletes sooner than the last one applied")
    policy_.add_argument("--storage", metavar="URL", help="the store (default as for purge)")
    policy_.add_argument("--json", action="store_true", help="show: print as JSON")
    return p


class Progress:
    """Progress of a long phase on stderr, from a background thread, so a phase that reports nothing still shows.

    On a terminal: one status line redrawn in place (a bar when the total is known, as ``seed``'s), at most
    five times a second. Otherwise (a pipe, a log file, cron): a plain line every ``interval`` seconds
    (default 5), the first after ``interval``; nothing at all for a command done sooner. Each line says what
    the command is doing, the batches and records so far (read from the live report, so a file store's
    cascade, which deletes between batch boundaries, counts up), and the time since it started. Use it as a
    context manager (the thread runs inside); ``on_batch`` callbacks call it, ``on_progress`` ones
    :meth:`tick`, ``seed`` :meth:`count`.
    """

    #: The terminal stream a progress line is drawn on now (None: none), for the log handler to erase it first.
    drawn_on: Any = None

    def __init__(self, label: str, stream: Any = None, *, interval: float | None = None, total: int | None = None,
                 unit: str = "") -> None:
        self.label, self.stream = label, stream or sys.stderr
        self.tty = _isatty(self.stream)
        self.interval = interval if interval is not None else (TTY_INTERVAL if self.tty else LINE_INTERVAL)
        self.total, self.unit = total, unit
        self.started = self.last = time.monotonic()
        self.text = "starting"
        self.report: PurgeReport | OrphanReport | None = None
        self.batch = 0
        self.done: int | None = 0 if total is not None else None
        self._records = 0
        self._drawn = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        self._thread = threading.Thread(target=self._beat, name=f"progress-{self.label}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self._drawn:  # leave the terminal's cursor on a fresh line
                print("\r\x1b[K", end="", file=self.stream, flush=True)
                self._drawn = False
                Progress.drawn_on = None

    def __call__(self, info: BatchInfo) -> None:
        """``on_batch``: the batch number and the live report (whose counts keep growing between batches)."""
        self.report, self.batch, self.text = info.report, info.index, ""
        self._show()

    def tick(self, text: str) -> None:
        """What the command is doing now (a phase, a count): shown at the next line."""
        self.report, self.text = None, text
        self._show()

    def count(self, done: int) -> None:
        """``done`` of :attr:`total` (``seed``'s runs written)."""
        self.done, self.text = done, ""
        self._show()

    def line(self, now: float | None = None) -> str:
        elapsed = (time.monotonic() if now is None else now) - self.started
        if self.done is not None:
            what = f"{self.done:,}" + (f" of {self.total:,}" if self.total else "") + f" {self.unit}".rstrip()
            if self.total:
                share = min(self.done / self.total, 1.0)
                what += f" ({share:.0%})"
                if self.tty:
                    filled = round(share * BAR_WIDTH)
                    what = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {what}"
        elif self.report is not None:
            what = f"batch {self.batch}, {self._live_records():,} records so far"
        else:
            what = self.text
        return f"{self.label}: {what} ({elapsed:.0f}s)"

    def _live_records(self) -> int:
        report = self.report
        if report is not None:
            try:  # another thread may add a kind meanwhile: keep the last figure then
                self._records = sum(list(report.counts.values()))
            except RuntimeError:
                pass
        return self._records

    def _show(self) -> None:
        with self._lock:  # the command's thread and the heartbeat's
            now = time.monotonic()
            if now - self.last < self.interval:
                return
            self.last = now
            if self.tty:
                print(f"\r{self.line(now)}\x1b[K", end="", file=self.stream, flush=True)
                self._drawn = True
                Progress.drawn_on = self.stream
            else:
                print(self.line(now), file=self.stream, flush=True)

    def _beat(self) -> None:
        while not self._stop.wait(min(self.interval, 1.0) / 2):
            self._show()


#: Progress lines: every 5 s when stderr is not a terminal; on a terminal the status line is redrawn 5 times a second.
LINE_INTERVAL = 5.0
TTY_INTERVAL = 0.2
BAR_WIDTH = 24


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _backend(args: argparse.Namespace, settings: config.Settings) -> StorageBackend:
    url = args.storage or settings.require_storage_url()
    return by_url(url, batch_size=settings.batch_size if args.batch_size is None else args.batch_size)


def _table(title: str, rows: Sequence[tuple[str, Any]]) -> str:
    width = max([len(k) for k, _ in rows] + [10])
    lines = [title] + [f"  {k:<{width}}  {v:>14,}" if isinstance(v, int) else f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def format_purge(r: PurgeReport, sharded: ShardedPurge | None = None) -> str:
    """The report as tables; a sharded purge adds its shards, their runs and the final pass."""
    head = [("cutoff", r.cutoff.isoformat() if r.cutoff else "-"),
            ("runs" + (" (would delete)" if r.dry_run else " deleted"), r.runs),
            ("held (child survives)", r.held), ("changed (kept)", r.changed), ("skipped (invalid)", r.skipped)]
    kinds = [(k, n) for k, n in sorted(r.counts.items()) if k != "runs"]
    text = _table(f"purge {r.backend}{'  [DRY RUN]' if r.dry_run else ''}", head)
    text += "\n" + _table("data" + (" that would go" if r.dry_run else " deleted"), kinds or [("(nothing)", 0)])
    text += f"\n  batches {r.batches}, {r.duration_s:.2f}s"
    if sharded is not None and len(sharded.shards) > 1:
        parts = [(f"shard {s.label}", sharded.parts[s.index].runs if s.index in sharded.parts
                  else f"FAILED: {sharded.failures.get(s.index)}") for s in sharded.shards]
        parts.append(("final pass", sharded.final.runs if sharded.final is not None else "(not run)"))
        text += "\n" + _table(f"runs per shard ({len(sharded.shards)} shards)", parts)
    if r.rules:
        text += "\n" + _table("runs by rule" + (" (would delete)" if r.dry_run else " (deleted)"),
                               list(r.rules.items()))
    if r.archive:
        a = r.archive
        text += (f"\n  archived {a['runs']:,} run(s) in {a['objects']} object(s) to {a['url']} (purge {a['purge_id']}"
                 f"; {a['already_archived']} already archived, {a['superseded']} superseded)")
    if r.stopped:
        text += f"\n  STOPPED: {r.stopped}"
    if r.space is not None:
        text += "\n" + format_space(r.space, per_table=False)
    return text + _warnings(r.warnings, r.warnings_total)


def _bytes(n: int | None) -> str:
    return "?" if n is None else f"{n:,} B"


#: ``audit``'s space columns: (heading, TableSpace field).
SPACE_COLUMNS = (("bytes", "bytes"), ("index bytes", "index_bytes"), ("free", "free_bytes"), ("rows", "rows"),
                 ("dead rows", "dead_rows"))


def format_space(sp: SpaceReport, *, per_table: bool = True) -> str:
    """What the store occupies: the totals, what a purge gave back, per table (``audit``), and the notes."""
    title = "space" + (" (estimates)" if sp.approximate else "")
    if not sp.known:
        return f"{title}: unknown" + "".join(f"\n  {n}" for n in sp.notes)
    rows: list[tuple[str, Any]] = [("store occupies", _bytes(sp.bytes))]
    if sp.free_bytes:
        rows.append(("free inside the store", f"{_bytes(sp.free_bytes)} (reused by new data, not returned)"))
    if sp.freed_bytes is not None:
        rows.append(("returned by this purge", _bytes(sp.freed_bytes)))
    if sp.vacuum:
        rows.append(("vacuum", sp.vacuum))
    text = _table(title, rows)
    if per_table and sp.tables:
        # Only the columns this store fills: a file store has no indexes, only PostgreSQL has dead rows.
        columns = [(head, field) for head, field in SPACE_COLUMNS
                   if any(getattr(t, field) is not None for t in sp.tables)]
        width = max(len(t.name) for t in sp.tables) + 2
        files = any(t.name.endswith("/") for t in sp.tables)  # a file store: directories of files
        lines = [f"  {'per directory' if files else 'per table':<{width}}"
                 + "".join(f"{'files' if files and head == 'rows' else head:>14}" for head, _ in columns)]
        for t in sp.tables:
            cells = [getattr(t, field) for _, field in columns]
            lines.append(f"  {t.name:<{width}}" + "".join(f"{'-' if c is None else f'{c:,}':>14}" for c in cells))
        text += "\n" + "\n".join(lines)
    return text + "".join(f"\n  note: {n}" for n in sp.notes)


def format_orphans(r: OrphanReport) -> str:
    rows = [(k, n) for k, n in sorted(r.counts.items())] or [("(none)", 0)]
    verb = "found" if r.dry_run else "deleted"
    dry = "  [DRY RUN]" if r.dry_run else ""
    text = _table(f"orphans {verb} in {r.backend}{dry} (grace {values.human(timedelta(seconds=r.grace_s))})", rows)
    size = f"{r.bytes:,} bytes{' (estimate)' if r.bytes_estimated else ''}"
    text += f"\n  total {r.total:,}, {size} {'reclaimable' if r.dry_run else 'freed'}, {r.duration_s:.2f}s"
    return text + _warnings(r.warnings, r.warnings_total)


def format_audit(a: AuditReport) -> str:
    c = a.census
    parts = [f"audit {a.backend} at {a.generated_at.isoformat()}",
             _table("runs by status", sorted(c.runs_by_status.items()) or [("(none)", 0)]),
             _table("runs by age (updated_at)", list(c.to_dict()["runs_by_age"].items()) or [("(none)", 0)]),
             _table("data per kind" + (" (bytes estimated)" if c.bytes_estimated else ""),
                    [(k, f"{s.count:>14,}  {s.bytes:>14,} B") for k, s in sorted(c.kinds.items())])]
    if c.warnings:
        parts.append("notes" + _warnings(c.warnings, len(c.warnings)))
    if a.purge is not None:
        parts.append(format_purge(a.purge))
    parts.append(format_orphans(a.orphans))
    if a.space is not None:
        parts.append(format_space(a.space))
    return "\n\n".join(parts) + f"\n\naudit took {a.duration_s:.2f}s"


def _warnings(warnings: list[str], total: int) -> str:
    if not total:
        return ""
    more = f"\n    ... and {total - len(warnings)} more" if total > len(warnings) else ""
    return f"\n  WARNINGS ({total}):\n" + "\n".join(f"    {w}" for w in warnings) + more


def _cutoff(args: argparse.Namespace, settings: config.Settings) -> datetime:
    """The purge's cutoff, refused when it is newer than the minimum age (the blast-radius guard).

    ``--older-than`` or ``--days``: that cutoff; else the policy (``PYWORKFLOW_RETENTION_POLICY``), else
    ``PYWORKFLOW_DATA_RETENTION_DAYS``. The store's pins are honoured whenever a state store is configured
    (:func:`_pins`); without a policy or a pin the cutoff is a plain instant, exactly as before.
    """
    now = utcnow()
    if (args.older_than or args.days) and settings.policy is not None:
        log.warning("%s replaces the retention policy (%s): its status and workflow rules and keep_last do not "
                    "apply to this %s (pins do)", "--older-than" if args.older_than else "--days", config.POLICY,
                    args.command)
    if args.older_than:
        cutoff = values.iso_datetime(args.older_than, "--older-than")
        pins = _pins(args, settings)
        if pins:
            cutoff = Expiry(Policy(default=max(now - cutoff, timedelta(0)), minimum=timedelta(0)), now,
                            pinned_runs=pins.runs, pinned_workflows=pins.workflows)
    else:
        days = args.days or settings.retention_days
        policy = settings.policy if not args.days else None
        if not days and policy is None:
            raise ConfigurationError(f"give --days N or --older-than ISO8601, or set {config.RETENTION_DAYS} or "
                                     f"{config.POLICY}")
        cutoff = rules.cutoff_for(days=days, policy=policy, pins=_pins(args, settings), now=now)
    latest: datetime = cutoff
    if isinstance(cutoff, Expiry) and cutoff.policy.pressure is not None:  # the emergency rule may apply too
        latest = max(cutoff.bound, now - cutoff.policy.emergency().shortest())
    if latest > now - settings.min_age and not args.allow_recent_cutoff:
        cutoff = latest
        ago = "in the future" if cutoff > now else f"only {now - cutoff} ago"
        raise ConfigurationError(
            f"the cutoff {cutoff.isoformat()} is {ago}: every terminal run that finished before it would be "
            f"deleted, including runs finished minutes ago. The minimum is {settings.min_age} "
            f"({config.MIN_AGE}); pass --allow-recent-cutoff if that is what you want")
    return cutoff


def _state(args: argparse.Namespace, settings: config.Settings, required: bool = False) -> rules.StateStore | None:
    """The store's pins and policy guard, in the state store (None when none is configured and not ``required``)."""
    source = _state_source(args, settings, required)
    return None if source is None else source()


def _state_source(args: argparse.Namespace, settings: config.Settings,
                  required: bool = False) -> Callable[[], rules.StateStore] | None:
    """What opens the state store (it pickles: ``purge --shards`` processes open their own), or None (see
    :func:`_state`)."""
    url = settings.cli_history_url
    if url is None:
        if required:
            raise ConfigurationError(f"pins and the policy guard live in the state store: set {config.STATE_URL} "
                                     f"(or {config.LOCK_URL}) to the Redis the Celery task uses")
        return None
    storage = getattr(args, "storage", None)
    if (storage and settings.storage_url and settings.lock_key != config.lock_key_for(settings.storage_url)
            and config.lock_key_for(storage) != config.lock_key_for(settings.storage_url)):
        raise ConfigurationError(
            f"{config.LOCK_KEY} is set ({settings.lock_key}): it names the pins and policy guard of "
            f"{config.STORAGE_URL}, not of the store --storage gives; run this with {config.LOCK_KEY} set to that "
            f"store's key, or without --storage")
    return partial(rules.StateStore.open, url, _lock_key(args, settings), args.secrets)


def _pins(args: argparse.Namespace, settings: config.Settings) -> rules.Pins:
    """The store's pins; a state store that cannot be read fails the command.

    Without a state store no pin can be read, and a pinned run would go like any other: with a policy configured,
    a purge by it is refused (exit 2, before the store is opened) unless ``--no-pins``, and any other command says
    so at WARNING. By ``PYWORKFLOW_DATA_RETENTION_DAYS`` alone (no policy) it is as before issue 21 (INFO).
    """
    state = _state(args, settings)
    if state is None:
        purging = args.command == "purge" and not args.dry_run
        if purging and settings.policy is not None and not (args.days or args.older_than) and not args.no_pins:
            raise ConfigurationError(
                f"pins and legal holds live in the state store, and none is configured: set {config.STATE_URL} (or "
                f"{config.LOCK_URL}) to the Redis the Celery task uses, or pass --no-pins to purge without them")
        log.log(logging.WARNING if settings.policy is not None else logging.INFO,
                "pins and legal holds not read: no state store is configured (%s or %s), so a pinned run %s like "
                "any other", config.STATE_URL, config.LOCK_URL, "is deleted" if purging else "is counted")
        return rules.Pins()
    try:
        return state.pins()
    finally:
        state.close()


def _lock_key(args: argparse.Namespace, settings: config.Settings) -> str:
    """The store's lock key (which also names its run history): the key a task purging this store would use."""
    storage = getattr(args, "storage", None)
    if storage and settings.lock_key == config.lock_key_for(settings.storage_url):
        return config.lock_key_for(storage)
    return settings.lock_key


def _history(args: argparse.Namespace, settings: config.Settings, store: str) -> History | None:
    """The run history of the command line: only when a state store (or the lock's Redis) is configured."""
    url = settings.cli_history_url
    if url is None:
        log.info("run history not recorded: set %s (or %s) to record it", config.STATE_URL, config.LOCK_URL)
        return None
    return History.open(url, _lock_key(args, settings), store=store, source="cli", secrets=args.secrets)


def _recorded(args: argparse.Namespace, settings: config.Settings, backend: StorageBackend, operation: str,
              run: Callable[[Any], Any], dry_run: bool, progress: Progress) -> Any:
    history = None if dry_run else _history(args, settings, backend.url)
    try:
        return record_run(history, operation, run, then=progress, log=log)
    finally:
        if history is not None:
            history.close()


def _space_before(backend: StorageBackend) -> SpaceReport | None:
    """The space before a purge, to tell what it gave back; a store that cannot be read fails the purge itself."""
    try:
        return backend.space()
    except RetentionError as exc:
        log.info("space before the purge not measured backend=%s: %s", backend.url, exc)
        return None


def _space_after(backend: StorageBackend, before: SpaceReport | None, vacuum: bool, progress: Progress) -> SpaceReport:
    """What the store occupies after a purge (after ``--vacuum``, announced, when asked) and what it gave back."""
    if before is not None and backend.space_settle_s:  # a real purge: let the server's statistics catch up
        progress.tick("waiting for the server's statistics")
        backend.close()  # the purge's connections report their statistics as they end
        time.sleep(backend.space_settle_s)
    if vacuum:
        print(f"purge: vacuuming {backend.url}: {VACUUM_NOTE}", file=progress.stream, flush=True)
        progress.tick("vacuum")
        after = backend.vacuum()
    else:
        progress.tick("measuring the space left")
        after = backend.measured_space()
    if before is not None and before.bytes is not None and after.bytes is not None:
        after.freed_bytes = max(before.bytes - after.bytes, 0)
    return after


#: What ``purge --vacuum`` says before it starts.
VACUUM_NOTE = ("the purge has committed; PRAGMA incremental_vacuum if the database has auto_vacuum=INCREMENTAL, "
               "otherwise a full VACUUM, which rewrites the whole file and holds the write lock until done (the "
               "engine's writes wait; it needs free disk as large as the file)")


def _vacuum_allowed(args: argparse.Namespace, backend: StorageBackend) -> None:
    if args.vacuum and args.dry_run:
        raise ConfigurationError("--vacuum changes the store: it does not go with --dry-run")
    if args.vacuum and not backend.can_vacuum:
        raise ConfigurationError(f"--vacuum applies to SQLite stores only; the {backend.name} backend returns space "
                                 "its own way (see docs/operations.md, Space); run the purge without it")


def _archive(args: argparse.Namespace, settings: config.Settings, required: bool) -> ArchiveStore | None:
    """``--archive`` or the setting, opened (a URL that cannot be used: exit 2 naming it, before any read)."""
    url = getattr(args, "archive", None)
    if url:
        return open_archive(url, "--archive")
    if settings.archive_url:
        return open_archive(settings.archive_url, config.ARCHIVE_URL)
    if required:
        raise ConfigurationError(f"no archive given: pass --archive URL or set {config.ARCHIVE_URL}")
    return None


def _pressured(args: argparse.Namespace, settings: config.Settings, cutoff: datetime, record: bool) -> datetime:
    """A policy with ``[retention.pressure]``: the emergency rule while the store is short of room (announced at
    WARNING; ``record``: also in the run history, which ``status`` and the metrics read)."""
    if not isinstance(cutoff, Expiry) or cutoff.policy.pressure is None:
        return cutoff
    with _backend(args, settings) as probe:
        cutoff, why = rules.pressured(cutoff, probe)
        history = _history(args, settings, probe.url) if record else None
    if history is not None:
        try:
            history.record_pressure(why)
        finally:
            history.close()
    return cutoff


def _cmd_purge(args: argparse.Namespace, settings: config.Settings) -> int:
    archive = _archive(args, settings, required=False)  # a bad archive setting: exit 2 before the store is opened
    if args.shards > 1 and archive is not None:
        raise ConfigurationError("an archive is not supported with --shards above 1 yet (issue 20): purge with "
                                 "--shards 1, or without the archive")
    cutoff = _pressured(args, settings, _cutoff(args, settings), record=not args.dry_run)
    if args.shards > 1 and settings.max_runs is not None:
        raise ConfigurationError(f"{config.MAX_RUNS} is not enforced across --shards processes yet: purge with "
                                 f"--shards 1, or unset the cap")
    if args.shards > 1:
        return _purge_sharded(args, settings, cutoff)
    watch = None if args.dry_run else _state(args, settings)  # pins added while it runs stop it (rules.pins_watched)
    with _backend(args, settings) as backend, Progress("purge") as progress, _closing(watch):
        _vacuum_allowed(args, backend)
        progress.tick("measuring the space used")
        before = None if args.dry_run else _space_before(backend)
        report = _recorded(args, settings, backend, metrics.PURGE,
                           lambda on_batch: backend.delete_old_runs(
                               cutoff, dry_run=args.dry_run,
                               on_batch=rules.capped(rules.pins_watched(rules.by_rule(cutoff, on_batch), watch,
                                                                        rules.pins_of(cutoff)), settings.max_runs),
                               archive=archive),
                           args.dry_run, progress)
        report.rules = rules.rule_counts(cutoff)
        if not args.dry_run and not report.stopped:
            _record_applied(args, settings, cutoff)
        report.space = _space_after(backend, before, args.vacuum and not report.stopped, progress)
    args.out(report.to_json(indent=2) if args.json else format_purge(report))
    _left_alone(report.skipped, report.warnings)
    return EXIT_STOPPED if report.stopped else EXIT_OK


@contextlib.contextmanager
def _closing(state: rules.StateStore | None) -> Iterator[None]:
    try:
        yield
    finally:
        if state is not None:
            state.close()


def _record_applied(args: argparse.Namespace, settings: config.Settings, cutoff: datetime) -> None:
    """After a successful purge by the settings (no --days or --older-than): remember the policy it applied, which
    the Celery task's guard compares a newer policy with."""
    if args.older_than or args.days:
        return
    state = _state(args, settings)
    if state is None:
        return
    try:  # the configured policy, never the emergency rule disk pressure made of it (the guard compares these)
        state.record_applied(settings.policy if settings.policy is not None
                             else Policy.days(settings.retention_days or 0))
    finally:
        state.close()


def _purge_sharded(args: argparse.Namespace, settings: config.Settings, cutoff: datetime) -> int:
    """``purge --shards N --workers W``: the shards in W processes, then the final pass; one merged report.

    A shard that fails fails the command (an ERROR line per shard, exit 1) after the partial report is
    printed; the final pass is not run, and a rerun finishes the purge.
    """
    url = args.storage or settings.require_storage_url()
    batch_size = settings.batch_size if args.batch_size is None else args.batch_size
    open_backend = partial(by_url, url, batch_size=batch_size)
    with open_backend() as backend:  # settings and URL errors here, before any process starts
        label = backend.url
        _vacuum_allowed(args, backend)
        before = None if args.dry_run else _space_before(backend)
    progress = Progress("purge")
    outcome: list[ShardedPurge] = []
    pins = None if args.dry_run else _state_source(args, settings)  # every shard and the final pass watch them

    def shard_done(shard: Shard, report: PurgeReport | None, error: str | None) -> None:
        text = f"{report.runs:,} runs in {report.duration_s:.1f}s" if report is not None else f"FAILED: {error}"
        print(remove_secrets(f"purge: shard {shard.label} {text}", args.secrets), file=progress.stream, flush=True)

    def run(on_batch: Any) -> PurgeReport:
        result = purge_sharded(open_backend, cutoff, args.shards, workers=args.workers, processes=True,
                               dry_run=args.dry_run, on_shard=shard_done, pins=pins)
        outcome.append(result)
        if result.failed:
            raise StorageError(f"{len(result.failures)} of {len(result.shards)} shards failed, so the final pass "
                               f"was not run (a rerun finishes the purge): {result.failure_text()}")
        return result.report

    history = None if args.dry_run else _history(args, settings, label)
    try:
        report = record_run(history, metrics.PURGE, run, log=log)
    except StorageError:
        if outcome:
            args.out(format_purge(outcome[0].report, outcome[0]))
        raise
    finally:
        if history is not None:
            history.close()
    if not args.dry_run and not report.stopped:
        _record_applied(args, settings, cutoff)
    with open_backend() as backend, progress:
        report.space = _space_after(backend, before, args.vacuum and not report.stopped, progress)
    args.out(report.to_json(indent=2) if args.json else format_purge(report, outcome[0]))
    _left_alone(report.skipped, report.warnings)
    return EXIT_STOPPED if report.stopped else EXIT_OK


def _left_alone(skipped: int, warnings: list[str]) -> None:
    """Records kept because they could not be judged safely: a WARNING line, whatever the output format."""
    if skipped:
        log.warning("%d record(s) were left alone and need a look, e.g.: %s", skipped,
                    warnings[0] if warnings else "(see the report)")


def _cmd_check(args: argparse.Namespace, settings: config.Settings) -> int:
    """What will be used, and a real check of each connection: the store, and the lock's Redis."""
    storage_url = args.storage or settings.storage_url
    schedule = config.load_schedule()
    human = values.human
    when = (f"daily at {schedule.daily_at[0]:02d}:{schedule.daily_at[1]:02d} + up to {human(schedule.jitter)} "
            "jitter" if schedule.daily_at else f"every {human(schedule.every)}")  # type: ignore[arg-type]
    lock_key = _lock_key(args, settings)
    used = [("storage", redact_url(storage_url) if storage_url else f"(none: {settings.storage_error})"),
            ("retention days", settings.retention_days or "(unset: the Celery task keeps everything)"),
            ("batch size", args.batch_size or settings.batch_size or "(the backend's)"),
            ("minimum cutoff age", human(settings.min_age)),
            ("celery task", "enabled" if settings.enabled else f"disabled ({config.ENABLED})"),
            ("schedule", when), ("lock", f"{redact_url(settings.lock_url) if settings.lock_url else '(none)'} "
                                         f"key {lock_key}, lease {human(settings.lock_ttl)}"),
            ("orphan repair", f"after each purge, grace {human(settings.orphan_grace)}" if settings.repair_orphans
             else "off"),
            ("shards (celery task)", f"{settings.shards} (a chord of shard tasks, then a final pass)"
             if settings.shards > 1 else "1 (one purge in the task)"),
            ("run history (command line)", redact_url(settings.cli_history_url) if settings.cli_history_url
             else f"(not recorded: set {config.STATE_URL})"),
            ("metrics push (celery task)", redact_url(settings.pushgateway_url) if settings.pushgateway_url
             else "(off)"),
            ("broker (ready-made worker)", redact_url(settings.broker_url))]
    args.out(_table("configuration", used))
    failed = False
    try:
        with _backend(args, settings) as backend:
            facts = backend.check()
        args.out(_table("storage: OK", [(k, v) for k, v in facts.items()]))
    except RetentionError as exc:
        log.error("check: the store cannot be used: %s", exc)
        args.out(_table("storage: FAILED", [("error", str(exc))]))
        failed = True
    if settings.lock_url:
        try:
            open_lease(settings.lock_url, lock_key, settings.lock_ttl).ping()
            args.out(_table("lock: OK", [("redis", redact_url(settings.lock_url))]))
        except RetentionError as exc:
            log.error("check: the lock's Redis cannot be used: %s", exc)
            args.out(_table("lock: FAILED", [("error", str(exc))]))
            failed = True
    if settings.state_url and settings.state_url != settings.lock_url:
        try:
            open_lease(settings.state_url, lock_key, settings.lock_ttl).ping()  # a ping only: nothing is written
            args.out(_table("run history: OK", [("redis", redact_url(settings.state_url))]))
        except RetentionError as exc:
            log.error("check: the run history's Redis cannot be used: %s", exc)
            args.out(_table("run history: FAILED", [("error", str(exc))]))
            failed = True
    return EXIT_FAILED if failed else EXIT_OK


def _cmd_seed(args: argparse.Namespace, settings: config.Settings) -> int:
    """Seed a sample store: refused (exit 2) when the store holds runs, unless ``--append`` (fresh ids then)."""
    salt = fresh_salt() if args.append else None
    runs = generate(args.runs, seed=args.seed, max_age_days=args.max_age_days, salt=salt)
    with _backend(args, settings) as backend, Progress("seed", total=args.runs, unit="runs") as progress:
        started = time.monotonic()
        try:
            n = backend.seed(runs, require_empty=not args.append, on_progress=lambda _, done: progress.count(done))
        except StoreNotEmpty as exc:
            log.error("seed refused: %s", exc)
            return EXIT_USAGE
    added = " (appended beside the runs it held)" if args.append else ""
    args.out(f"seeded {n:,} runs into {backend.url}{added} in {time.monotonic() - started:.2f}s")
    return EXIT_OK


def _cmd_orphans(args: argparse.Namespace, settings: config.Settings) -> int:
    grace = values.duration(args.grace, "--grace")
    with _backend(args, settings) as backend, Progress("orphans") as progress:
        progress.tick("scanning the store")
        report = _recorded(args, settings, backend, metrics.ORPHANS,
                           lambda on_batch: backend.sweep_orphans(grace=grace, dry_run=args.dry_run,
                                                                  on_batch=on_batch), args.dry_run, progress)
    args.out(report.to_json(indent=2) if args.json else format_orphans(report))
    _left_alone(report.skipped, report.warnings)
    return EXIT_STOPPED if report.stopped else EXIT_OK


def _cmd_audit(args: argparse.Namespace, settings: config.Settings) -> int:
    days = args.days or settings.retention_days
    policy = settings.policy if not args.days else None
    cutoff = rules.cutoff_for(days=days, policy=policy, pins=_pins(args, settings)) if days or policy else None
    cutoff = _pressured(args, settings, cutoff, record=False) if cutoff is not None else None
    with _backend(args, settings) as backend, Progress("audit") as progress:
        progress.tick("census")
        plain = not isinstance(cutoff, Expiry)
        report = backend.audit(older_than=cutoff if plain else None,
                               grace=values.duration(args.grace, "--grace"),
                               on_progress=partial(_audit_progress, progress))
        if cutoff is not None and not plain:  # the preview counted by rule
            progress.tick("purge preview")
            report.purge = backend.delete_old_runs(cutoff, dry_run=True, on_batch=rules.by_rule(cutoff, None))
            report.purge.rules = rules.rule_counts(cutoff)
    args.out(report.to_json(indent=2) if args.json else format_audit(report))
    return EXIT_OK


def _audit_progress(progress: Progress, what: str, n: int) -> None:
    """An audit's ``on_progress``: a phase starting (``n`` 0), a census count, or a dry run's batch."""
    if what == "batch":
        progress.tick(f"{progress.text.split(':')[0]}: batch {n:,}")
    elif n == 0:
        progress.tick(what)
    else:
        progress.tick(f"census: {what} {n:,}")


def _cmd_metrics(args: argparse.Namespace, settings: config.Settings) -> int:
    """An audit, plus the history's counters when a state store is configured, in Prometheus' text format."""
    days = args.days or settings.retention_days
    now = utcnow()
    policy = settings.policy if not args.days else None
    # the policy's preview, without the pins: the metrics must come out even when the state store is down
    cutoff = rules.cutoff_for(days=days, policy=policy, now=now) if days or policy else None
    cutoff = _pressured(args, settings, cutoff, record=False) if cutoff is not None else None
    with _backend(args, settings) as backend:
        report = backend.audit(older_than=cutoff, grace=values.duration(args.grace, "--grace"))
        store = backend.url
    audit = metrics.audit_snapshot(report, days)
    snapshot = metrics.Snapshot(store=metrics.store_label(store), audit=audit)
    history = _history(args, settings, store)
    failed = False
    if history is not None:
        try:
            history.record_audit(audit)
            fill_snapshot(snapshot, history, days, now)
        except RetentionError as exc:
            log.error("metrics: the run history could not be read, so the counters and the last success are "
                      "missing: %s", exc)
            failed = True
        finally:
            history.close()
    else:
        snapshot.lag = metrics.retention_lag(now, days, None, audit)
    args.out(metrics.text(metrics.registry_for(snapshot)).rstrip("\n"))
    return EXIT_FAILED if failed else EXIT_OK


def _cmd_status(args: argparse.Namespace, settings: config.Settings) -> int:
    from workflow_retention.celery import daily_schedule

    storage_url = args.storage or settings.storage_url
    store = redact_url(storage_url) if storage_url else f"(none: {settings.storage_error})"
    spec = config.load_schedule()
    lock_key = _lock_key(args, settings)
    history = _history(args, settings, store)
    lease = open_lease(settings.lock_url, lock_key, settings.lock_ttl) if settings.lock_url else None
    try:
        state = status.collect(store=store, history=history, lock_key=lock_key, lease=lease,
                               state_store=redact_url(settings.cli_history_url) if settings.cli_history_url else None,
                               retention_days=settings.retention_days, max_age=args.max_age, now=utcnow(),
                               spec=spec, schedule=daily_schedule(spec))
    finally:
        for client in (history, lease.client if lease else None):
            if client is not None:
                client.close()
    args.out(json.dumps(state.to_dict(), indent=2) if args.json else format_status(state))
    for problem in state.problems:
        log.error("status: %s", problem)
    if not state.healthy:
        log.error("status: unhealthy: %s", state.reason())
        return EXIT_FAILED
    return EXIT_OK


def format_status(s: status.Status) -> str:
    """The status as tables: the summary, then the last runs."""
    human = values.human

    def ago(when: datetime | None) -> str:
        return f"{when.isoformat()} ({human(s.now - when)} ago)" if when else "(none)"

    holder = s.holder or ("(free)" if s.holder_error is None else f"(unknown: {s.holder_error})")
    lag = "(unknown)"
    if s.lag is not None:
        lag = f"{'at most ' + human(timedelta(seconds=round(s.lag.seconds))) if s.lag.seconds is not None else '?'}" \
              f" ({s.lag.basis})"
    rows = [("health", "OK" if s.healthy else f"UNHEALTHY: {s.reason()}"), ("store", s.store),
            ("state store", s.state_store or f"(none: set {config.STATE_URL} to record history)"),
            ("last success", ago(s.last_success_at)), ("max age", human(s.max_age)),
            ("next run", f"{s.next_run_at.isoformat() if s.next_run_at else '(unknown)'}  [{s.schedule}]"),
            ("lock", f"{s.lock_key}: {holder}"), ("retention lag", lag)]
    if s.pressure:
        rows.append(("disk pressure", f"the policy's emergency rule applies: {s.pressure}"))
    if s.policy_held:
        rows.append(("policy", "HELD BACK until `workflow-retention policy accept` (the Celery task applies the last "
                               "policy it applied): " + "; ".join(s.policy_held)))
    text = _table("status", rows)
    lines = []
    for run in s.runs:
        report = run.get("report") or {}
        counts = (f"runs {report.get('runs', 0):,}, held {report.get('held', 0):,}" if run["operation"] == "purge"
                  else f"orphans {report.get('total', 0):,}") if report else ""
        duration = f"{run['duration_s']:.2f}s" if run.get("duration_s") is not None else ""
        outcome = run.get("outcome") or "started (running, or died without finishing)"
        error = f"  error: {run['error']}" if run.get("error") else ""
        lines.append(f"  {run['started_at']}  {run['operation']:<7}  {run['source']:<6}  {outcome:<9}  "
                     f"{duration:>9}  {counts}{error}")
    return text + "\n" + ("last runs (newest first)\n" + "\n".join(lines) if lines else "last runs: (none)")


def _cmd_explain(args: argparse.Namespace, settings: config.Settings) -> int:
    """One run, judged by the purge's rules and its dry run (nothing is written); exit 0 whatever the verdict."""
    cutoff = _cutoff(args, settings)
    with _backend(args, settings) as backend:
        answer = backend.explain(args.run_id, cutoff)
    args.out(json.dumps(answer.to_dict(), indent=2) if args.json else "\n".join(answer.lines()))
    return EXIT_OK


def _cmd_restore(args: argparse.Namespace, settings: config.Settings) -> int:
    """Archived runs back into the store; exit 1 when a run asked for by ``--run`` was refused, or with ``--all``
    when a run was refused for another reason than that it exists."""
    from workflow_retention.archiving import EXISTS

    archive = _archive(args, settings, required=True)
    assert archive is not None
    with _backend(args, settings) as backend:
        report = backend.restore(archive, None if args.all else args.runs)
    if args.json:
        args.out(json.dumps(report.to_dict(), indent=2))
    else:
        lines = [f"restore {backend.url} from {archive.url}: {len(report.written)} run(s) written"]
        lines += [f"  {kind:<20} {n:>10,}" for kind, n in sorted(report.counts.items())]
        lines += [f"  refused {run_id}: {why}" for run_id, why in sorted(report.refused.items())]
        args.out("\n".join(lines))
    # with --all, runs that exist are expected (a superseded run was kept, an earlier restore wrote it); any other
    # refusal (another kind of store, a parent missing) means archived runs did not come back: exit 1
    unexpected = {r: why for r, why in report.refused.items() if not args.all or why != EXISTS}
    if report.refused:
        log.warning("%d run(s) not restored (%s)", len(report.refused),
                    f"{len(unexpected)} for another reason than that they exist in the store" if unexpected
                    else "they exist in the store")
    return EXIT_FAILED if unexpected else EXIT_OK


def _cmd_archive(args: argparse.Namespace, settings: config.Settings) -> int:
    """``archive ls``: the purges in an archive; ``archive show PURGE``: the runs one archived."""
    from workflow_retention.archiving import archived_runs, purges

    archive = _archive(args, settings, required=True)
    assert archive is not None
    found = purges(archive)
    if args.action == "ls":
        if args.json:
            args.out(json.dumps(found, indent=2))
        else:
            args.out("\n".join([f"{p['folder']}  {p['outcome']:<10} runs={p['runs']}  cutoff={p.get('cutoff')}  "
                                 f"backend={p.get('backend')}" for p in found] or ["(no purges)"]))
        return EXIT_OK
    if not args.purge:
        raise ConfigurationError("archive show needs a purge folder or id (see archive ls)")
    match = [p["folder"] for p in found if p["folder"] == args.purge or p["folder"].endswith(args.purge)
             or p.get("purge_id") == args.purge]
    if len(match) != 1:
        raise ConfigurationError(f"archive show: {args.purge!r} names {len(match)} purges in {archive.url}")
    runs_ = list(archived_runs(archive, match[0]))
    if args.json:
        args.out(json.dumps(runs_, indent=2))
    else:
        rows = [f"{r['run_id']}  {r['run_version']}{'  superseded' if r['superseded'] else ''}  "
                f"{r['object'].rpartition('/')[2]}  " + " ".join(f"{k}={n}" for k, n in r["records"].items())
                for r in runs_]
        args.out("\n".join(rows or ["(no runs)"]))
    return EXIT_OK


def _cmd_pin(args: argparse.Namespace, settings: config.Settings) -> int:
    """``pin add|rm|ls``: the store's pins in the state store (keyed per store, like its lock)."""
    if args.action != "ls" and not (args.run_ids or args.workflow):
        raise ConfigurationError(f"pin {args.action}: give RUN_ID... and/or --workflow PATTERN")
    state = _state(args, settings, required=True)
    assert state is not None
    try:
        if args.action == "add":
            added = state.pin(rules.RUN, args.run_ids, args.reason) if args.run_ids else 0
            added += state.pin(rules.WORKFLOW, args.workflow, args.reason) if args.workflow else 0
            args.out(f"pinned {added} new of {len(args.run_ids) + len(args.workflow)}")
            if args.run_ids:
                _check_pinned_runs(args, settings)
        elif args.action == "rm":
            existing = {(p["kind"], p["target"]) for p in state.list_pins()}
            missing = [t for kind, targets in ((rules.RUN, args.run_ids), (rules.WORKFLOW, args.workflow))
                       for t in targets if (kind, t.strip()) not in existing]
            removed = state.unpin(rules.RUN, args.run_ids) if args.run_ids else 0
            removed += state.unpin(rules.WORKFLOW, args.workflow) if args.workflow else 0
            args.out(f"unpinned {removed} of {len(args.run_ids) + len(args.workflow)}")
            if missing:
                log.warning("pin rm: not pinned, nothing removed: %s", ", ".join(repr(t) for t in missing))
        else:
            pins = state.list_pins()
            args.out(json.dumps(pins, indent=2) if args.json else "\n".join(
                f"{p['kind']:<8} {p['target']}  pinned {p['pinned_at']}: {p['reason']}" for p in pins) or "no pins")
    finally:
        state.close()
    return EXIT_OK


def _check_pinned_runs(args: argparse.Namespace, settings: config.Settings) -> None:
    """After ``pin add``: a WARNING naming each pinned run id the store does not hold (a typo leaves the run meant
    unprotected). The pins are written first: a store that cannot be read only says so."""
    ids = {t.strip() for t in args.run_ids}
    try:
        with by_url(args.storage or settings.require_storage_url()) as backend:
            found = set(backend._read_runs(ids))
    except Exception as exc:  # noqa: BLE001 - the pins are written: a failed check only says so
        log.warning("pin add: cannot check that the pinned runs exist in the store (they are pinned): %s", exc)
        return
    missing = sorted(ids - found)
    if missing:
        log.warning("pin add: the store holds no run %s: pinned all the same; check the id (a run created later "
                    "with it is kept)", ", ".join(repr(t) for t in missing))


def _cmd_policy(args: argparse.Namespace, settings: config.Settings) -> int:
    """``policy show``: the configured policy, the last applied, what is held back; ``policy accept``."""
    if settings.policy is None:
        raise ConfigurationError(f"no retention policy: set {config.POLICY} to a TOML file (docs/policy.md)")
    state = _state(args, settings, required=args.action == "accept")
    try:
        if args.action == "accept":
            assert state is not None
            digest = state.accept(settings.policy)
            args.out(f"accepted policy {digest}: the Celery task applies it from its next run")
            return EXIT_OK
        guarded = rules.guard(settings.policy, state)
        applied = state.applied() if state is not None else None
        shown = {"policy": settings.policy.to_dict(), "fingerprint": rules.fingerprint(settings.policy),
                 "applied": applied.to_dict() if applied else None, "held_back": list(guarded.held)}
        if args.json:
            args.out(json.dumps(shown, indent=2))
        else:
            held = "\n".join(f"  {line}" for line in guarded.held)
            args.out(f"policy {shown['fingerprint']}: {json.dumps(shown['policy'])}\n"
                     f"last applied: {json.dumps(shown['applied']) if applied else '(none recorded)'}\n"
                     + (f"HELD BACK until `workflow-retention policy accept`; it deletes sooner:\n{held}"
                        if guarded.held else "not held back"))
    finally:
        if state is not None:
            state.close()
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace, config.Settings], int]] = {
    "pin": _cmd_pin, "policy": _cmd_policy,
    "restore": _cmd_restore, "archive": _cmd_archive,
    "purge": _cmd_purge, "check": _cmd_check, "seed": _cmd_seed, "orphans": _cmd_orphans, "audit": _cmd_audit,
    "metrics": _cmd_metrics, "status": _cmd_status, "explain": _cmd_explain,
}


class ScrubbingFormatter(logging.Formatter):
    """Formats a record, then removes every known secret from the text.

    Tracebacks (a record's ``exc_info`` or ``stack_info``, ours or a driver's, such as the Cassandra driver's
    connection warnings) only with ``tracebacks`` (``-v``): otherwise each record is its one line.
    """

    def __init__(self, fmt: str, secrets: list[str], tracebacks: bool = True) -> None:
        super().__init__(fmt)
        self.secrets = secrets
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if not self.tracebacks and (record.exc_info or record.exc_text or record.stack_info):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None,
                                            "stack_info": None})
        return remove_secrets(super().format(record), self.secrets)


class _ProgressAwareHandler(logging.StreamHandler):
    """A log line on a terminal first erases the progress line being redrawn there (it is drawn again next)."""

    def emit(self, record: logging.LogRecord) -> None:
        drawn = Progress.drawn_on
        if drawn is not None and drawn is self.stream:
            with contextlib.suppress(OSError, ValueError):
                self.stream.write("\r\x1b[K")
        super().emit(record)


def _logging(verbose: bool, secrets: list[str]) -> None:
    handler = _ProgressAwareHandler(sys.stderr)
    handler.setFormatter(ScrubbingFormatter("%(levelname)s %(name)s: %(message)s", secrets, tracebacks=verbose))
    root = logging.getLogger()
    for old in list(root.handlers):  # ours, from an earlier main() in this process
        if isinstance(old.formatter, ScrubbingFormatter):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


def _print(text: str) -> None:
    """Print to stdout; a reader that went away (``| head``) ends the output quietly, not the command."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # Python's recipe: no second error when stdout is flushed at exit
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    secrets = config.secrets(urls=(getattr(args, "storage", None),))
    args.secrets = secrets
    _logging(args.verbose, secrets)
    args.out = lambda text: _print(remove_secrets(text, secrets))
    try:
        settings = config.load_settings(strict=args.command == "check")
        for problem in settings.problems:  # settings only the Celery task uses: not fatal here
            log.warning("%s (the Celery task would refuse to run with it)", problem)
        return COMMANDS[args.command](args, settings)
    except ConfigurationError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_USAGE
    except RetentionError as exc:
        log.error("%s failed: %s", args.command, exc, exc_info=args.verbose)
        return EXIT_FAILED
    except Exception as exc:
        log.error("%s failed: %s: %s", args.command, type(exc).__name__, exc, exc_info=args.verbose)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
