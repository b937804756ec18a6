"""``CassandraBackend``: the URL, the options, the connection, the keyspace check; the work is in the role modules."""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from workflow_retention import values
from workflow_retention.base import Capability, CensusJob, OrphanJob, PurgeJob, Shard, StorageBackend
from workflow_retention.exceptions import ConfigurationError, StorageError
from workflow_retention.planning import RunRef, newest_terminal
from workflow_retention.report import SpaceReport
from workflow_retention.seed import SeedRun
from workflow_retention.urls import query_params, redact_url

from . import archive, seed
from .census import CENSUS_PAGE, census, count_runs, space
from .client import Cql, driver
from .layout import MARKER_STATEMENTS, MARKER_TABLE, STATEMENTS
from .markers import Markers
from .orphans import OrphanSweep
from .purge import Purge
from .ring import token_shards
from .runs import RunReader, from_ms
from .streams import StreamSweep

log = logging.getLogger("workflow_retention.cassandra")

URL_FORM = "cassandra://[user:password@]host1[,host2...][:port]/keyspace[?local_dc=...&read_consistency=...]"
PARAMETERS = {"local_dc", "read_consistency", "write_consistency", "serial_consistency", "protocol_version",
              "connect_timeout", "request_timeout", "concurrency"}
CONSISTENCY = ("ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE")
SERIAL = ("SERIAL", "LOCAL_SERIAL")
MIN_PROTOCOL_VERSION, MAX_PROTOCOL_VERSION = 3, 6
MAX_CONCURRENCY = 512
MAX_TIMEOUT = 3600.0
_KEYSPACE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)(?::(\d{1,5}))?$")


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigurationError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass(frozen=True)
class CassandraSettings:
    """The options of :class:`CassandraBackend` but ``batch_size``, validated (and numbers given as text
    converted) on creation."""

    contact_points: tuple[str, ...] = ("localhost",)
    port: int = 9042
    keyspace: str = "pyworkflow"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    local_dc: str | None = None
    read_consistency: str = "LOCAL_QUORUM"
    write_consistency: str = "LOCAL_QUORUM"
    #: Accepted for the URLs that carry it, and ignored: no statement is a lightweight transaction.
    serial_consistency: str | None = None
    protocol_version: int | None = None
    connect_timeout: float = 10.0
    request_timeout: float = 30.0
    concurrency: int = 64

    def __post_init__(self) -> None:
        if not self.contact_points or not all(isinstance(h, str) and h for h in self.contact_points):
            raise ConfigurationError(f"contact_points must name at least one host; expected {URL_FORM}")
        if not isinstance(self.keyspace, str) or not _KEYSPACE.match(self.keyspace):
            raise ConfigurationError(f"keyspace must be a Cassandra identifier (a letter, then up to 47 letters, "
                                     f"digits or _); got {self.keyspace!r}")
        for name in ("read_consistency", "write_consistency"):
            _choice(name, getattr(self, name), CONSISTENCY)
        if self.serial_consistency is not None:
            _choice("serial_consistency", self.serial_consistency, SERIAL)
        numbers: dict[str, object] = {
            "port": values.integer(self.port, "port", maximum=65535, example=9042),
            "concurrency": values.integer(self.concurrency, "concurrency", maximum=MAX_CONCURRENCY, example=64),
            "connect_timeout": values.seconds(self.connect_timeout, "connect_timeout", maximum=MAX_TIMEOUT),
            "request_timeout": values.seconds(self.request_timeout, "request_timeout", maximum=MAX_TIMEOUT),
        }
        if self.protocol_version is not None:
            numbers["protocol_version"] = values.integer(self.protocol_version, "protocol_version",
                                                         minimum=MIN_PROTOCOL_VERSION,
                                                         maximum=MAX_PROTOCOL_VERSION, example=4)
        for name, value in numbers.items():
            object.__setattr__(self, name, value)

    @property
    def display_url(self) -> str:
        """The URL these settings amount to, the password masked (options in the query are left out)."""
        auth = f"{self.username}:***@" if self.username and self.password else (
            f"{self.username}@" if self.username else "")
        return f"cassandra://{auth}{','.join(self.contact_points)}:{self.port}/{self.keyspace}"


