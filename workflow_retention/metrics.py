"""Prometheus metrics: what retention did, when it last succeeded, how far behind it is.

Everything is exported through a :class:`prometheus_client.CollectorRegistry`
of our own (never the process-global one), filled by :class:`RetentionCollector`
from a :class:`Snapshot`:

* **counters** are cumulative per store. They come from the totals the run
  history keeps in its state store (:mod:`workflow_retention.history`), so they
  only ever grow, whichever worker process, host or command ran the purge; a
  Pushgateway fed by many short-lived processes still sees one monotonic series.
  Without a state store they are not exported at all (a counter that restarted
  at every run would read as a reset, not as a total);
* **gauges**: the last successful purge, the last run of each operation (time,
  duration, success), what the last audit found (store size per kind, runs a
  purge would delete now) and the retention lag (see :func:`retention_lag`);
* **a histogram** of batch durations, measured by :class:`BatchTimer` between
  the batch boundaries a purge already reports (``on_batch``), accumulated in
  the same totals.

:func:`push` sends a registry to a Pushgateway (job ``workflow-retention``,
grouping key ``store``); :func:`text` renders it for a node-exporter textfile
collector. Labels never carry a credential: the store label is the masked URL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from workflow_retention.exceptions import LeaseLostError, PinAdded, StorageError
from workflow_retention.report import AGE_BUCKETS, AuditReport, Kind, OrphanReport, PurgeReport, SpaceReport
from workflow_retention.urls import redact_url, scrub, split_url

#: The Pushgateway job name.
JOB = "workflow-retention"
PREFIX = "workflow_retention"
#: Upper bounds (seconds) of the batch-duration histogram's buckets; +Inf is added.
BATCH_BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
PURGE, ORPHANS = "purge", "orphans"
#: Outcomes of a run: it succeeded, failed, or stopped at a batch boundary (each kind of stop its own outcome).
SUCCEEDED, FAILED = "succeeded", "failed"
LEASE_LOST, PIN_ADDED = LeaseLostError.outcome, PinAdded.outcome

# Field names of the cumulative totals (a flat string -> number map; the history keeps it in a Redis hash).
_SEP = "|"


def store_label(url: str) -> str:
    """The ``store`` label: the storage URL with every secret masked (see :func:`redact_url`)."""
    return redact_url(url)


# -- batch durations ------------------------------------------------------------------------


@dataclass
class Observations:
    """Batch durations in the histogram's buckets (non-cumulative counts per bucket, +Inf last)."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(BATCH_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        """Count one batch that took ``seconds``."""
        index = next((i for i, bound in enumerate(BATCH_BUCKETS) if seconds <= bound), len(BATCH_BUCKETS))
        self.buckets[index] += 1
        self.total += seconds
        self.count += 1


class BatchTimer:
    """An ``on_batch`` callback that times batches, then calls ``then`` (progress, the lease check).

    A batch's duration is the time from its boundary to the next one (deleting
    it and selecting the next); :meth:`finish` closes the last one when the
    purge returns.
    """

    def __init__(self, then: Callable[[Any], None] | None = None) -> None:
        self.then = then
        self.observations = Observations()
        self._last: float | None = None

    def __call__(self, info: Any) -> None:
        now = time.monotonic()
        if self._last is not None:
            self.observations.observe(now - self._last)
        self._last = now
        if self.then is not None:
            self.then(info)

    def finish(self) -> Observations:
        """Close the batch in flight (if any); return every duration observed."""
        if self._last is not None:
            self.observations.observe(time.monotonic() - self._last)
            self._last = None
        return self.observations


# -- cumulative totals ---------------------------------------------------------------------------


