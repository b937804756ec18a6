"""The orphan sweep: the cascade over run ids that have no run file, older than the grace period.

A run id is condemned when it is safe and ``runs/<run_id>.json`` does not exist (a purge marker left by a
crash counts as an orphan run); the absence and the file's mtime are re-checked right before each
delete. What counts as an orphan: docs/backends/file.md, section 1 ("Orphan repair").
"""

from __future__ import annotations

from workflow_retention.backends.file.cascade import Cascade, Verdict
from workflow_retention.backends.file.client import Store
from workflow_retention.backends.file.layout import ORPHAN_DIRECTORIES, RUNS, run_file
from workflow_retention.base import OrphanJob
from workflow_retention.planning import is_safe_run_id
from workflow_retention.report import Kind


def sweep_orphans(store: Store, job: OrphanJob, lock_timeout: float) -> None:
    """Delete (or, in a dry run, count) every orphan file and token-index entry; exact bytes in the report."""
    report = job.report
    report.bytes_estimated = False
    if not job.dry_run:
        store.preflight(ORPHAN_DIRECTORIES)

    def exists(run_id: str) -> bool:
        name = run_file(run_id)
        return name is not None and store.exists(RUNS, name)

    verdict = Verdict.cached(exists, lambda r: is_safe_run_id(r) and not exists(r), orphans=True, recheck=True)
    cascade = Cascade(store, report, verdict, dry_run=job.dry_run, batch_size=job.batch_size,
                      lock_timeout=lock_timeout, not_after=job.not_after, boundary=job.boundary,
                      marker_kind=Kind.RUNS)
    try:
        cascade.run()
    finally:
        report.bytes += cascade.bytes