_SETTINGS = frozenset(f.name for f in dataclasses.fields(CassandraSettings))


def _hosts(netloc: str, url: str) -> tuple[tuple[str, ...], int | None]:
    hosts, ports = [], set()
    for n, part in enumerate(netloc.split(","), start=1):
        match = _HOST.match(part.strip())
        if not match:  # the part is not quoted: with an unencoded '/' or '#' it may hold the password
            raise ConfigurationError(f"storage URL {redact_url(url)!r}: host number {n} is not a host name, "
                                     f"IP address or host:port (percent-encode # / ? @ in the password); "
                                     f"expected {URL_FORM}")
        hosts.append(match.group(1).strip("[]"))
        if match.group(2):
            ports.add(int(match.group(2)))
    if len(ports) > 1:
        raise ConfigurationError(f"storage URL {redact_url(url)!r}: every host must use the same port; "
                                 f"expected {URL_FORM}")
    return tuple(hosts), (ports.pop() if ports else None)


def parse_url(url: str) -> CassandraSettings:
    """Parse a ``cassandra://`` URL; anything malformed raises ConfigurationError naming the expected form."""
    parts = urlsplit(url)  # not urls.split_url: a host list has no one port to validate (see _hosts)
    if parts.scheme.lower() != "cassandra":
        raise ConfigurationError(f"expected a cassandra:// URL ({URL_FORM}); got {redact_url(url)!r}")
    userinfo, _, netloc = parts.netloc.rpartition("@")
    if not netloc:
        raise ConfigurationError(f"storage URL {redact_url(url)!r} names no host; expected {URL_FORM}")
    hosts, port = _hosts(netloc, url)
    username, _, password = userinfo.partition(":")
    params = query_params(parts, PARAMETERS, url)
    options: dict[str, Any] = {  # text values of numbers: CassandraSettings validates and converts them
        "contact_points": hosts, "keyspace": parts.path.strip("/") or "pyworkflow",
        "username": unquote(username) or None, "password": unquote(password) or None,
        "local_dc": params.get("local_dc") or None,
    }
    if port is not None:
        options["port"] = port
    for name in ("read_consistency", "write_consistency", "serial_consistency"):
        if params.get(name):
            options[name] = params[name].upper()
    for name in ("protocol_version", "concurrency", "connect_timeout", "request_timeout"):
        if name in params:
            options[name] = params[name]
    return CassandraSettings(**options)


@functools.cache
def _warn_serial_consistency() -> None:
    """Once per process: the option is kept for old URLs, and does nothing."""
    log.warning("cassandra: serial_consistency is ignored (no statement is a lightweight transaction any more); "
                "remove it from the storage URL")


