"""``FileBackend``: the URL, the options and the store check; the work is in the role modules."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from workflow_retention import values
from workflow_retention.backends.file import archive
from workflow_retention.backends.file.census import census, space
from workflow_retention.backends.file.client import Store, errors
from workflow_retention.backends.file.layout import JSON, MARKER_SUFFIX, RUNS, Corrupt
from workflow_retention.backends.file.orphans import sweep_orphans
from workflow_retention.backends.file.purge import purge_runs, read_run
from workflow_retention.backends.file.seed import SeedWriter, count_runs, prepare
from workflow_retention.backends.file.streams import StreamSweep
from workflow_retention.base import Capability, CensusJob, OrphanJob, PurgeJob, Shard, StorageBackend
from workflow_retention.exceptions import ConfigurationError
from workflow_retention.planning import RunRef, newest_terminal
from workflow_retention.report import SpaceReport
from workflow_retention.seed import SeedRun
from workflow_retention.shards import hash_shards
from workflow_retention.urls import query_params, redact_url, split_url

URL_FORM = "file:///absolute/path/to/store"
DEFAULT_LOCK_TIMEOUT = 10.0
MAX_LOCK_TIMEOUT = 3600.0


class FileBackend(StorageBackend):
    """pyworkflow-engine 0.4.0's ``FileStorageBackend`` directory, purged in place (design: docs/backends/file.md).

    URL: ``file:///absolute/path/to/store``, the engine's ``base_path`` (``file://localhost/...`` also
    accepted; percent-encoding is decoded; no query parameters, no fragment).

    Options (constructor arguments; the URL carries none):

    ``base_path`` (required; the URL's path)
        The store's directory, as given to the engine; made absolute.
    ``lock_timeout`` (default ``10`` seconds)
        The longest wait for one of the engine's locks (``.locks/<run_id>.lock`` to commit or re-read a run,
        ``token_index.lock``, a schedule's, a subscription's or a stream's signal lock): seconds (``2.5``) or
        a duration (``90s``), above 0 and up to an hour. A run whose lock stays held is left alone
        (``skipped``); a token index whose lock stays held stops the purge.
    ``batch_size`` (constructor or ``by_url`` option; default 500)
        Runs committed per batch (``on_batch`` is called before each), and files per page of the cascade.
    ``url`` (constructor only)
        The URL the backend was built from, shown in logs and reports.

    One purge at a time per store: run it under the CLI's or Celery's singleton lock.

    Errors: :class:`ConfigurationError` for a malformed URL, a query parameter or a bad option value
    (naming the option and its range), before anything is read. :class:`StorageError`, the OS error
    chained, when the store is missing or not a store (no ``runs/``), when a layout directory is a symlink
    or not a directory, when ``_token_index.json`` or ``.locks/token_index.lock`` is not a regular file,
    when a purge or orphan sweep could not change the store (checked before the first change: no
    ``.locks/``, a directory it cannot write, a token index it could not rewrite keeping its owner), and
    for any permission or I/O error later. Records that cannot be judged safely are never deleted: they
    are counted in ``skipped`` and described in ``warnings``.
    """

    name = "file"
    capabilities = frozenset({Capability.SCHEDULES, Capability.STREAMS, Capability.CORRUPTIBLE_TIMESTAMPS,
                              Capability.SHARDS, Capability.ARCHIVE})

    def __init__(self, base_path: str | os.PathLike[str], *,
                 lock_timeout: float | str | timedelta = DEFAULT_LOCK_TIMEOUT, url: str | None = None,
                 batch_size: int | None = None) -> None:
        path = Path(os.path.abspath(os.fspath(base_path)))
        super().__init__(url=url or f"file://{quote(str(path))}", batch_size=batch_size)
        self.lock_timeout = values.seconds(lock_timeout, "lock_timeout", maximum=MAX_LOCK_TIMEOUT)
        self._base = path
        self._seeder: SeedWriter | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> FileBackend:
        parts = split_url(url)
        query_params(parts, set(), url)
        if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost") \
                or not parts.path.startswith("/") or parts.fragment:
            raise ConfigurationError(f"file storage URL must be {URL_FORM} (the engine's base_path); "
                                     f"got {redact_url(url)!r}")
        return cls(unquote(parts.path), url=url, **options)

    @property
    def base_path(self) -> Path:
        return self._base

    def open(self) -> None:
        """Nothing to connect: every operation opens the store's directories itself (client.Store)."""

    def close(self) -> None:
        """Nothing to release: no descriptor outlives an operation."""

    def _check(self) -> dict[str, object]:
        with errors(self._base), Store.open(self._base) as store:
            names = [e.name for e in store.entries(RUNS, regular=False)]
        return {"path": str(self._base),
                "run_files": sum(1 for n in names if n.endswith(JSON)),
                "pending_purge_markers": sum(1 for n in names if n.endswith(MARKER_SUFFIX))}

    def _shards(self, n: int, until: datetime | None) -> list[Shard]:
        """``n`` hash ranges of the run id (the file name): no directory is read to plan them."""
        return hash_shards(n)

    def _purge(self, job: PurgeJob) -> None:
        with errors(self._base), Store.open(self._base) as store:
            purge_runs(store, job, self.lock_timeout)
            if job.sweeps:  # a shard of several purges runs only; the final pass sweeps the rest
                StreamSweep(store, job, self.lock_timeout).run()

    def _read_runs(self, run_ids: set[str]) -> dict[str, RunRef]:
        with errors(self._base), Store.open(self._base) as store:
            return {run_id: ref for run_id in sorted(run_ids) if (ref := read_run(store, run_id)) is not None}

    def _read_children(self, parent_ids: Sequence[str]) -> dict[str, list[RunRef]]:
        """One listing of runs/ per call (the file layout has no parent index): every run file is read."""
        wanted, found = set(parent_ids), dict[str, list[RunRef]]()
        with errors(self._base), Store.open(self._base) as store:
            for entry in store.entries(RUNS, regular=False):
                if entry.name.endswith(JSON) and (ref := read_run(store, entry.name[: -len(JSON)])) is not None \
                        and ref.parent_run_id in wanted:
                    found.setdefault(ref.parent_run_id, []).append(ref)
        return found

    ranks_whole_store = True

    def filesystem_path(self) -> str | None:
        return str(self.base_path)

    def _newest_runs(self, names: set[str], n: int) -> dict[str, list[str]]:
        """One pass over runs/ (the file layout has no ordering by workflow): every workflow name at once."""
        def runs(store: Store) -> Any:
            for entry in store.entries(RUNS):
                if entry.name.endswith(JSON):
                    try:
                        data = store.read_json(RUNS, entry.name)
                    except (FileNotFoundError, Corrupt):
                        continue
                    if isinstance(data, dict) and data.get("run_id") == entry.name[: -len(JSON)]:
                        yield data.get("workflow_name"), data["run_id"], data.get("status"), data.get("created_at")
        with errors(self._base), Store.open(self._base) as store:
            return newest_terminal(runs(store), n)

    def _gather(self, run_ids: Sequence[str]) -> dict[str, Any]:
        return archive.gather(self._base, run_ids, self.lock_timeout)

    def _restore(self, lines: list[dict[str, Any]]) -> None:
        archive.restore(self._base, lines, self.lock_timeout)

    def _sweep_orphans(self, job: OrphanJob) -> None:
        with errors(self._base), Store.open(self._base) as store:
            sweep_orphans(store, job, self.lock_timeout)

    def _census(self, job: CensusJob) -> None:
        with errors(self._base), Store.open(self._base) as store:
            census(store, job)

    def _prepare_seed(self) -> None:
        with errors(self._base):
            prepare(self._base)
            with Store.open(self._base) as store:
                self._seeder = SeedWriter(store)

    def _write_seed(self, runs: list[SeedRun]) -> None:
        assert self._seeder is not None, "_prepare_seed first"
        with errors(self._base), Store.open(self._base) as store:
            self._seeder.write(store, runs)

    def _space(self) -> SpaceReport:
        with errors(self._base), Store.open(self._base) as store:
            return space(store, self.url)

    def _count_runs(self, limit: int) -> tuple[int, bool]:
        with errors(self._base), Store.open(self._base) as store:
            return count_runs(store, limit)
