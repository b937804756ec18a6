"""The storage backend contract. Every backend implements it; this is its only documentation."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

from workflow_retention import values
from workflow_retention.exceptions import ConfigurationError, PurgeStopped
from workflow_retention.planning import chunked
from workflow_retention.report import AuditReport, Census, OrphanReport, PurgeReport
from workflow_retention.timeutil import require_aware, utcnow
from workflow_retention.urls import redact_url

if TYPE_CHECKING:
    from workflow_retention.seed import SeedRun

log = logging.getLogger("workflow_retention")

DEFAULT_BATCH_SIZE = 500
MAX_BATCH_SIZE = 10_000
DEFAULT_GRACE = timedelta(hours=1)


class Capability:
    """The differences between stores: the names ``StorageBackend.capabilities`` holds.

    Declared once per backend class and read by the code (``check`` reports them) and by the
    conformance suite, whose harnesses take their flags from the backend class.
    """

    #: The store holds pyworkflow schedules; a purge deletes the soft-deleted ones (status ``deleted``).
    SCHEDULES = "schedules"
    #: The store holds stream data (signals, subscriptions, acknowledgments); a purge deletes the aged ones.
    STREAMS = "streams"
    #: The store holds delayed signals (pyworkflow's PostgreSQL and memory stores); delivered ones are purged.
    SCHEDULED_SIGNALS = "scheduled_signals"
    #: A stored timestamp can be unreadable (text, JSON, or missing), not only a typed value.
    CORRUPTIBLE_TIMESTAMPS = "corruptible_timestamps"


@dataclass(frozen=True)
class BatchInfo:
    """Passed to ``on_batch`` at every batch boundary, before the batch is deleted."""

    index: int
    run_ids: tuple[str, ...]
    report: PurgeReport | OrphanReport


OnBatch = Callable[[BatchInfo], None]


@dataclass
class _Job:
    dry_run: bool
    batch_size: int
    on_batch: OnBatch | None

    def boundary(self, ids: Sequence[str]) -> None:
        """Mark a batch boundary: call it once per batch, after selection and before deleting.

        It counts the batch and runs ``on_batch`` (progress, the singleton
        lock's fencing check, test fault injection). Whatever it raises stops
        the purge here, before this batch is touched.
        """
        report = self.report  # type: ignore[attr-defined]
        report.batches += 1
        if self.on_batch is not None:
            self.on_batch(BatchInfo(report.batches, tuple(ids), report))


@dataclass
class PurgeJob(_Job):
    cutoff: datetime
    report: PurgeReport


@dataclass
class OrphanJob(_Job):
    """``not_after``: only data written before this instant may be treated as an orphan."""

    not_after: datetime
    report: OrphanReport


@dataclass
class CensusJob:
    now: datetime
    census: Census
    on_progress: Callable[[str, int], None] | None = None

    def progress(self, what: str, n: int) -> None:
        if self.on_progress is not None:
            self.on_progress(what, n)


def validate_batch_size(value: object, name: str = "batch_size") -> int:
    return values.integer(value, name, maximum=MAX_BATCH_SIZE, example=1000)


class StorageBackend(ABC):
    """A PyWorkflow store that workflow-retention can purge, repair and audit.

    **What a purge deletes.** :meth:`delete_old_runs` deletes every run whose
    status is terminal (``completed``, ``failed``, ``cancelled``,
    ``continued_as_new``, ``interrupted``) and whose ``updated_at`` is strictly
    earlier than ``older_than``. It never deletes a ``pending``, ``running`` or
    ``suspended`` run, nor a run updated at or after the cutoff.

    **Cascade.** With a run goes everything of it in the store's layout: its
    events (and event counter), steps, step checkpoints (``<run_id>:<step_id>``),
    hooks, hook-token index entries, cancellation flag, idempotency-key index
    entry, per-run lock files, and every secondary-index row, item or file that
    names it. An index entry shared by several runs (a hook id, a step id, an
    idempotency key) is deleted only while it still points to the run removed.
    The baseline's other sweeps run too: soft-deleted schedules (status
    ``deleted``) and stream data older than the cutoff (signals, terminal
    subscriptions, acknowledgments, delivered scheduled signals), each counted.

    **Timezones.** ``older_than`` must be timezone-aware; a naive datetime
    raises ``ValueError`` (:class:`ConfigurationError`) before anything is
    read. Stored timestamps are compared as instants, whatever UTC offset they
    were written with; naive stored values are UTC wall-clock. A record whose
    ``updated_at`` cannot be parsed is never deleted; it is counted in
    ``report.skipped`` with a warning. So is a run whose id is unsafe
    (see :func:`workflow_retention.planning.is_safe_run_id`).

    **Parents and children.** A run is deleted only if each of its child runs
    is deleted too (the engine's ``parent_run_id`` reference has no ON DELETE
    action). Children go before their parent. An expired parent with a
    surviving child is kept and counted in ``report.held`` until the child goes.

    **Live engine.** Each run is committed to deletion by one atomic step that
    re-checks its status and ``updated_at`` with the store's own concurrency
    control. A run that changed between selection and that step keeps all of
    its data and is counted in ``report.changed``. Backends whose store has no
    transaction spanning a run's data document how they keep this promise.

    **Batches and crashes.** Runs are found through an index, page by page
    (keyset paging, never an offset), and deleted in batches of ``batch_size``,
    so memory is bounded by the batch, not by the store, and every transaction
    is bounded. Before each batch is deleted ``on_batch`` is called with a
    :class:`BatchInfo`; this is the fencing point (the Celery task checks its
    lock lease there), and whatever it raises stops the purge before that
    batch. A run's other data is deleted before the record the next purge
    finds it by, so a crash or stop at any point leaves a state the next purge
    completes. A rerun deletes nothing more and reports zero.

    **Dry run.** ``dry_run=True`` makes the same selection, counts everything
    that would go, and changes nothing. On a store nobody writes to, its counts
    equal those of the real purge that follows.

    **Return value and errors.** A :class:`PurgeReport`: the number of runs,
    a count per kind of data, the cutoff, ``held``, ``changed``, ``skipped``,
    the dry-run flag, batches and duration; it serializes to JSON. If
    ``on_batch`` raises :class:`PurgeStopped` (a lost lease), the purge stops
    and the partial report, with ``stopped`` set, is returned. Any other
    failure is logged at ERROR and raised; store errors are raised as
    :class:`StorageError` with the driver's error chained.

    :meth:`sweep_orphans` and :meth:`audit` follow the same rules for paging,
    batches, ``on_batch`` and errors; see their docstrings.
    """

    #: URL scheme(s) this backend is registered under.
    name: ClassVar[str] = ""
    #: :class:`Capability` names: the differences between stores that callers and the test suite rely on.
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: Batch size when none is given (a store may afford larger or need smaller batches).
    default_batch_size: ClassVar[int] = DEFAULT_BATCH_SIZE

    def __init__(self, *, url: str | None = None, batch_size: int | None = None) -> None:
        self.url = redact_url(url or f"{self.name}://")
        self.batch_size = validate_batch_size(batch_size if batch_size is not None else self.default_batch_size)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, **options: object) -> StorageBackend:
        """Build the backend from its storage URL; ``options`` go to the constructor.

        A malformed URL raises :class:`ConfigurationError` naming the expected form.
        """

    # -- connection -----------------------------------------------------------

    @abstractmethod
    def open(self) -> None:
        """Connect to the store. Purges call it themselves; calling it twice is harmless."""

    @abstractmethod
    def close(self) -> None:
        """Release connections. The backend may be opened again."""

    def __enter__(self) -> StorageBackend:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self) -> dict[str, object]:
        """Connect and verify the store looks like a PyWorkflow store; return what was found."""
        self.open()
        return {"backend": self.name, "url": self.url, **self._check(),
                "capabilities": ", ".join(sorted(self.capabilities)) or "(none)"}

    # -- the purge ------------------------------------------------------------

    def delete_old_runs(
        self,
        older_than: datetime,
        *,
        dry_run: bool = False,
        batch_size: int | None = None,
        on_batch: OnBatch | None = None,
    ) -> PurgeReport:
        """Delete every expired run with everything of it, children before parents (see the class docstring).

        ``older_than``: the cutoff, a timezone-aware datetime; a run goes when its status is terminal and its
        ``updated_at`` is strictly earlier. ``dry_run``: select and count exactly as a purge would, change
        nothing. ``batch_size``: runs per batch (1 to 10,000; default: the backend's). ``on_batch``: called
        with a :class:`BatchInfo` before each batch is deleted, with nothing of the store locked; raising
        :class:`PurgeStopped` there stops the purge cleanly (the report says so), anything else aborts it.

        Returns the :class:`PurgeReport`. Raises :class:`ConfigurationError` for a naive or out-of-range
        cutoff or a bad batch size, before anything is read; :class:`StorageError` (the driver's error
        chained) when the store fails. Records that cannot be judged safely (an unreadable timestamp, an
        unsafe id, a status pyworkflow never writes) are kept, counted in ``skipped`` and described in
        ``warnings``.
        """
        cutoff = require_aware(older_than, "older_than")
        size = self._batch_size(batch_size)
        report = PurgeReport(backend=self.url, dry_run=dry_run, cutoff=cutoff, started_at=utcnow())
        job = PurgeJob(dry_run=dry_run, batch_size=size, on_batch=on_batch, cutoff=cutoff, report=report)
        log.info("purge started backend=%s cutoff=%s dry_run=%s batch_size=%d",
                 self.url, cutoff.isoformat(), dry_run, size)
        self._run("purge", report, lambda: self._purge(job))
        log.info("purge finished backend=%s runs=%d held=%d changed=%d skipped=%d dry_run=%s "
                 "batches=%d duration_s=%.3f counts=%s%s", self.url, report.runs, report.held,
                 report.changed, report.skipped, dry_run, report.batches, report.duration_s,
                 dict(report.counts), f" stopped={report.stopped!r}" if report.stopped else "")
        return report

    def sweep_orphans(
        self,
        *,
        grace: timedelta = DEFAULT_GRACE,
        dry_run: bool = False,
        batch_size: int | None = None,
        on_batch: OnBatch | None = None,
    ) -> OrphanReport:
        """Delete data that names a run with no run record ("orphans").

        An orphan is any event, step, checkpoint, hook, token-index entry,
        cancellation flag, idempotency entry, secondary-index row or item, or
        lock file naming a run_id for which no run record exists. Data younger
        than ``grace`` is left alone (a run may be mid-creation), where the
        store records when it was written; the absence of the run record is
        re-checked right before each delete. The store is streamed in pages
        of ``batch_size``. The report counts orphans per kind and the bytes
        freed (exact for file stores, an estimate elsewhere). A dry run
        deletes nothing; a rerun finds nothing.
        """
        if not isinstance(grace, timedelta) or grace < timedelta(0):
            raise ConfigurationError(f"grace must be a non-negative timedelta, e.g. timedelta(hours=1); got {grace!r}")
        size = self._batch_size(batch_size)
        report = OrphanReport(backend=self.url, dry_run=dry_run, grace_s=grace.total_seconds(),
                              started_at=utcnow())
        job = OrphanJob(dry_run=dry_run, batch_size=size, on_batch=on_batch,
                        not_after=utcnow() - grace, report=report)
        log.info("orphan sweep started backend=%s grace_s=%d dry_run=%s", self.url, grace.total_seconds(), dry_run)
        self._run("orphan sweep", report, lambda: self._sweep_orphans(job))
        log.info("orphan sweep finished backend=%s orphans=%d bytes=%d%s dry_run=%s duration_s=%.3f counts=%s",
                 self.url, report.total, report.bytes, " (estimate)" if report.bytes_estimated else "",
                 dry_run, report.duration_s, dict(report.counts))
        return report

    def audit(
        self,
        *,
        older_than: datetime | None = None,
        grace: timedelta = DEFAULT_GRACE,
        on_progress: Callable[[str, int], None] | None = None,
    ) -> AuditReport:
        """Describe the store without changing it.

        Runs by status and by age (of ``updated_at``), data per kind with
        sizes where the store can tell, what a purge with ``older_than`` would
        delete (a dry run), and the orphans a sweep would remove (a dry run).
        """
        cutoff = require_aware(older_than, "older_than") if older_than is not None else None
        started = time.monotonic()
        now = utcnow()
        census = Census()
        self.open()
        self._census(CensusJob(now=now, census=census, on_progress=on_progress))

        def batches(info: BatchInfo) -> None:
            if on_progress is not None:
                on_progress("batch", info.index)

        purge = self.delete_old_runs(cutoff, dry_run=True, on_batch=batches) if cutoff else None
        orphans = self.sweep_orphans(grace=grace, dry_run=True, on_batch=batches)
        return AuditReport(backend=self.url, generated_at=now, census=census, purge=purge,
                           orphans=orphans, duration_s=round(time.monotonic() - started, 3))

    def seed(self, runs: Iterable[SeedRun], *, batch_size: int | None = None) -> int:
        """Write runs from :mod:`workflow_retention.seed` in the store's PyWorkflow layout."""
        size = self._batch_size(batch_size)
        self.open()
        self._prepare_seed()
        total = 0
        for chunk in chunked(runs, size):
            self._write_seed(chunk)
            total += len(chunk)
        return total

    def _batch_size(self, batch_size: int | None) -> int:
        """A per-call ``batch_size``, validated, or the backend's own."""
        return validate_batch_size(batch_size) if batch_size is not None else self.batch_size

    def _run(self, what: str, report: PurgeReport | OrphanReport, body: Callable[[], None]) -> None:
        started = time.monotonic()
        try:
            self.open()
            body()
        except PurgeStopped as exc:
            report.stopped = str(exc) or type(exc).__name__
            log.error("%s stopped at a batch boundary backend=%s reason=%s", what, self.url, report.stopped)
        except Exception as exc:
            # The caller reports the error it receives (the CLI's one ERROR line, Celery's failed task);
            # this line says where it stopped, and the traceback is for DEBUG logs.
            log.info("%s failed backend=%s after %d batches: %s: %s", what, self.url, report.batches,
                        type(exc).__name__, exc)
            log.debug("%s failure traceback backend=%s", what, self.url, exc_info=True)
            raise
        finally:
            report.duration_s = round(time.monotonic() - started, 3)

    # -- what each backend implements -------------------------------------------

    @abstractmethod
    def _purge(self, job: PurgeJob) -> None:
        """Delete (or count, in a dry run) per the class contract, into ``job.report``."""

    @abstractmethod
    def _sweep_orphans(self, job: OrphanJob) -> None:
        """Find and delete orphans per :meth:`sweep_orphans`, into ``job.report``."""

    @abstractmethod
    def _census(self, job: CensusJob) -> None:
        """Fill ``job.census``: runs by status and age, data per kind."""

    @abstractmethod
    def _check(self) -> dict[str, object]:
        """Verify the connection and layout; return facts worth printing."""

    @abstractmethod
    def _prepare_seed(self) -> None:
        """Create the PyWorkflow layout (tables, directories) if it does not exist yet."""

    @abstractmethod
    def _write_seed(self, runs: list[SeedRun]) -> None:
        """Write one batch of seed runs exactly as pyworkflow-engine would store them."""
