"""The harness contract every backend's test fixture implements.

A harness owns one fresh, isolated store (a temporary directory, a database
schema of its own, a keyspace, a table) and offers three views of it:

* ``retention()``: workflow-retention's backend on the store;
* ``pyworkflow()``: pyworkflow-engine 0.4.0's own storage class on the same
  store (the real writer of test data), driven through ``run()`` on the
  harness's event loop;
* ``inventory()``: raw inspection of everything in the store (rows, items,
  files, index entries), each item naming the run it belongs to, if any.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from workflow_retention.base import StorageBackend
from workflow_retention.planning import key_owner, key_prefixes

#: ``Item.run_id`` prefix a harness uses for a record named by a derived key ``<run_id>:<rest>``
#: (a step checkpoint, a token-index value): :meth:`Harness.inventory` resolves it to the run that
#: owns the key, the longest prefix that is an existing run (else the shortest prefix: an orphan).
DERIVED = "\0derived:"


def derived(key: str) -> str | None:
    """The ``Item.run_id`` of a record named by the derived key ``key`` (None: it names no run)."""
    return DERIVED + key if key_prefixes(key) else None


@dataclass(frozen=True, order=True)
class Item:
    """One raw record. ``kind`` is a table, key prefix or directory; ``run_id`` the run it names.

    Run records themselves have kind ``"runs"`` and ``key`` = run_id, on every
    backend. Records that belong to no run (schedules, streams) have
    ``run_id`` None.
    """

    kind: str
    key: str
    run_id: str | None
    digest: str


def digest(value: Any) -> str:
    """A stable content hash of a raw record (dicts are key-sorted)."""
    text = value if isinstance(value, (str, bytes)) else json.dumps(value, sort_keys=True, default=str)
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha1(data).hexdigest()[:16]


def frozen_datetime(when: datetime) -> type[datetime]:
    """A ``datetime`` class whose ``now()`` returns ``when`` (for backdating pyworkflow's writes)."""

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return when.astimezone(tz) if tz else when.astimezone(UTC).replace(tzinfo=None)

    return Frozen


class Harness(ABC):
    name: ClassVar[str]
    #: The backend class's :class:`workflow_retention.base.Capability` flags, less what pyworkflow-engine's
    #: own storage class cannot write on the test server (the suite writes its data through it).
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: pyworkflow-engine 0.4.0's own ``delete_old_runs`` fails on this store (the baseline's bug).
    baseline_fails: ClassVar[bool] = False
    #: Kinds of orphan :meth:`synthesize_orphan` can create on this store.
    orphan_kinds: ClassVar[frozenset[str]] = frozenset()
    #: Of those, kinds whose write time the store records (so the grace period applies).
    timestamped_orphan_kinds: ClassVar[frozenset[str]] = frozenset()
    #: Kinds of index entry that pyworkflow itself rewrites when a run's status changes (so a revived
    #: run legitimately loses its old entry there).
    status_index_kinds: ClassVar[frozenset[str]] = frozenset()
    #: pyworkflow modules whose ``datetime`` is patched by :meth:`frozen`.
    pyworkflow_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._pw: Any = None

    def run(self, coro: Any) -> Any:
        """Run a pyworkflow coroutine on this harness's loop (its pools are bound to it)."""
        return self.loop.run_until_complete(coro)

    def pyworkflow(self) -> Any:
        """pyworkflow-engine's storage object on this store, connected (created once)."""
        if self._pw is None:
            self._pw = self.run(self._make_pyworkflow())
        return self._pw

    async def make_engine(self) -> Any:
        """A second pyworkflow storage object on this store, for a concurrent engine's own thread and loop."""
        return await self._make_pyworkflow()

    async def close_engine(self, pw: Any) -> None:
        """Release what :meth:`make_engine` opened (on the engine's loop)."""
        await pw.disconnect()

    @contextlib.contextmanager
    def frozen(self, when: datetime) -> Iterator[None]:
        """Make pyworkflow's ``datetime.now()`` return ``when`` inside the block."""
        modules = [importlib.import_module(m) for m in self.pyworkflow_modules]
        saved = [getattr(m, "datetime") for m in modules]  # noqa: B009 - a module attribute mypy cannot see
        fake = frozen_datetime(when)
        try:
            for m in modules:
                setattr(m, "datetime", fake)  # noqa: B010
            yield
        finally:
            for m, original in zip(modules, saved):
                setattr(m, "datetime", original)  # noqa: B010

    def close(self) -> None:
        if self._pw is not None:
            with contextlib.suppress(Exception):
                self.run(self._pw.disconnect())
        self.loop.close()

    # -- what each backend's harness implements ---------------------------------

    @abstractmethod
    def retention(self, **options: Any) -> StorageBackend:
        """workflow-retention's backend on this store (``options`` go to its constructor)."""

    @abstractmethod
    async def _make_pyworkflow(self) -> Any:
        """Create and connect pyworkflow-engine's storage class on this store."""

    def inventory(self) -> list[Item]:
        """Every record in the store, read raw (not through any API), each naming the run it belongs to."""
        items = self._raw_inventory()
        runs = {i.key for i in items if i.kind == "runs"}
        out = []
        for item in items:
            if item.run_id is not None and item.run_id.startswith(DERIVED):
                key = item.run_id[len(DERIVED):]
                owner = key_owner(key, runs.__contains__) or key_prefixes(key)[0]
                item = Item(item.kind, item.key, owner, item.digest)
            out.append(item)
        return out

    @abstractmethod
    def _raw_inventory(self) -> list[Item]:
        """Every record in the store, read raw; derived-key records name ``derived(key)``."""

    async def synthesize_orphan(self, kind: str, run_id: str, written_at: datetime) -> None:
        """Write raw data of ``kind`` naming ``run_id`` (which has no run record), written at ``written_at``."""
        raise NotImplementedError(kind)

    def corrupt_updated_at(self, run_id: str) -> None:
        """Overwrite the run's stored updated_at with an unparseable value (capability "corruptible_timestamps")."""
        raise NotImplementedError

    def ghosts(self) -> set[str]:
        """Runs whose record is a partial one an engine's upsert re-created after the run was deleted.

        Only stores whose engine writes run records unconditionally (Cassandra, DynamoDB) can hold them.
        """
        return set()

    def set_status(self, run_id: str, status: str) -> None:
        """Overwrite the run's stored status with ``status`` as given (not through pyworkflow's enum),
        where and as an engine would file it (status indexes included)."""
        raise NotImplementedError

    async def baseline_purge(self, cutoff: datetime) -> Any:
        """pyworkflow-engine 0.4.0's own ``delete_old_runs``."""
        return await self.pyworkflow().delete_old_runs(cutoff)
