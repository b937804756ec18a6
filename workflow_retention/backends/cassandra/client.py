"""The client: the driver guard, the session, named prepared statements, concurrency, paging, error translation.

This is the only module that imports cassandra-driver (lazily, in :func:`driver`,
so that ``import workflow_retention.backends.cassandra`` works without it).
Every request goes through :class:`Cql`, which prepares the statements of
:mod:`.layout` once, runs them at the configured consistency, keeps at most
``concurrency`` requests in flight, counts requests and statements per
statement name (the benchmarks' "statements per purged run"), and turns any
driver error into :class:`StorageError` naming the statement.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from workflow_retention.exceptions import BackendUnavailableError, RetentionError, StorageError
from workflow_retention.planning import chunked

from .layout import STATEMENTS, WRITES, Row
from .ring import TOKEN_SPACES

if TYPE_CHECKING:
    from .backend import CassandraSettings

#: A statement by name with the values bound to it.
Statement = tuple[str, Sequence[object]]

#: Keys per ``IN (...)`` list: a bounded fan-out for the coordinator.
IN_CHUNK = 50
#: Rows per page of the ``IN`` reads (a chunk of runs' events fits in one page).
IN_FETCH = 2000
#: Statements per UNLOGGED batch (:func:`packed`): a few runs' deletes per request.
BATCH_STATEMENTS = 32


def driver() -> ModuleType:
    """cassandra-driver (the ``cassandra`` package with the submodules used here), or
    :class:`BackendUnavailableError` naming the extra to install: the optional-driver guard."""
    try:
        import cassandra
        import cassandra.auth
        import cassandra.cluster
        import cassandra.concurrent
        import cassandra.policies
        import cassandra.query
        import cassandra.util  # seed.py: uuid_from_time
    except ImportError as exc:
        raise BackendUnavailableError("cassandra", "cassandra", exc) from exc
    return cassandra


def packed(groups: Iterable[Sequence[Statement]], size: int = BATCH_STATEMENTS) -> list[list[Statement]]:
    """Groups of statements (one run's, one row's each) packed into batches of about ``size`` statements.

    A group is never split, so a run's deletes go in one request.
    """
    batches: list[list[Statement]] = [[]]
    for group in groups:
        if batches[-1] and len(batches[-1]) + len(group) > size:
            batches.append([])
        batches[-1].extend(group)
    return [b for b in batches if b]


def _no_prepare_errors(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Error preparing query")


class Cql:
    """A connected session that executes the statements of :mod:`.layout` by name."""

    def __init__(self, settings: CassandraSettings) -> None:
        self.driver = driver()
        self.settings = settings
        self.cluster: Any = None
        self.session: Any = None
        self.keyspace_ready = False
        self._prepared: dict[str, Any] = {}
        self.requests: Counter[str] = Counter()
        self.statements: Counter[str] = Counter()

    def _level(self, name: str) -> int:
        """The driver's value of a consistency level name (``LOCAL_QUORUM``)."""
        level: int = self.driver.ConsistencyLevel.name_to_value[name]
        return level

    # -- connection ----------------------------------------------------------------

    def connect(self) -> None:
        s, d = self.settings, self.driver
        policy = d.policies.TokenAwarePolicy(d.policies.DCAwareRoundRobinPolicy(local_dc=s.local_dc))
        profile = d.cluster.ExecutionProfile(load_balancing_policy=policy,
                                             consistency_level=self._level(s.read_consistency),
                                             request_timeout=s.request_timeout)
        options: dict[str, object] = {"contact_points": list(s.contact_points), "port": s.port,
                                      "execution_profiles": {d.cluster.EXEC_PROFILE_DEFAULT: profile},
                                      "connect_timeout": s.connect_timeout, "schema_metadata_enabled": False}
        if s.protocol_version is not None:
            options["protocol_version"] = s.protocol_version
        if s.username:
            options["auth_provider"] = d.auth.PlainTextAuthProvider(username=s.username, password=s.password or "")
        with self._guard("connect"):
            self.cluster = d.cluster.Cluster(**options)
            self.session = self.cluster.connect()
        self.use_keyspace(quiet=True)

    def use_keyspace(self, quiet: bool = False) -> bool:
        try:
            self.session.set_keyspace(self.settings.keyspace)
        except Exception as exc:
            if not quiet:
                raise StorageError(f"keyspace {self.settings.keyspace!r} is not usable: {exc}") from exc
            return False
        self.keyspace_ready = True
        self._prepared.clear()
        return True

    def require_keyspace(self) -> None:
        if not self.keyspace_ready:
            self.use_keyspace()

    def close(self) -> None:
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.shutdown()
        self.cluster = self.session = None
        self.keyspace_ready = False
        self._prepared.clear()

    @property
    def min_token(self) -> int:
        return self.token_space[0]

    @property
    def token_space(self) -> tuple[int, int]:
        """The partitioner's tokens ``(minimum, maximum]``: every partition's token lies in it."""
        partitioner = (self.cluster.metadata.partitioner or "").rsplit(".", 1)[-1]
        if partitioner not in TOKEN_SPACES:
            raise StorageError(f"token range scans support {', '.join(TOKEN_SPACES)}; "
                               f"this cluster uses {partitioner or 'an unknown partitioner'}")
        return TOKEN_SPACES[partitioner]

    def token_of(self, key: str) -> int:
        """The partitioner's token of a text partition key, computed by the driver (its token map's class)."""
        token_map = self.cluster.metadata.token_map
        if token_map is None:
            raise StorageError("the driver has no token map of the cluster: cannot place a key in a token range")
        return int(token_map.token_class.from_key(key.encode("utf-8")).value)

    def ring(self) -> list[int]:
        """The tokens of the driver's token map (``cluster.metadata.token_map.ring``), as integers."""
        token_map = self.cluster.metadata.token_map
        if token_map is None:
            raise StorageError("the driver has no token map of the cluster (token metadata disabled?): "
                               "cannot plan token-range shards")
        return [int(token.value) for token in token_map.ring]

    # -- statements ------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self, name: str) -> Iterator[None]:
        try:
            yield
        except RetentionError:
            raise
        except Exception as exc:
            raise StorageError(f"Cassandra statement {name!r} failed: {type(exc).__name__}: {exc}") from exc

    def prepared(self, name: str) -> Any:
        statement = self._prepared.get(name)
        if statement is None:
            with self._guard(name):
                statement = self.session.prepare(STATEMENTS[name])
            if name in WRITES:
                statement.consistency_level = self._level(self.settings.write_consistency)
            statement.is_idempotent = not name.startswith("insert_")
            self._prepared[name] = statement
        return statement

    def _count(self, name: str, requests: int = 1, statements: int | None = None) -> None:
        self.requests[name] += requests
        self.statements[name] += requests if statements is None else statements

    def bound(self, name: str, params: Sequence[object], fetch_size: int | None = None) -> Any:
        with self._guard(name):
            statement = self.prepared(name).bind(tuple(params))
        if fetch_size is not None:
            statement.fetch_size = fetch_size
        return statement

    def execute(self, name: str, params: Sequence[object] = (), *, fetch_size: int | None = None,
                paging_state: bytes | None = None) -> Any:
        statement = self.bound(name, params, fetch_size)
        self._count(name)
        with self._guard(name):
            return self.session.execute(statement, paging_state=paging_state)

    def pages(self, name: str, params: Sequence[object], fetch_size: int) -> Iterator[list[Row]]:
        """Pages of at most ``fetch_size`` rows; the driver's paging state is the cursor."""
        state = None
        while True:
            result = self.execute(name, params, fetch_size=fetch_size, paging_state=state)
            yield list(result.current_rows)
            state = result.paging_state
            if not state:
                return

    def scan(self, name: str, page_size: int) -> Iterator[list[Row]]:
        """A paged ``token()`` range scan over the whole ring (``WHERE token(pk) > min``)."""
        yield from self.pages(name, (self.min_token,), page_size)

    def concurrent(self, items: Sequence[Statement]) -> list[Any]:
        """Run ``(name, params)`` pairs with at most ``concurrency`` in flight; the driver's results, in order."""
        if not items:
            return []
        work = [(self.bound(name, params, IN_FETCH), None) for name, params in items]
        for name, _ in items:
            self._count(name)
        with self._guard(items[0][0] if len({n for n, _ in items}) == 1 else "concurrent"):
            results = self.driver.concurrent.execute_concurrent(self.session, work,
                                                                concurrency=self.settings.concurrency,
                                                                raise_on_first_error=True)
            return [result for _, result in results]

    def rows_in(self, name: str, keys: Iterable[object]) -> list[Row]:
        """Rows of ``name`` (an ``... IN ?`` read) for ``keys``, in chunks of :data:`IN_CHUNK`."""
        return self.reads_in({name: keys})[name]

    def reads_in(self, reads: dict[str, Iterable[object]]) -> dict[str, list[Row]]:
        """Several ``IN`` reads at once (one round of concurrent requests): name -> rows."""
        work: list[Statement] = [(name, (chunk,)) for name, keys in reads.items()
                                 for chunk in chunked(dict.fromkeys(keys), IN_CHUNK)]
        found: dict[str, list[Row]] = {name: [] for name in reads}
        for (name, _), rows in zip(work, self.reads(work)):
            found[name].extend(rows)
        return found

    def reads(self, items: Sequence[Statement]) -> list[list[Row]]:
        """Reads run concurrently, every page of each fetched: the rows of each, in order."""
        found = []
        for (name, _), result in zip(items, self.concurrent(items)):
            rows = list(result.current_rows)
            while result.has_more_pages:
                self._count(name)
                with self._guard(name):
                    result.fetch_next_page()
                rows.extend(result.current_rows)
            found.append(rows)
        return found

    def delete_in(self, name: str, keys: Iterable[object]) -> None:
        self.deletes_in({name: keys})

    def deletes_in(self, deletes: dict[str, Iterable[object]]) -> None:
        """Several ``DELETE ... WHERE pk IN ?`` statements at once, in chunks of :data:`IN_CHUNK`."""
        self.concurrent([(name, (chunk,)) for name, keys in deletes.items()
                         for chunk in chunked(dict.fromkeys(keys), IN_CHUNK)])

    def unlogged_batches(self, batches: Sequence[Sequence[Statement]]) -> None:
        """Each inner list becomes one UNLOGGED batch (one request); batches run concurrently."""
        query = self.driver.query
        work = []
        for members in batches:
            if not members:
                continue
            batch = query.BatchStatement(batch_type=query.BatchType.UNLOGGED,
                                         consistency_level=self._level(self.settings.write_consistency))
            for name, params in members:
                batch.add(self.prepared(name), tuple(params))
                self.statements[name] += 1
            self.requests["unlogged_batch"] += 1
            work.append((batch, ()))
        if work:
            with self._guard("unlogged_batch"):
                self.driver.concurrent.execute_concurrent(self.session, work, concurrency=self.settings.concurrency,
                                                          raise_on_first_error=True)

    def has_table(self, probe: str) -> bool:
        """Whether the table statement ``probe`` reads exists: the server refuses to prepare it otherwise."""
        driver_log = logging.getLogger("cassandra.cluster")
        driver_log.addFilter(_no_prepare_errors)  # the driver logs a refused prepare at ERROR: an answer here
        try:
            self.prepared(probe)
        except StorageError as exc:
            if "unconfigured" in str(exc.__cause__).lower():  # 2.1: columnfamily; 3.0 and later: table
                return False
            raise
        finally:
            driver_log.removeFilter(_no_prepare_errors)
        return True

    def ddl(self, name: str, cql: str) -> None:
        """A schema statement (seeding, and the purge's marker table); counted as ``ddl:<name>``."""
        self._count(f"ddl:{name}")
        with self._guard(f"ddl:{name}"):
            self.session.execute(cql, timeout=max(self.settings.request_timeout, 60.0))

    def summary(self) -> dict[str, int]:
        return {"requests": sum(self.requests.values()), "statements": sum(self.statements.values())}
