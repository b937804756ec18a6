"""Deletes in the version that was read: the write time a delete carries, and the purge's commit of records.

Every delete of the purge, the cascade, the stream sweep and the orphan
sweep carries ``USING TIMESTAMP`` of the write time it read (:func:`stamp`), so
it removes exactly the version that was read and counted: a row written again
after the read (a pointer another run took over, an engine write) survives.

The commit of runs and schedules (:class:`Versioned`): the record (one row per
partition) is read whole with the write time of every column (``w_<column>``)
and deleted ``USING TIMESTAMP`` of the newest one, so a write landing after
the read survives the delete. Read again afterwards, a record that was written
meanwhile shows up as a partial row (the cells of the newer write); it is put
back exactly as it was read, at that write time + 1, beneath the newer cells:
the record is then what it would have been had the purge not touched it. (A
lightweight transaction's delete carries its Paxos ballot's timestamp instead,
which can be newer than an engine write still in flight: that write would
vanish. See docs/backends/cassandra.md.)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from .client import Cql, packed
from .layout import Row


def now_us() -> int:
    """This client's clock in microseconds: the write time of a delete when a row's own cannot be read."""
    return time.time_ns() // 1000


def stamp(rows: Sequence[Row]) -> int:
    """The write time a delete of ``rows`` carries: the latest read; this client's clock if one is unknown."""
    times = [r.written for r in rows]
    known = [t for t in times if t is not None]
    return max(known) if len(known) == len(times) else max([now_us(), *known])


class Versioned:
    """Version-checked deletes of one table's records: ``read`` (IN), ``delete`` and ``restore`` statements."""

    def __init__(self, cql: Cql, read: str, delete: str, restore: str, columns: list[str]) -> None:
        self.cql, self.read_name, self.delete_name, self.restore_name = cql, read, delete, restore
        self.columns = columns  # the key first, then the regular columns (whose write times are read)

    def read(self, keys: Iterable[str]) -> dict[str, Row]:
        """Whole records by key, with their write times."""
        ids = [k for k in dict.fromkeys(keys) if k]
        return {row[0]: row for row in self.cql.rows_in(self.read_name, ids)} if ids else {}

    def written(self, record: Row) -> int:
        """The newest write time of a record (this client's clock if none is readable: an empty row)."""
        times = [getattr(record, f"w_{c}") for c in self.columns[1:]]
        newest: int | None = max((t for t in times if t is not None), default=None)
        return newest or now_us()

    def delete(self, records: dict[str, Row]) -> dict[str, tuple[Row, int]]:
        """Delete ``records`` in the version read; returns key -> (record, the delete's timestamp)."""
        deleted = {key: (row, self.written(row)) for key, row in records.items()}
        self.cql.unlogged_batches(packed([(self.delete_name, (when, key))] for key, (_, when) in deleted.items()))
        return deleted

    def put_back(self, deleted: dict[str, tuple[Row, int]]) -> set[str]:
        """Put back, as they were read, the deleted records written again since; returns their keys."""
        rewritten = sorted(self.read(deleted))
        self.cql.unlogged_batches(packed(
            [(self.restore_name, (*(getattr(deleted[key][0], c) for c in self.columns), deleted[key][1] + 1))]
            for key in rewritten))
        return set(rewritten)
