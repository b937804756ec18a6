"""``CassandraBackend``: the StorageBackend on pyworkflow-engine's Cassandra keyspace.

The design is in docs/backends/cassandra.md.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Any

from workflow_retention.backends.cassandra import orphans, seed
from workflow_retention.backends.cassandra.cql import MARKER_STATEMENTS, MARKER_TABLE, STATEMENTS
from workflow_retention.backends.cassandra.purge import Purger
from workflow_retention.backends.cassandra.session import Cql, require_driver
from workflow_retention.backends.cassandra.settings import CassandraSettings, parse_url
from workflow_retention.base import CensusJob, OrphanJob, PurgeJob, StorageBackend
from workflow_retention.exceptions import StorageError
from workflow_retention.seed import SeedRun

log = logging.getLogger("workflow_retention.cassandra")

_SETTINGS = {f.name for f in dataclasses.fields(CassandraSettings)}


def _display_url(s: CassandraSettings) -> str:
    auth = f"{s.username}:***@" if s.username and s.password else (f"{s.username}@" if s.username else "")
    return f"cassandra://{auth}{','.join(s.contact_points)}:{s.port}/{s.keyspace}"


class CassandraBackend(StorageBackend):
    name = "cassandra"
    capabilities = frozenset({"schedules", "streams"})
    #: Each batch waits on a few rounds of concurrent requests: bigger batches keep the cluster busier.
    default_batch_size = 1000

    def __init__(self, settings: CassandraSettings | None = None, **options: Any) -> None:
        require_driver()
        fields = {k: options.pop(k) for k in list(options) if k in _SETTINGS}
        if isinstance(fields.get("contact_points"), str):
            fields["contact_points"] = (fields["contact_points"],)
        elif "contact_points" in fields:
            fields["contact_points"] = tuple(fields["contact_points"])
        settings = dataclasses.replace(settings or CassandraSettings(), **fields)
        url = options.pop("url", None) or _display_url(settings)
        super().__init__(url=url, **options)
        self.settings = settings
        self._cql: Cql | None = None
        self._closed_requests: Counter = Counter()
        self._closed_statements: Counter = Counter()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> CassandraBackend:
        return cls(parse_url(url), url=url, **options)

    # -- connection -----------------------------------------------------------------

    def open(self) -> None:
        if self._cql is None:
            cql = Cql(self.settings)
            cql.connect()
            self._cql = cql

    def close(self) -> None:
        if self._cql is not None:
            self._closed_requests += self._cql.requests
            self._closed_statements += self._cql.statements
            self._cql.close()
            self._cql = None

    @property
    def cql(self) -> Cql:
        if self._cql is None:
            self.open()
        assert self._cql is not None
        return self._cql

    @property
    def requests(self) -> Counter:
        """Requests sent to the cluster since creation, per statement name (batches as ``unlogged_batch``)."""
        return self._closed_requests + (self._cql.requests if self._cql else Counter())

    @property
    def statements(self) -> Counter:
        """CQL statements executed since creation, per statement name (batch members counted one by one)."""
        return self._closed_statements + (self._cql.statements if self._cql else Counter())

    def _check(self) -> dict[str, object]:
        cql = self.cql
        version = cql.execute("release_version").one().release_version
        cql.require_keyspace()
        markers = cql.has_table("scan_markers")
        missing = []
        for name in STATEMENTS:
            if name in MARKER_STATEMENTS and not markers:
                continue
            try:
                cql.prepared(name)
            except StorageError as exc:
                missing.append(f"{name}: {exc.__cause__}")
        if missing:
            raise StorageError(f"keyspace {self.settings.keyspace!r} does not have pyworkflow-engine's Cassandra "
                               f"layout; rejected statements: {'; '.join(missing[:3])}")
        return {"keyspace": self.settings.keyspace, "release_version": version,
                "purge_markers": MARKER_TABLE if markers else f"{MARKER_TABLE} (created by the first purge)",
                "protocol_version": cql.cluster.protocol_version, "hosts": len(cql.cluster.metadata.all_hosts())}

    # -- purge, orphans, census, seed ----------------------------------------------------

    def _purge(self, job: PurgeJob) -> None:
        self.cql.require_keyspace()
        before = self.cql.summary()
        Purger(self.cql, job).run()
        self._log_statements("purge", before)

    def _sweep_orphans(self, job: OrphanJob) -> None:
        self.cql.require_keyspace()
        before = self.cql.summary()
        orphans.Sweeper(self.cql, job).run()
        self._log_statements("orphan sweep", before)

    def _census(self, job: CensusJob) -> None:
        self.cql.require_keyspace()
        orphans.census(self.cql, job)

    def _prepare_seed(self) -> None:
        seed.prepare(self.cql)

    def _write_seed(self, runs: list[SeedRun]) -> None:
        seed.write(self.cql, runs)

    def _log_statements(self, what: str, before: dict[str, int]) -> None:
        after = self.cql.summary()
        log.info("cassandra %s issued requests=%d statements=%d backend=%s", what,
                 after["requests"] - before["requests"], after["statements"] - before["statements"], self.url)