class CassandraBackend(StorageBackend):
    """pyworkflow-engine 0.4.0's Cassandra keyspace, purged with CQL a real cluster accepts
    (design: docs/backends/cassandra.md).

    URL: ``cassandra://[user:password@]host1[,host2...][:port]/keyspace[?param=value&...]``; the password
    (percent-encode ``# / ? @ :`` in it) is masked in every log line, repr and error.

    Options (URL parameter and constructor argument unless said otherwise):

    ``contact_points`` (the URL's hosts; default ``localhost``)
        The hosts the driver first connects to (host names, IPv4, ``[IPv6]``); every host of the URL must use
        the same port.
    ``port`` (the URL's port; default 9042)
        The CQL native port.
    ``keyspace`` (the URL's path; default ``pyworkflow``)
        pyworkflow's keyspace: a letter, then up to 47 letters, digits or ``_``.
    ``username``, ``password`` (the URL's user information; default none)
        Credentials for the driver's ``PlainTextAuthProvider``. The role needs ``SELECT`` and ``MODIFY`` on
        the keyspace, and ``CREATE`` once, for the first purge to create its ``retention_purge_markers``
        table (or have an administrator create it: ``MARKER_TABLE_CQL`` in ``layout.py``).
    ``local_dc`` (default: the datacenter of the first contact point the driver reaches)
        The local datacenter of the driver's token-aware, DC-aware round-robin load balancing.
    ``read_consistency`` (default ``LOCAL_QUORUM``)
        Consistency level of every read: scans, re-checks, the cascade's reads. One of ``ANY ONE TWO THREE
        QUORUM ALL LOCAL_QUORUM EACH_QUORUM LOCAL_ONE`` (case-insensitive in the URL).
    ``write_consistency`` (default ``LOCAL_QUORUM``)
        Consistency level of every write: the deletes, the markers, the put-backs, the seed. The live-engine
        guarantees of the design assume that reads and writes overlap, here and in the engine (pyworkflow's
        default is ``LOCAL_QUORUM`` for both): with ``ONE`` a re-check may read a replica that misses the
        engine's latest write.
    ``serial_consistency`` (``SERIAL`` or ``LOCAL_SERIAL``; default none)
        Accepted for old URLs and ignored, with a WARNING (once per process): no statement is a lightweight
        transaction any more.
    ``protocol_version`` (default: negotiated by the driver)
        The native protocol version, 3 to 6; ``3`` for Cassandra 2.1, which cannot negotiate.
    ``connect_timeout`` (default ``10``), ``request_timeout`` (default ``30``)
        Seconds (``7.5``) or a duration (``90s``, ``5m``), above 0 and up to an hour: to connect, and to wait
        for each request's answer (schema statements get at least 60 s). A request not answered in time stops
        the operation with an error (after the driver's default retry policy); a rerun finishes the work.
    ``concurrency`` (default 64)
        Requests in flight at once, 1 to 512: each round of reads or deletes is sent concurrently up to this.
    ``batch_size`` (constructor or ``by_url`` option; default 1000)
        Runs per batch (the ``on_batch`` boundary; markers, commits and cascades), and rows per page of every
        scan of the purge and the orphan sweep (the census pages by 1000).
    ``settings`` (constructor only)
        A :class:`CassandraSettings` to start from; the keyword options above override its fields.
    ``url`` (constructor only)
        The URL the backend was built from, shown (redacted) in logs and reports.

    :attr:`requests` and :attr:`statements` count round trips and CQL statements per statement name since
    creation (an UNLOGGED batch is one request; its members are statements).

    Errors: :class:`ConfigurationError` for a malformed URL, an unknown parameter or a value out of range
    (naming the option and its range), before anything connects, the password never in it (``TypeError`` for
    a constructor option that does not exist); :class:`BackendUnavailableError` when cassandra-driver is not
    installed (the ``cassandra`` extra: ``pip install '.[cassandra]'`` in a checkout); :class:`StorageError`,
    the driver's error chained (naming the statement, when one failed): no host answers
    (``NoHostAvailable``), a request times out, the keyspace does not exist or is not pyworkflow's
    (``check()`` names the statements the server rejected), the cluster's partitioner is neither Murmur3 nor
    Random (token scans need one of them).
    """

    name = "cassandra"
    capabilities = frozenset({Capability.SCHEDULES, Capability.STREAMS, Capability.CORRUPTIBLE_TIMESTAMPS,
                              Capability.SHARDS, Capability.ARCHIVE,
                              Capability.ARCHIVE_RECHECK})
    #: Each batch waits on a few rounds of concurrent requests: bigger batches keep the cluster busier.
    default_batch_size = 1000

    def __init__(self, settings: CassandraSettings | None = None, *, url: str | None = None,
                 batch_size: int | None = None, **options: Any) -> None:
        driver()  # the optional-driver guard: BackendUnavailableError before anything else
        unknown = sorted(set(options) - _SETTINGS)
        if unknown:
            raise TypeError(f"CassandraBackend() got unexpected option(s): {', '.join(unknown)}")
        if isinstance(options.get("contact_points"), str):
            options["contact_points"] = (options["contact_points"],)
        elif isinstance(options.get("contact_points"), (list, tuple)):
            options["contact_points"] = tuple(options["contact_points"])
        self.settings = dataclasses.replace(settings or CassandraSettings(), **options)
        if self.settings.serial_consistency is not None:
            _warn_serial_consistency()
        super().__init__(url=url or self.settings.display_url, batch_size=batch_size)
        self._cql: Cql | None = None
        self._closed_requests: Counter[str] = Counter()
        self._closed_statements: Counter[str] = Counter()

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
    def requests(self) -> Counter[str]:
        """Requests sent to the cluster since creation, per statement name (batches as ``unlogged_batch``)."""
        return self._closed_requests + (self._cql.requests if self._cql else Counter())

    @property
    def statements(self) -> Counter[str]:
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

    # -- the operations -------------------------------------------------------------------

    def _shards(self, n: int, until: datetime | None) -> list[Shard]:
        """``n`` contiguous token ranges of the driver's token map (:mod:`.ring`): no run is read.

        Plans a real purge (a sharded dry run is one whole-store dry run), so it also creates the purge
        markers' table if missing: here, once, and not by the shards at the same time (concurrent
        ``CREATE TABLE IF NOT EXISTS`` on one table is a schema conflict on Cassandra 2.1).
        """
        self.cql.require_keyspace()
        Markers(self.cql).open(create=True)
        low, high = self.cql.token_space
        return token_shards(self.cql.ring(), low, high, n)

    def _purge(self, job: PurgeJob) -> None:
        self.cql.require_keyspace()
        before = self.cql.summary()
        Purge(self.cql, job).run()
        if job.sweeps:  # a shard of several purges runs only; the final pass sweeps the rest
            StreamSweep(self.cql, job).run()
        self._log_statements("purge", before)

    def _read_runs(self, run_ids: set[str]) -> dict[str, RunRef]:
        self.cql.require_keyspace()
        found = RunReader(self.cql).refs(sorted(run_ids))
        for ref in found.values():
            if ref.data.unreadable:
                ref.unreadable = f"its {' and '.join(ref.data.unreadable)} is outside the datetime range"
        return found

    def _read_children(self, parent_ids: Sequence[str]) -> dict[str, list[RunRef]]:
        self.cql.require_keyspace()
        return RunReader(self.cql).children_of(parent_ids)

    ranks_whole_store = True

    def _newest_runs(self, names: set[str], n: int) -> dict[str, list[str]]:
        """keep_last: one paged token() scan of workflow_runs, every workflow name at once (runs_by_workflow's
        day buckets have no bound to stop at: docs/backends/cassandra.md)."""
        self.cql.require_keyspace()
        rows = (row for page in self.cql.scan("scan_runs", CENSUS_PAGE) for row in page)
        return newest_terminal(((r.workflow_name, r.run_id, r.status, from_ms(r.created_at)) for r in rows), n)

    def _gather(self, run_ids: Sequence[str]) -> dict[str, Any]:
        self.cql.require_keyspace()
        return archive.gather(self.cql, run_ids)

    def _restore(self, lines: list[dict[str, Any]]) -> None:
        self.cql.require_keyspace()
        archive.restore(self.cql, lines)

    def _record_key(self, kind: str, record: Any) -> Any:
        return archive.row_key(kind, record)

    def _sweep_orphans(self, job: OrphanJob) -> None:
        self.cql.require_keyspace()
        before = self.cql.summary()
        OrphanSweep(self.cql, job).run()
        self._log_statements("orphan sweep", before)

    def _census(self, job: CensusJob) -> None:
        self.cql.require_keyspace()
        census(self.cql, job)

    def _prepare_seed(self) -> None:
        seed.prepare(self.cql)

    def _write_seed(self, runs: list[SeedRun]) -> None:
        seed.write(self.cql, runs)

    def _space(self) -> SpaceReport:
        self.cql.require_keyspace()
        return space(self.cql, self.url)

    def _count_runs(self, limit: int) -> tuple[int, bool]:
        self.cql.require_keyspace()
        return count_runs(self.cql, limit)

    def _log_statements(self, what: str, before: dict[str, int]) -> None:
        after = self.cql.summary()
        log.info("cassandra %s issued requests=%d statements=%d backend=%s", what,
                 after["requests"] - before["requests"], after["statements"] - before["statements"], self.url)