def increments(operation: str, outcome: str, report: PurgeReport | OrphanReport | None,
               observations: Observations | None) -> dict[str, float]:
    """What one finished run adds to the store's cumulative totals (field -> amount, zeros left out)."""
    out: dict[str, float] = {}

    def add(name: str, amount: float) -> None:
        if amount:
            out[name] = out.get(name, 0) + amount

    if outcome != SUCCEEDED:
        add(_SEP.join(("failures", operation, outcome)), 1)
    if isinstance(report, PurgeReport) and not report.dry_run:
        add("runs_deleted", report.runs)
        for kind, n in report.counts.items():
            if kind != Kind.RUNS:
                add(_SEP.join(("data_deleted", kind)), n)
        add("runs_held", report.held)
        add("runs_changed", report.changed)
        add("records_skipped", report.skipped)
    elif isinstance(report, OrphanReport) and not report.dry_run:
        for kind, n in report.counts.items():
            add(_SEP.join(("orphans_deleted", kind)), n)
        add("records_skipped", report.skipped)
    if observations is not None and observations.count:
        base = _SEP.join(("batch", operation))
        add(f"{base}{_SEP}count", observations.count)
        add(f"{base}{_SEP}sum", observations.total)
        for bound, n in zip((*BATCH_BUCKETS, float("inf")), observations.buckets):
            add(f"{base}{_SEP}le{_SEP}{bound}", n)
    return out


# -- retention lag ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lag:
    """The retention lag: ``seconds`` (None when unknown), an upper bound, and what it rests on."""

    seconds: float | None
    basis: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"seconds": None if self.seconds is None else round(self.seconds, 3), "basis": self.basis}


def retention_lag(now: datetime, retention_days: int | None, clean_at: datetime | None,
                  audit: Mapping[str, Any] | None) -> Lag:
    """How far retention is behind: an upper bound on the age, past the cutoff, of the oldest expired run.

    ``clean_at``: the latest instant at which the store was known to hold no
    expired terminal run a purge would delete, i.e. the instant a complete
    purge (or an audit that found nothing to delete) took its cutoff from.
    Every run still present that expired after it is at most ``now -
    clean_at`` past the current cutoff, so that is the bound. Runs a purge keeps
    on purpose (``held``: a child survives; ``skipped``: unreadable) are not
    counted; they have counters of their own.

    ``audit``: the last audit's snapshot (see :func:`audit_snapshot`). If it is
    newer than ``clean_at`` and found runs to delete, retention is behind; with
    no ``clean_at`` the bound comes from the census' oldest age bucket, which
    has no upper end past 365 days (then the lag is unknown).
    """
    audit_at = _when(audit.get("generated_at")) if audit else None
    if audit and audit_at and audit.get("complete") and audit.get("expired_runs") == 0:
        reference = _when(audit.get("clean_at")) or audit_at
        if clean_at is None or reference > clean_at:
            clean_at = reference
    behind = bool(audit and audit_at and audit.get("expired_runs") and (clean_at is None or audit_at > clean_at))
    if clean_at is not None:
        bound = max(0.0, (now - clean_at).total_seconds())
        basis = "since the store last held no expired run"
        return Lag(bound, basis + ("; the last audit found expired runs" if behind else ""))
    if behind and audit and retention_days and (oldest_at := _when(audit.get("oldest_terminal"))) is not None:
        # The census read every run: the oldest terminal one gives the lag exactly (as of the audit; it grows
        # with the time since), held and unreadable runs included.
        cutoff = now - timedelta(days=retention_days)
        return Lag(max(0.0, (cutoff - oldest_at).total_seconds()),
                   "expired runs present; the oldest terminal run, read by the last audit")
    if behind and audit and retention_days:
        oldest = next((name for name in reversed(AGE_BUCKETS) if audit.get("runs_by_age", {}).get(name)), None)
        limit = AGE_BUCKETS.get(oldest, float("inf")) if oldest else float("inf")
        if limit != float("inf") and audit_at is not None:
            bound = max(0.0, (limit - retention_days) * 86400 + (now - audit_at).total_seconds())
            return Lag(bound, f"expired runs present; the oldest run is in the age bucket {oldest}")
        return Lag(None, "expired runs present, no complete purge on record and runs older than 365 days")
    return Lag(None, "no complete purge and no audit on record")


