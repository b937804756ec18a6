"""The storage backend contract. Every backend implements it; this is its only documentation."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from workflow_retention import values
from workflow_retention.exceptions import ConfigurationError, PurgeStopped, RetentionError
from workflow_retention.planning import Expiry, RunRef, chunked
from workflow_retention.report import AuditReport, Census, OrphanReport, PurgeReport, SpaceReport
from workflow_retention.timeutil import require_aware, utcnow
from workflow_retention.urls import redact_url

if TYPE_CHECKING:
    from workflow_retention.archive import ArchiveStore
    from workflow_retention.archiving import Archiving, Gathered, RestoreReport
    from workflow_retention.explain import Explanation
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
    #: :meth:`StorageBackend.shards` splits the store into several disjoint shards that can be purged
    #: concurrently, each reporting its cursor and resumable from it (see "Shards" in the class docstring).
    SHARDS = "shards"
    #: The backend gathers each batch's runs for an archive before deleting them and restores archived runs
    #: (:meth:`StorageBackend._gather`, :meth:`StorageBackend._restore`; docs/archive.md).
    ARCHIVE = "archive"
    #: With an archive, the delete compares each archived run's records with what it is about to delete (SQL:
    #: row counts under its lock; memory: values under its lock; Cassandra and DynamoDB: the cascade's findings,
    #: value for value): a record the engine wrote after the batch was archived keeps the run, or is archived
    #: too before it goes. Without it a purge with an archive says, at WARNING, that such a record would go
    #: unarchived (docs/archive.md, "Limits").
    ARCHIVE_RECHECK = "archive_recheck"



@dataclass(frozen=True)
class BatchInfo:
    """Passed to ``on_batch`` at every batch boundary, before the batch is deleted."""

    index: int
    run_ids: tuple[str, ...]
    report: PurgeReport | OrphanReport


OnBatch = Callable[[BatchInfo], None]
#: Called after every finished batch with the purge's cursor (a string, the last key it finished) and its
#: report so far (persist both, and a resumed purge's report adds up with the one that stopped).
OnCursor = Callable[[str, PurgeReport], None]
#: The most shards a store is split into.
MAX_SHARDS = 1024


@dataclass(frozen=True)
class Shard:
    """A disjoint part of a store's runs, as :meth:`StorageBackend.shards` plans it.

    ``index`` (0-based) of ``count`` shards; ``spec``: what the backend needs to page only this part
    (a range of its paging key, a token range, a Scan segment, a hash range of run ids), made of JSON
    values only. A shard crosses process boundaries (a Celery message, a process pool) as
    :meth:`to_dict` and comes back with :meth:`from_dict`. The shard with ``count == 1`` is the whole
    store (:meth:`whole`).
    """

    index: int = 0
    count: int = 1
    spec: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def whole(cls) -> Shard:
        """The one shard of a store that cannot be split (or is not): every run."""
        return cls(0, 1, {})

    @property
    def is_whole(self) -> bool:
        return self.count == 1

    @property
    def label(self) -> str:
        """``1/4``: the shard's 1-based position, for logs and reports."""
        return f"{self.index + 1}/{self.count}"

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "count": self.count, "spec": dict(self.spec)}

    @classmethod
    def from_dict(cls, data: Any) -> Shard:
        """The shard :meth:`to_dict` described; :class:`ConfigurationError` for anything else."""
        try:
            index, count, spec = data["index"], data["count"], data.get("spec", {})
            ok = (isinstance(index, int) and isinstance(count, int) and isinstance(spec, dict)
                  and 1 <= count <= MAX_SHARDS and 0 <= index < count)
        except (TypeError, KeyError, AttributeError):
            ok = False
        if not ok:
            raise ConfigurationError(f"a shard must be {{'index': i, 'count': n, 'spec': {{...}}}} with "
                                     f"0 <= i < n <= {MAX_SHARDS}; got {data!r}")
        return cls(index, count, dict(spec))


