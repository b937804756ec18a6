"""Shards of a SQL store: ranges of the key ``(created_at, run_id)`` the purge pages on.

A plan of ``n`` shards cuts that key at ``n - 1`` boundaries, read from the index ends (the
smallest and largest ``created_at`` and ``run_id``: a few index lookups, no scan): spread evenly in
time between the smallest and largest ``created_at`` (or the purge's cutoff, where it comes first: a run
created since cannot have expired); where those cannot be told apart (one
instant, unreadable text, an empty store), at one ``created_at`` and ``run_id`` values spread over
the characters that follow the common prefix of the smallest and largest run id. Shard ``i``
holds the rows with ``b[i] <= (created_at, run_id) < b[i+1]``; the first also holds every key below
``b[1]`` and a NULL ``created_at``, the last every key from ``b[n-1]`` on. The boundaries are bound
as the column stores its values and compared by the database, whose order on the column is total
(SQLite's too, across types): so the shards are disjoint and cover every row whatever the values;
skewed data costs balance, never correctness.

A shard's purge pages the same keyset ranges as a whole-store purge, restricted to its range;
its cursor is the range it was in and the last key it finished (JSON, :func:`encode_cursor`).
A root whose existing parent lies in another shard is left to the final pass
(:func:`foreign_parents`): were both shards to read that parent, and an engine write change it
between their reads, both would plan the child.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.engine import Connection

from workflow_retention.backends.sql.client import Client
from workflow_retention.base import Shard
from workflow_retention.exceptions import ConfigurationError
from workflow_retention.planning import chunked
from workflow_retention.timeutil import parse_timestamp

#: The characters run ids are cut at when time cannot split the store: digits and lower-case letters, whose
#: order is the same in a binary collation and in MySQL's case-insensitive ones (the cuts must increase in
#: the database's own order, or two shards would overlap).
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def plan(client: Client, n: int, until: datetime | None = None) -> list[Shard]:
    """``n`` shards of the store, boundaries from the index ends (see the module docstring); with ``until`` (the
    purge's cutoff), spread below it where the oldest ``created_at`` is older: the runs created since cannot have
    expired, and the last shard holds them all whatever the cuts."""
    r = client.table("workflow_runs").c
    with client.read() as conn:  # one query each: every engine's min/max optimisation reads one index end
        low, high = (conn.execute(select(f(r.created_at))).scalar() for f in (func.min, func.max))
        first_id, last_id = (conn.execute(select(f(r.run_id))).scalar() for f in (func.min, func.max))
    first: datetime | None
    last: datetime | None
    try:
        first, last = parse_timestamp(low), parse_timestamp(high)
    except (TypeError, ValueError):
        first = last = None
    if first is not None and last is not None and until is not None and first < until < last:
        last = until
    if first is not None and last is not None and last > first:
        step = (last - first) / n
        cuts: list[tuple[Any, str]] = [(client.dialect.db_time(first + step * k), "") for k in range(1, n)]
    else:
        at = low if low is not None else client.dialect.db_time(datetime.fromtimestamp(0).astimezone())
        cuts = [(at, run_id) for run_id in _id_cuts(first_id or "", last_id or "", n)]
    bounds: list[list[Any] | None] = [None, *([_value(t), rid] for t, rid in cuts), None]
    return [Shard(i, n, {"from": bounds[i], "to": bounds[i + 1]}) for i in range(n)]


def _id_cuts(first: str, last: str, n: int) -> list[str]:
    """``n - 1`` increasing run ids between ``first`` and ``last``: their common prefix and a spread character."""
    prefix = os.path.commonprefix([first, last]) if first and last else ""
    rest = [c for c in ALPHABET
            if (len(first) <= len(prefix) or c >= first[len(prefix)])
            and (len(last) <= len(prefix) or c <= last[len(prefix)])] or list(ALPHABET)
    picks = [rest[min(len(rest) - 1, len(rest) * k // n)] for k in range(1, n)]
    # Increasing: a repeated character gets a longer tail ("0" < "00"); where a collation pads or ignores
    # such a tail the two compare equal, which leaves a shard empty and the others still disjoint.
    return [prefix + c * (1 + sum(1 for p in picks[:k] if p == c)) for k, c in enumerate(picks)]


def where(client: Client, shard: Shard) -> ColumnElement[bool] | None:
    """The shard's condition on ``workflow_runs`` (None for the whole store); :class:`ConfigurationError` for
    a spec this backend did not plan."""
    if shard.is_whole:
        return None
    try:
        low, high = (None if b is None else (_load(b[0]), str(b[1])) for b in (shard.spec["from"], shard.spec["to"]))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ConfigurationError(f"a SQL shard's spec must be {{'from': [created_at, run_id] | null, 'to': ...}} "
                                 f"as shards() plans it; got {shard.spec!r}") from exc
    r = client.table("workflow_runs").c
    parts = []
    if low is not None:  # (created_at, run_id) >= low
        parts.append(or_(r.created_at > low[0], and_(r.created_at == low[0], r.run_id >= low[1])))
    if high is not None:  # (created_at, run_id) < high, or a NULL created_at in the first shard
        below = or_(r.created_at < high[0], and_(r.created_at == high[0], r.run_id < high[1]))
        parts.append(or_(below, r.created_at.is_(None)) if low is None else below)
    return and_(*parts) if parts else None


def foreign_parents(client: Client, conn: Connection, shard: Shard, parent_ids: Collection[str]) -> set[str]:
    """Those of ``parent_ids`` (existing runs) that lie outside ``shard``."""
    condition = where(client, shard)
    if condition is None or not parent_ids:
        return set()
    r = client.table("workflow_runs").c
    inside: set[str] = set()
    for chunk in chunked(sorted(parent_ids), client.dialect.id_chunk):
        inside.update(conn.execute(select(r.run_id).where(client.dialect.among(r.run_id, chunk), condition))
                      .scalars())
    return set(parent_ids) - inside


def encode_cursor(range_index: int, key: Sequence[Any]) -> str:
    """The cursor after ``key`` (a keyset tuple of the ``range_index``-th discovery range), as JSON text."""
    return json.dumps({"range": range_index, "after": [_value(v) for v in key]})


def decode_cursor(cursor: str) -> tuple[int, tuple[Any, ...]]:
    """``(range_index, key)`` of :func:`encode_cursor`'s text; :class:`ConfigurationError` for anything else."""
    try:
        data = json.loads(cursor)
        index, values = data["range"], data["after"]
        if not isinstance(index, int) or index < 0 or not isinstance(values, list) or not values:
            raise ValueError("shape")
        return index, tuple(_load(v) for v in values)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigurationError(f"resume_after must be a cursor a SQL shard purge reported "
                                 f"({{'range': i, 'after': [...]}}); got {cursor[:200]!r}") from exc


def _value(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"datetime": value.isoformat()}
    if value is None or isinstance(value, str | int | float):
        return value
    raise TypeError(f"cannot keep a {type(value).__name__} in a cursor")


def _load(value: Any) -> Any:
    if isinstance(value, dict):
        return datetime.fromisoformat(value["datetime"])
    if value is None or isinstance(value, str | int | float):
        return value
    raise ValueError("value")