def _when(value: Any) -> datetime | None:
    from workflow_retention.timeutil import parse_timestamp

    if not value:
        return None
    try:
        return parse_timestamp(value)
    except (TypeError, ValueError):
        return None


def audit_snapshot(report: AuditReport, retention_days: int | None, *, complete: bool = True) -> dict[str, Any]:
    """What the metrics keep of an audit: sizes per kind, runs by status and age, runs a purge would delete.

    ``complete``: the census and the purge preview both ran to the end (a
    bounded start-up audit may stop early; its counts are then lower bounds).
    """
    preview = report.purge
    complete = complete and (preview is None or not preview.stopped)
    clean_at = None
    if preview is not None and preview.cutoff is not None and retention_days:
        clean_at = (preview.cutoff + timedelta(days=retention_days)).isoformat()
    return {
        "generated_at": report.generated_at.isoformat(),
        "retention_days": retention_days,
        "kinds": {kind: [stat.count, stat.bytes] for kind, stat in sorted(report.census.kinds.items())},
        "bytes_estimated": report.census.bytes_estimated,
        "runs_by_status": dict(sorted(report.census.runs_by_status.items())),
        "runs_by_age": report.census.to_dict()["runs_by_age"],
        "oldest_terminal": report.census.oldest_terminal.isoformat() if report.census.oldest_terminal else None,
        "expired_runs": preview.runs if preview is not None else None,
        "expired_held": preview.held if preview is not None else None,
        "clean_at": clean_at,
        "complete": complete,
        "space": _space_snapshot(report.space),
    }


def _space_snapshot(space: SpaceReport | None) -> dict[str, Any] | None:
    """What the metrics keep of the audit's space: bytes per table (directory, index), the free bytes inside."""
    if space is None or not space.known:
        return None
    return {"tables": {t.name: t.bytes for t in space.tables if t.bytes is not None},
            "bytes": space.bytes, "free_bytes": space.free_bytes,
            "dead_rows": {t.name: t.dead_rows for t in space.tables if t.dead_rows is not None}}