def validate_shards(value: object, name: str = "shards") -> int:
    """A number of shards: an integer from 1 to :data:`MAX_SHARDS`."""
    return values.integer(value, name, maximum=MAX_SHARDS, example=4)


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
    """One purge: the cutoff, its report, and for a shard purge the shard, where to resume and ``on_cursor``."""

    cutoff: datetime
    report: PurgeReport
    shard: Shard = field(default_factory=Shard.whole)
    resume_after: str | None = None
    on_cursor: OnCursor | None = None
    #: :meth:`StorageBackend.explain`'s dry run: exactly these runs are the candidates, read by id (not paged
    #: from the index), planned with their descendants by the same rules; no schedule or stream sweep.
    only: frozenset[str] | None = None
    #: The purge's archive (``delete_old_runs(archive=...)``): every batch is archived, verified, at its boundary.
    archive: Archiving | None = None

    def boundary(self, ids: Sequence[str]) -> None:
        """As :meth:`_Job.boundary`; with an archive, the runs of ``ids`` that have a record are then gathered
        and written as one verified object before this returns (an :class:`ArchiveError` stops the purge
        here, nothing of the batch deleted). Batches of other records (schedules, stream data, the rows of
        runs whose records an interrupted purge deleted) find no run record and write nothing."""
        super().boundary(ids)
        if self.archive is not None:
            self.archive.batch(ids)

    def archive_records(self, found: Mapping[str, Mapping[str, list[Any]]]) -> None:
        """Records of runs this purge already committed, found after their batch and about to be deleted (a
        store that finds step checkpoints by one scan after the batches): ``{run_id: {kind: [raw record]}}``.
        With an archive they are written as one verified object before this returns (an
        :class:`ArchiveError` stops the purge, nothing of them deleted); without one, nothing happens. Call it
        after :meth:`boundary` and before deleting them; only a backend that has such records calls it."""
        if self.archive is not None and not self.dry_run:
            self.archive.records(found)

    @property
    def partial(self) -> bool:
        """A shard of several: only this shard's runs, no schedule or stream sweep (the final pass does those)."""
        return not self.shard.is_whole

    def within(self, run_ids: set[str]) -> set[str]:
        """Those of ``run_ids`` this purge may delete (or count): all, or with ``only`` those among them."""
        return run_ids if self.only is None else run_ids & self.only

    @property
    def sweep_cutoff(self) -> datetime:
        """The schedule and stream sweeps' cutoff: ``cutoff``, or a policy's default rule (:class:`Expiry`)."""
        return self.cutoff.sweep_cutoff if isinstance(self.cutoff, Expiry) else self.cutoff

    @property
    def sweeps(self) -> bool:
        """Whether this purge also sweeps schedules and stream data: a whole-store purge of every run does."""
        return not self.partial and self.only is None

    def finished(self, cursor: str) -> None:
        """Report the cursor after a batch is done (deleted, or counted in a dry run): ``on_cursor(cursor, report)``.

        The cursor is the last key of the shard's paging order the purge has finished with; a purge given
        it as ``resume_after`` starts after it. Whatever ``on_cursor`` raises stops the purge here, like
        ``on_batch`` (:class:`PurgeStopped`: cleanly, the report says so).
        """
        if self.on_cursor is not None:
            self.on_cursor(cursor, self.report)


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

    **Retention policies.** ``older_than`` may be a policy's
    :class:`~workflow_retention.planning.Expiry` (docs/policy.md): as a datetime it is the latest cutoff any
    rule gives, and the backend pages its candidates with it exactly as with a plain cutoff; the per-run
    decision (status and workflow name, pins, ``keep_last``) is made by :meth:`RunRef.is_expired`, so every
    ``RunRef`` a backend builds carries ``workflow_name`` as stored. ``keep_last`` asks
    :meth:`_newest_runs`; the schedule and stream sweeps use ``PurgeJob.sweep_cutoff``. An Expiry is never
    pickled: a backend passes it on as it is.

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

    **Archive.** ``delete_old_runs(archive=...)`` (a URL or an
    :class:`~workflow_retention.archive.ArchiveStore`) archives before it deletes, on a backend with
    :attr:`Capability.ARCHIVE`; the rules live once in :mod:`workflow_retention.archiving`. At every batch
    boundary, after ``on_batch``, :meth:`_gather` returns each run of the batch that has a record with
    everything the purge will delete of it, in the store's own terms; the batch is written as one object,
    read back and verified, and only then does the backend delete it. The archive is checked before the
    store is read: unreachable, unwritable or a checksum that differs raises :class:`ArchiveError` and
    nothing of that batch is deleted. A run archived by a purge that did not finish (a crash between archive
    and delete) is not archived again. A run archived and then kept is recorded as superseded; the manifest
    is written last. :meth:`restore` writes archived runs back (:meth:`_restore`), refusing runs that exist.

    **Shards.** :meth:`shards` splits the store into ``n`` disjoint
    :class:`Shard` s that together cover every run, computed from the store's
    metadata or key space, never by a scan of the runs (SQL: ranges of the key
    the purge pages on; Cassandra: token ranges; DynamoDB: parallel Scan
    segments; file: hash ranges of the run id). A backend without
    :attr:`Capability.SHARDS` returns the one whole-store shard. A shard is
    purged with ``delete_old_runs(..., shard=s)``; several shards of one plan
    may be purged at the same time, by different processes or hosts, and the
    rules above hold for each of them and for all of them together:

    * *Same planning code.* A shard screens, plans, re-checks and holds with the
      same rules (:mod:`workflow_retention.planning`) as a whole-store purge.
      A family is planned by the shard holding its root (a run whose parent is
      missing or not eligible); its descendants are found through the parent
      link, whatever shard they are in, and a shard never plans a run whose
      parent is eligible. A backend that cannot find children without a full
      scan (file) leaves every run that has a child to the final pass instead.
    * *No parent before its children.* No shard deletes a run while a child of
      it exists that is not deleted in the same step (children first).
    * *Runs only.* A shard of several purges runs; the schedule and stream
      sweeps belong to the whole-store purge.
    * *The final pass.* An expired parent that a shard could not delete because
      a child was still present when it looked is deleted by one ordinary
      whole-store purge run after all the shards (:mod:`workflow_retention.shards`
      does this): only what the shards kept remains for it, and its ``held`` is
      the purge's. The merged report of the shards and the final pass equals
      that of one whole-store purge of the same data.
    * *Cursors.* After each batch of a shard is finished, ``on_cursor(cursor,
      report)`` is called with the last key of the shard's paging order it is
      done with (a string) and the report so far (persisted with the cursor, it
      lets a resumed purge's report add up with the one that stopped: a kill
      between a batch's commit and the write of its cursor loses that batch
      from the counts, never from the purge). ``resume_after=cursor`` makes a
      later purge of the same shard start after it, without redoing the
      batches before; what lies before the
      cursor and is still there (a held run, a run expired since) is left to the
      final pass. A backend may report no cursor (then a retry restarts the
      shard, which is safe: a rerun deletes nothing twice). Whatever
      ``on_cursor`` raises stops the purge like ``on_batch``.

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
        shard: Shard | None = None,
        resume_after: str | None = None,
        on_cursor: OnCursor | None = None,
        archive: ArchiveStore | str | None = None,
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

        ``shard``: purge only this shard of :meth:`shards` (default: the whole store). ``resume_after``: a
        cursor this shard reported earlier; start after it. ``on_cursor``: called with the shard's cursor and
        the report so far after every finished batch (see "Shards" in the class docstring). A shard of
        several on a backend without :attr:`Capability.SHARDS`, or a cursor that is not a string, is a
        :class:`ConfigurationError`.

        ``archive``: archive every batch before deleting it (see "Archive" in the class docstring); a URL
        that cannot be used, or a backend without :attr:`Capability.ARCHIVE`, is a
        :class:`ConfigurationError` before anything is read; an archive that cannot be reached, written or
        verified raises :class:`ArchiveError` before the batch concerned is deleted. A dry run only checks
        that the archive can be reached.
        """
        from workflow_retention.archive import OK
        from workflow_retention.archiving import Archiving, prepare

        cutoff = self._cutoff(older_than)
        size = self._batch_size(batch_size)
        part = self._check_shard(shard)
        if resume_after is not None and not isinstance(resume_after, str):
            raise ConfigurationError(f"resume_after must be a cursor string reported by on_cursor; "
                                     f"got {resume_after!r}")
        store = prepare(self, archive, dry_run)
        report = PurgeReport(backend=self.url, dry_run=dry_run, cutoff=cutoff, started_at=utcnow())
        job = PurgeJob(dry_run=dry_run, batch_size=size, on_batch=on_batch, cutoff=cutoff, report=report,
                       shard=part, resume_after=resume_after, on_cursor=on_cursor)
        where = "" if part.is_whole else f" shard={part.label}"
        resume = f" resume_after={resume_after!r}" if resume_after is not None else ""
        log.info("purge started backend=%s cutoff=%s dry_run=%s batch_size=%d%s%s%s",
                 self.url, cutoff.isoformat(), dry_run, size, where, resume,
                 f" archive={store.url}" if store is not None else "")
        if store is not None and not dry_run:
            job.archive = Archiving.start(self, store, cutoff, report.started_at or utcnow())
            if Capability.ARCHIVE_RECHECK not in self.capabilities:
                report.warn(f"the {self.name} store does not re-check archived runs at the delete: a record the "
                            "engine writes to a run between its batch's archive and its delete (an event "
                            "appended to a finished run) would be deleted without being archived "
                            "(docs/archive.md, Limits)")
        try:
            self._run("purge", report, lambda: self._purge(self._bind(job)))
        except BaseException as exc:
            if job.archive is not None:
                job.archive.abandon(report, exc)
            raise
        if job.archive is not None:
            job.archive.close("stopped" if report.stopped else OK, report)
        log.info("purge finished backend=%s%s runs=%d held=%d changed=%d skipped=%d dry_run=%s "
                 "batches=%d duration_s=%.3f counts=%s%s", self.url, where, report.runs, report.held,
                 report.changed, report.skipped, dry_run, report.batches, report.duration_s,
                 dict(report.counts), f" stopped={report.stopped!r}" if report.stopped else "")
        return report

    @staticmethod
    def _cutoff(older_than: datetime) -> datetime:
        """``older_than`` validated: an aware datetime in range, or a policy's :class:`Expiry` whose bound is."""
        if isinstance(older_than, Expiry):
            require_aware(older_than.bound, "older_than")
            return older_than
        return require_aware(older_than, "older_than")

    def _bind(self, job: PurgeJob) -> PurgeJob:
        """A policy's cutoff bound to this store for this purge (``keep_last`` asks :meth:`_newest_runs`)."""
        if isinstance(job.cutoff, Expiry):
            job.cutoff = job.cutoff.bound_to(self._newest_runs if job.cutoff.keeps_last else None,
                                             self.ranks_whole_store)
        return job

    #: :meth:`_newest_runs` ranks every workflow name in one call (a pass over the store, or one statement): a
    #: purge asks it once before it starts instead of once per workflow name it meets.
    ranks_whole_store: ClassVar[bool] = False

    def _newest_runs(self, names: set[str], n: int) -> dict[str, list[str]]:
        """For each workflow name of ``names`` (a backend that reads them all in one pass may return more), the ids
        of its ``n`` most recent *terminal* runs by ``created_at`` (then ``run_id``), newest first.

        ``keep_last`` of a policy (:class:`Expiry`) asks once per workflow name per purge. Runs whose
        ``created_at`` cannot be read are not ranked. The cost per store is in ``docs/backends/``.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot rank runs per workflow (_newest_runs): "
                                  "keep_last is not available on it")

    def shards(self, n: int, until: datetime | None = None) -> list[Shard]:
        """Split the store into at most ``n`` disjoint shards that together cover every run.

        Computed without a scan of the runs (the store's key space or metadata). A backend without
        :attr:`Capability.SHARDS`, or ``n == 1``, gives ``[Shard.whole()]``. Each shard is JSON-serialisable
        (:meth:`Shard.to_dict`) and is purged with ``delete_old_runs(..., shard=...)``. ``n``: 1 to
        :data:`MAX_SHARDS` (:class:`ConfigurationError` otherwise). ``until``: the purge's cutoff (a policy's
        latest), a hint for balance only: a run created at or after it cannot have expired (``created_at`` is at
        most ``updated_at``), so a backend whose shards are spans of creation time spreads them below it. The
        shards cover every run whatever ``until`` is.
        """
        n = validate_shards(n)
        if n == 1 or Capability.SHARDS not in self.capabilities:
            return [Shard.whole()]
        self.open()
        planned = self._shards(n, until)
        if not planned or any(s.count != len(planned) or s.index != i for i, s in enumerate(planned)):
            raise RuntimeError(f"{type(self).__name__}._shards({n}) must return shards 0..k-1 of count k")
        return planned

    def _check_shard(self, shard: Shard | None) -> Shard:
        if shard is None:
            return Shard.whole()
        if not isinstance(shard, Shard):
            shard = Shard.from_dict(shard)
        if not shard.is_whole and Capability.SHARDS not in self.capabilities:
            raise ConfigurationError(f"the {self.name} backend cannot be sharded: purge its one shard "
                                     f"(shards(n) returns it); got shard {shard.label}")
        return shard

    def _shards(self, n: int, until: datetime | None) -> list[Shard]:
        """The shards of a backend with :attr:`Capability.SHARDS` (``n`` > 1); see :meth:`shards`."""
        raise NotImplementedError(f"{type(self).__name__} declares Capability.SHARDS but has no _shards()")

    def explain(self, run_id: str, older_than: datetime) -> Explanation:
        """Would a purge with cutoff ``older_than`` delete ``run_id`` now, and if not, why not.

        The reasons come from the purge's rules applied to the run, its ancestors and its
        descendants (read by id through :meth:`_read_runs` and :meth:`_read_children`); the
        verdict and the counts per kind come from this backend's own purge, run as a dry run
        over exactly that family (``PurgeJob.only``). Nothing is written. Returns an
        :class:`~workflow_retention.explain.Explanation`; :class:`ConfigurationError` for a naive
        cutoff or an empty id, :class:`StorageError` when the store fails.
        """
        from workflow_retention.explain import explain_run

        cutoff = self._cutoff(older_than)
        if not isinstance(run_id, str) or not run_id:
            raise ConfigurationError(f"explain needs a run id (a non-empty string); got {run_id!r}")

        def dry_run(family: frozenset[str]) -> tuple[PurgeReport, set[str]]:
            report = PurgeReport(backend=self.url, dry_run=True, cutoff=cutoff, started_at=utcnow())
            going: set[str] = set()
            job = PurgeJob(dry_run=True, batch_size=self.batch_size, on_batch=lambda b: going.update(b.run_ids),
                           cutoff=cutoff, report=report, only=family)
            self._run("explain", report, lambda: self._purge(self._bind(job)))
            return report, going

        self.open()
        if isinstance(cutoff, Expiry):
            cutoff = cutoff.bound_to(self._newest_runs if cutoff.keeps_last else None, self.ranks_whole_store)
        return explain_run(run_id, cutoff, self.url, self._read_runs, self._read_children, dry_run)

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
        cutoff = self._cutoff(older_than) if older_than is not None else None
        started = time.monotonic()
        now = utcnow()
        census = Census()
        self.open()
        self._census(CensusJob(now=now, census=census, on_progress=on_progress))

        def batches(info: BatchInfo) -> None:
            if on_progress is not None:
                on_progress("batch", info.index)

        def phase(name: str) -> None:
            """Announce a phase (progress output); not a stopping point: a bounded audit stops inside phases."""
            if on_progress is not None:
                try:
                    on_progress(name, 0)
                except PurgeStopped:
                    pass

        if cutoff:
            phase("purge preview")
        purge = self.delete_old_runs(cutoff, dry_run=True, on_batch=batches) if cutoff else None
        phase("orphan scan")
        orphans = self.sweep_orphans(grace=grace, dry_run=True, on_batch=batches)
        phase("space")
        space = self.measured_space()
        return AuditReport(backend=self.url, generated_at=now, census=census, purge=purge,
                           orphans=orphans, duration_s=round(time.monotonic() - started, 3), space=space)

    def seed(self, runs: Iterable[SeedRun], *, batch_size: int | None = None, require_empty: bool = False,
             on_progress: Callable[[str, int], None] | None = None) -> int:
        """Write runs from :mod:`workflow_retention.seed` in the store's PyWorkflow layout.

        ``require_empty``: refuse (:class:`~workflow_retention.seed.StoreNotEmpty`, a
        :class:`ConfigurationError`) when the store already holds runs, before anything is written
        (``seed`` without ``--append``). Without it the runs are added beside what is there: their ids must
        be new (:func:`~workflow_retention.seed.generate` with a fresh ``salt``); a file or memory store
        refuses a run id it already holds (:class:`StorageError`), SQL's primary key too, Cassandra and
        DynamoDB would overwrite it. ``on_progress("runs", n)`` after every batch written.
        """
        from workflow_retention.seed import SEED_COUNT_LIMIT, StoreNotEmpty

        size = self._batch_size(batch_size)
        self.open()
        self._prepare_seed()
        if require_empty:
            held, exact = self._count_runs(SEED_COUNT_LIMIT)
            if held:
                raise StoreNotEmpty(self.url, held, exact)
        total = 0
        for chunk in chunked(runs, size):
            self._write_seed(chunk)
            total += len(chunk)
            if on_progress is not None:
                on_progress("runs", total)
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
            report.stop_outcome = exc.outcome
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

    def restore(self, archive: ArchiveStore | str, run_ids: Iterable[str] | None = None,
                on_progress: Callable[[int], None] | None = None) -> RestoreReport:
        """Write archived runs back into this store in its own layout (``run_ids``; None: every archived run).

        The newest archived line of each run is written, parents before children, exactly as archived (the
        store's raw rows, items or files), so the store is as it was before the purge. A run that exists in
        the store, is not in the archive, or was archived from another kind of store is refused (reported in
        :attr:`RestoreReport.refused`, nothing of it written). :class:`ConfigurationError` on a backend
        without :attr:`Capability.ARCHIVE`; :class:`ArchiveError` / :class:`StorageError` when either side fails.
        """
        from workflow_retention.archive import open_archive
        from workflow_retention.archiving import restore

        store = open_archive(archive) if isinstance(archive, str) else archive
        self.open()
        return restore(self, store, run_ids, on_progress)

    # -- what each backend implements -------------------------------------------

    @abstractmethod
    def _purge(self, job: PurgeJob) -> None:
        """Delete (or count, in a dry run) per the class contract, into ``job.report``."""

    @abstractmethod
    def _read_runs(self, run_ids: set[str]) -> dict[str, RunRef]:
        """The runs of ``run_ids`` that have a record, as plans see them (:meth:`RunRef.parse`).

        A record that exists but cannot be read at all is returned with ``unreadable`` saying why.
        Reads only; no lock is taken (used by :meth:`explain`).
        """

    @abstractmethod
    def _read_children(self, parent_ids: Sequence[str]) -> dict[str, list[RunRef]]:
        """The child runs of each of ``parent_ids`` (by ``parent_run_id``), as :meth:`_read_runs` gives them."""

    def _record_key(self, kind: str, record: Any) -> Any:
        """The key of one archived record of ``kind`` (hashable), or None: restore keeps the last record of each
        key, so a record a purge archived again (the engine rewrote it before the delete) replaces the earlier
        version. None (the default): every record is written as archived."""
        return None

    def _gather(self, run_ids: Sequence[str]) -> dict[str, Gathered]:
        """Archive primitive (:attr:`Capability.ARCHIVE`): for each of ``run_ids`` that has a run record, the
        run as :meth:`_read_runs` gives it and everything a purge deletes of it, read raw in the store's own
        terms: ``{kind: [record, ...]}`` where kind is a table, item kind or folder, and each record a raw
        row (column -> value), item or file as the store holds it (values that
        :func:`workflow_retention.archiving.encode` takes: datetimes, bytes, engine dataclasses...). Ids with
        no record are left out. Called at a batch boundary with nothing of the store locked; reads only."""
        raise NotImplementedError(f"{type(self).__name__} cannot archive (no _gather)")

    def _restore(self, lines: list[dict[str, Any]]) -> None:
        """Archive primitive: write back the runs of ``lines`` (each ``{"run_id", "records": {kind: [raw
        record, ...]}}`` as :meth:`_gather` gave it), exactly as they were. The caller has checked that none of
        them exists and gives parents before children; a run that appears meanwhile fails the write
        (:class:`StorageError`) rather than being overwritten, where the store can tell."""
        raise NotImplementedError(f"{type(self).__name__} cannot restore (no _restore)")

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

    # -- space: what the store occupies (``purge`` reports it after a purge, ``audit`` per table) -----------

    #: :meth:`vacuum` gives free space inside the store back to the file system (SQLite).
    can_vacuum: ClassVar[bool] = False
    #: Seconds after a writer closed its connections before :meth:`space` includes its writes (PostgreSQL's
    #: statistics: dead rows); after a purge, the CLI closes the backend and waits this long before it measures.
    space_settle_s: float = 0.0

    def space(self) -> SpaceReport:
        """What the store occupies now and how much of it is free for reuse, as cheaply as the store can tell.

        Per table (SQL), directory (file) or kind: bytes used (data, indexes), bytes free inside the store
        (SQLite free pages, MySQL ``data_free``), dead rows not yet vacuumed and the last autovacuum
        (PostgreSQL), with notes: autovacuum lagging, figures the service refreshes only every few hours
        (DynamoDB), figures the store cannot give at all (Cassandra without ``nodetool``, memory). A
        backend that cannot tell returns a report with ``known=False`` and a note saying why, never made-up
        numbers. It reads metadata only (catalog views, ``PRAGMA``, ``DescribeTable``), except on file stores,
        whose bytes are the sizes of their files (one pass over the directories, as ``audit``'s census).
        Changes nothing. Store errors raise :class:`StorageError`.
        """
        self.open()
        report = self._space()
        report.backend = self.url
        return report

    def measured_space(self) -> SpaceReport:
        """:meth:`space`, or a report saying why it could not be measured (a report never fails on it)."""
        try:
            return self.space()
        except RetentionError as exc:
            log.warning("space not measured backend=%s: %s", self.url, exc)
            return SpaceReport.unknown(self.url, f"could not be measured: {exc}")

    def vacuum(self) -> SpaceReport:
        """Give the free space inside the store back to the file system, where the store does that on request.

        SQLite only: ``PRAGMA incremental_vacuum`` when the database was created with
        ``auto_vacuum=INCREMENTAL``, otherwise a full ``VACUUM`` (it holds the write lock while it rewrites the
        whole file, and needs that much free disk for the copy). Call it after a purge, never during one (the
        CLI's ``purge --vacuum`` runs it after the last batch has committed). Other stores raise
        :class:`ConfigurationError` naming what they do instead (PostgreSQL's autovacuum, InnoDB's purge
        thread, compaction, files deleted at once). Returns :meth:`space` after it, with a note of what ran.
        """
        self.open()
        report = self._vacuum()
        report.backend = self.url
        return report

    def filesystem_path(self) -> str | None:
        """The path on this host whose filesystem holds the store (file and SQLite stores): a policy's disk pressure
        reads its free space. None for database servers (their size is measured by :meth:`space` instead)."""
        return None

    def _space(self) -> SpaceReport:
        """The store's :class:`SpaceReport` (see :meth:`space`); ``SpaceReport.unknown(reason)`` when it cannot tell."""
        return SpaceReport.unknown(self.url, f"the {self.name or type(self).__name__} backend does not report "
                                             "its space")

    def _vacuum(self) -> SpaceReport:
        """Return free space to the file system (see :meth:`vacuum`); stores that have no such step refuse."""
        raise ConfigurationError(f"--vacuum applies to SQLite stores only; the {self.name} backend returns space "
                                 "on its own (see docs/operations.md, Space)")

    def _count_runs(self, limit: int) -> tuple[int, bool]:
        """Run records in the store, counted up to ``limit``: ``(n, exact)`` (``exact`` False: at least ``n``).

        Called by :meth:`seed` with ``require_empty`` after ``_prepare_seed`` (the layout exists).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot count its runs (_count_runs)")
