"""File backend: pyworkflow-engine 0.4.0's ``FileStorageBackend`` directory layout.

**Live-engine safety.** The engine changes a run only under
``.locks/<run_id>.lock`` (filelock). A purge commits each expired run by
re-reading it under that same lock and, if its status and ``updated_at`` are
unchanged, atomically renaming ``runs/<run_id>.json`` to the purge marker
``runs/<run_id>.json.purging``. The engine never reads markers (it opens
``runs/<run_id>.json`` and globs ``runs/*.json``), so a committed run cannot
be revived; a run that changed keeps everything and holds its ancestors.

**Discovery, linear cost.** There is no index on disk, so work is organised
as a fixed number of streaming passes (``os.scandir``; no list of names):
``runs/`` once to find holds (walking up from every surviving run, memory
O(held)) and once per nesting depth present to commit batches deepest first
(see :mod:`.select`); then every other directory exactly once to delete the
files of marked runs (a ``stat`` of the marker per file, cached), the token
index rewritten once, and ``runs/`` again for flags and, last, the markers
(see :mod:`.sweep`). Memory is bounded by the batch, the held set and the
single ``_token_index.json`` document, which the engine itself keeps as one
JSON object (it is loaded whole, as the engine does).

**Crash safety.** Markers are deleted last, so a crash or an interruption at
any point leaves markers; the next purge (or orphan sweep) deletes what they
name before removing them. A purge stopped on purpose (``PurgeStopped``, a
lost lease) first finishes the runs it already committed, deciding nothing
new. The token index and signal arrays are rewritten under the engine's lock
via a temp file and ``os.replace``. Lock files are deleted while their flock
is held (filelock waiters then retry on a fresh file) and skipped if someone
holds them.

**Dry run.** Nothing is renamed or locked: the sweep counts the files of runs
that the commit passes would mark (re-reading the run file per lookup) plus
runs already marked.

**Safety against hostile content.** Paths come only from ``scandir`` names
and from ids accepted by ``is_safe_run_id``; a run file whose inner run_id
differs from its name is skipped; symlinks are never followed and a layout
directory that is a symlink stops everything before it starts.

**Orphans.** Data whose run has no ``runs/<run_id>.json`` (markers included)
and whose mtime is older than the grace period; the run file's absence and
the mtime are re-checked right before each delete. Token-index entries carry
no time of their own, so the grace period does not apply to them (the engine
only creates them for a run that exists).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from workflow_retention.backends.file.aux import AuxSweep
from workflow_retention.backends.file.census import take_census
from workflow_retention.backends.file.layout import MARKER_SUFFIX, RUNS, Layout
from workflow_retention.backends.file.seeding import SeedWriter
from workflow_retention.backends.file.select import Selection
from workflow_retention.backends.file.sweep import Sweep, Verdict
from workflow_retention.base import CensusJob, OrphanJob, PurgeJob, StorageBackend
from workflow_retention.exceptions import ConfigurationError, PurgeStopped, StorageError
from workflow_retention.report import Kind
from workflow_retention.seed import SeedRun
from workflow_retention.urls import query_params, redact_url, split_url

DEFAULT_LOCK_TIMEOUT = 10.0


class FileBackend(StorageBackend):
    name = "file"
    capabilities = frozenset({"schedules", "streams"})

    def __init__(self, base_path: str | os.PathLike[str], *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
                 **options: Any) -> None:
        path = Path(os.path.abspath(os.fspath(base_path)))
        super().__init__(url=options.pop("url", None) or f"file://{quote(str(path))}", **options)
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) or not lock_timeout > 0:
            raise ConfigurationError(
                f"lock_timeout must be a positive number of seconds, e.g. 10; got {lock_timeout!r}")
        self.layout = Layout(path)
        self.lock_timeout = float(lock_timeout)
        self._seeder: SeedWriter | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> FileBackend:
        parts = split_url(url)
        query_params(parts, set(), url)
        if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost") \
                or not parts.path.startswith("/") or parts.fragment:
            raise ConfigurationError("file storage URL must be file:///absolute/path/to/store (the engine's "
                                     f"base_path); got {redact_url(url)!r}")
        return cls(unquote(parts.path), url=url, **options)

    @property
    def base_path(self) -> Path:
        return self.layout.base

    def _check(self) -> dict[str, object]:
        with _errors(self.layout.base):
            self.layout.check()
            names = [e.name for e in self.layout.entries(RUNS)]
        return {"path": str(self.layout.base),
                "run_files": sum(1 for n in names if n.endswith(".json")),
                "pending_purge_markers": sum(1 for n in names if n.endswith(MARKER_SUFFIX))}

    # -- purge ------------------------------------------------------------------

    def _purge(self, job: PurgeJob) -> None:
        with _errors(self.layout.base):
            self.layout.check()
            selection = Selection(self.layout, job, self.lock_timeout)
            selection.plan()
            sweep = Sweep(self.layout, job.report, self._purge_verdict(selection, job.dry_run),
                          dry_run=job.dry_run, batch_size=job.batch_size, lock_timeout=self.lock_timeout)
            try:
                selection.commit()
            except PurgeStopped:
                if not job.dry_run:
                    sweep.run()  # finish the runs already committed; decide nothing new
                raise
            sweep.run()
            AuxSweep(self.layout, job, self.lock_timeout).run()

    def _purge_verdict(self, selection: Selection, dry_run: bool) -> Verdict:
        """Real purge: runs with a marker. Dry run: those plus the runs the commit passes would mark."""
        layout = self.layout
        if not dry_run:
            return Verdict.cached(layout.marker_exists, layout.run_exists, recheck=False)
        return Verdict.cached(lambda r: layout.marker_exists(r) or selection.planned(r),
                              lambda r: layout.run_exists(r) and not selection.planned(r), recheck=False)

    # -- orphans ----------------------------------------------------------------

    def _sweep_orphans(self, job: OrphanJob) -> None:
        layout, report = self.layout, job.report
        report.bytes_estimated = False
        with _errors(layout.base):
            layout.check()
            verdict = Verdict.cached(lambda r: not layout.run_exists(r), layout.run_exists, recheck=True)
            sweep = Sweep(layout, report, verdict, dry_run=job.dry_run, batch_size=job.batch_size,
                          lock_timeout=self.lock_timeout, not_after=job.not_after, boundary=job.boundary,
                          marker_kind=Kind.RUNS)
            try:
                sweep.run()
            finally:
                report.bytes += sweep.bytes

    # -- census and seed --------------------------------------------------------

    def _census(self, job: CensusJob) -> None:
        with _errors(self.layout.base):
            self.layout.check()
            take_census(self.layout, job)

    def _prepare_seed(self) -> None:
        with _errors(self.layout.base):
            self._seeder = SeedWriter(self.layout)
            self._seeder.prepare()

    def _write_seed(self, runs: list[SeedRun]) -> None:
        assert self._seeder is not None, "_prepare_seed first"
        with _errors(self.layout.base):
            self._seeder.write(runs)


@contextlib.contextmanager
def _errors(base: Path) -> Iterator[None]:
    """Translate file-system errors into StorageError (the OSError chained)."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"file store {base}: {exc}") from exc