# -- the collector ------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """Everything the metrics export for one store.

    ``totals``: the cumulative counters (None: no state store, so no counters);
    ``last_runs``: per operation, the last finished run's ``finished_at``
    (epoch seconds), ``duration_s`` and ``outcome``; ``audit``: the last
    audit's snapshot; ``lag``: see :func:`retention_lag`.
    """

    store: str
    totals: Mapping[str, float] | None = None
    last_success_at: float | None = None
    clean_at: float | None = None
    last_runs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    audit: Mapping[str, Any] | None = None
    lag: Lag | None = None
    #: 1 while a retention policy's emergency rule applies (disk pressure), 0 otherwise; None: unknown.
    pressure: float | None = None


class RetentionCollector:
    """A prometheus_client custom collector that exposes a :class:`Snapshot`."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Any]:
        """Nothing up front: the families depend on the snapshot (prometheus_client then calls collect)."""
        return []

    def collect(self) -> Iterator[Any]:
        """The metric families of the snapshot."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        s, store = self.snapshot, self.snapshot.store

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=["store", *labels])

        last_success = gauge("last_success_timestamp_seconds",
                             "When the last successful purge of the store finished (Unix time).")
        if s.last_success_at is not None:
            last_success.add_metric([store], s.last_success_at)
        yield last_success
        if s.clean_at is not None:
            clean = gauge("clean_timestamp_seconds", "The latest instant the store was known to hold no expired "
                          "run a purge would delete (time() minus it bounds the retention lag).")
            clean.add_metric([store], s.clean_at)
            yield clean
        if s.lag is not None and s.lag.seconds is not None:
            lag = gauge("lag_seconds", "Retention lag: an upper bound on how far past the cutoff the oldest expired "
                        "run still in the store is (0 when retention keeps up); see docs/operations.md.")
            lag.add_metric([store], s.lag.seconds)
            yield lag
        at = gauge("last_run_timestamp_seconds", "When the last run of the operation finished (Unix time).",
                   ("operation",))
        duration = gauge("last_duration_seconds", "How long the last run of the operation took.", ("operation",))
        success = gauge("last_run_success", "1 if the last run of the operation succeeded, 0 if it failed or "
                        "stopped (a lost lease, a new pin).", ("operation",))
        for operation, run in sorted(s.last_runs.items()):
            if run.get("finished_at") is not None:
                at.add_metric([store, operation], float(run["finished_at"]))
            if run.get("duration_s") is not None:
                duration.add_metric([store, operation], float(run["duration_s"]))
            success.add_metric([store, operation], 1.0 if run.get("outcome") == SUCCEEDED else 0.0)
        yield from (at, duration, success)
        if s.pressure is not None:
            pressure = gauge("disk_pressure", "1 while the retention policy's emergency rule applies because the "
                             "store is short of room (docs/policy.md), else 0.")
            pressure.add_metric([store], s.pressure)
            yield pressure
        if s.audit is not None:
            yield from self._audit(s.audit, store, gauge, s.last_success_at)
        if s.totals is not None:
            yield from self._counters(s.totals, store, CounterMetricFamily, HistogramMetricFamily)

    @staticmethod
    def _audit(audit: Mapping[str, Any], store: str, gauge: Callable[..., Any],
               last_success_at: float | None) -> Iterator[Any]:
        records = gauge("store_records", "Records per kind in the store, at the last audit.", ("kind",))
        size = gauge("store_bytes", "Bytes per kind in the store at the last audit (estimated where the store "
                     "cannot tell).", ("kind",))
        for kind, (count, nbytes) in sorted(audit.get("kinds", {}).items()):
            records.add_metric([store, kind], count)
            size.add_metric([store, kind], nbytes)
        yield from (records, size)
        space = audit.get("space")
        if space:
            tables = gauge("store_space_bytes", "Bytes each table (directory, index) of the store occupies, data and "
                           "indexes, at the last audit (see docs/operations.md, Space).", ("table",))
            for table, nbytes in sorted(space.get("tables", {}).items()):
                tables.add_metric([store, table], nbytes)
            yield tables
            if space.get("free_bytes") is not None:
                free = gauge("store_free_bytes", "Bytes free inside the store at the last audit (SQLite free pages, "
                             "MySQL data_free): reused by new data, not returned to the file system.")
                free.add_metric([store], space["free_bytes"])
                yield free
            if space.get("dead_rows"):
                dead = gauge("store_dead_rows", "Dead rows waiting for (auto)vacuum per table at the last audit "
                             "(PostgreSQL).", ("table",))
                for table, n in sorted(space["dead_rows"].items()):
                    dead.add_metric([store, table], n)
                yield dead
        runs = gauge("store_runs", "Runs per status in the store, at the last audit.", ("status",))
        for status, n in sorted(audit.get("runs_by_status", {}).items()):
            runs.add_metric([store, status], n)
        yield runs
        when = _when(audit.get("generated_at"))
        purged_since = last_success_at is not None and (when is None or last_success_at > when.timestamp())
        if audit.get("expired_runs") is not None and not purged_since:  # a purge since made it obsolete
            expired = gauge("expired_runs", "Runs a purge would have deleted at the last audit (a lower bound when "
                            "the audit stopped early).")
            expired.add_metric([store], audit["expired_runs"])
            yield expired
        if when is not None:
            audited = gauge("audit_timestamp_seconds", "When the last audit ran (Unix time).")
            audited.add_metric([store], when.timestamp())
            yield audited

    @staticmethod
    def _counters(totals: Mapping[str, float], store: str, counter: Any, histogram: Any) -> Iterator[Any]:
        def family(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return counter(f"{PREFIX}_{name}", doc, labels=["store", *labels])

        plain = {"runs_deleted": family("runs_deleted", "Runs deleted by purges."),
                 "runs_held": family("runs_held", "Expired runs kept because a child run survives (per purge)."),
                 "runs_changed": family("runs_changed", "Runs kept because they changed during the purge."),
                 "records_skipped": family("records_skipped", "Records left alone as unreadable or unsafe.")}
        data = family("data_deleted", "Data deleted with the runs, per kind.", ("kind",))
        orphans = family("orphans_deleted", "Orphans deleted, per kind.", ("kind",))
        failures = family("failures", "Runs that failed, or stopped on a lost lease (lease-lost) or a new pin "
                          "(pin-added).", ("operation", "outcome"))
        for name, metric in plain.items():
            metric.add_metric([store], totals.get(name, 0.0))
        batches: dict[str, dict[str, Any]] = {}
        for key, value in sorted(totals.items()):
            parts = key.split(_SEP)
            if parts[0] == "data_deleted" and len(parts) == 2:
                data.add_metric([store, parts[1]], value)
            elif parts[0] == "orphans_deleted" and len(parts) == 2:
                orphans.add_metric([store, parts[1]], value)
            elif parts[0] == "failures" and len(parts) == 3:
                failures.add_metric([store, parts[1], parts[2]], value)
            elif parts[0] == "batch" and len(parts) >= 3:
                entry = batches.setdefault(parts[1], {"buckets": {}, "sum": 0.0})
                if parts[2] == "le" and len(parts) == 4:
                    entry["buckets"][float(parts[3])] = value
                elif parts[2] == "sum":
                    entry["sum"] = value
        yield from (*plain.values(), data, orphans, failures)
        hist = histogram(f"{PREFIX}_batch_duration_seconds", "Time per batch (deleting it and selecting the next).",
                         labels=["store", "operation"])
        for operation, entry in sorted(batches.items()):
            cumulative, rows = 0.0, []
            for bound in (*BATCH_BUCKETS, float("inf")):
                cumulative += entry["buckets"].get(bound, 0.0)
                rows.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            hist.add_metric([store, operation], rows, entry["sum"])
        yield hist


def registry_for(snapshot: Snapshot) -> Any:
    """A new :class:`prometheus_client.CollectorRegistry` (never the global one) exposing ``snapshot``."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(RetentionCollector(snapshot))
    return registry


def text(registry: Any) -> str:
    """Prometheus' text exposition format (for a node-exporter textfile collector)."""
    from prometheus_client import generate_latest

    return str(generate_latest(registry).decode())


def push(url: str, registry: Any, store: str, *, replace: bool = True, timeout: float = 10.0) -> None:
    """Push ``registry`` to the Pushgateway at ``url`` (job ``workflow-retention``, grouping key ``store``).

    ``replace``: PUT, replacing every metric of the group (the registry holds
    them all); otherwise POST, replacing only the metrics pushed (used when the
    counters could not be read). ``user:password@`` in the URL is sent as
    basic auth, never as part of the address. A failure raises
    :class:`StorageError` naming the masked URL.
    """
    from prometheus_client import push_to_gateway, pushadd_to_gateway
    from prometheus_client.exposition import basic_auth_handler, default_handler

    parts = split_url(url, "Pushgateway URL")
    address = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path.rstrip('/')}"
    handler: Callable[..., Any] = default_handler
    if parts.username is not None or parts.password is not None:
        from urllib.parse import unquote

        user, password = unquote(parts.username or ""), unquote(parts.password or "")

        def handler(url: str, method: str, timeout: float | None, headers: list[tuple[str, str]],
                    data: bytes) -> Callable[[], None]:
            return basic_auth_handler(url, method, timeout, headers, data, user, password)

    send = push_to_gateway if replace else pushadd_to_gateway
    try:
        send(address, job=JOB, registry=registry, grouping_key={"store": store}, timeout=timeout, handler=handler)
    except Exception as exc:  # urllib's URLError/HTTPError/OSError, whatever the handler raised
        raise StorageError(f"cannot push metrics to the Pushgateway {redact_url(url)}: "
                           f"{scrub(f'{type(exc).__name__}: {exc}', url)}") from exc
