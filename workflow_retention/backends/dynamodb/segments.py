"""Shards of a DynamoDB table: parallel Scan segments of GSI1, the index the purge finds runs on.

A shard is segment ``i`` of ``n`` (``Segment=i, TotalSegments=n``) of a Scan of GSI1 filtered to
``GSI1PK = RUNS``: DynamoDB splits the index's items among the segments by the hash of their key, so the
segments are disjoint, together hold every run record GSI1 holds, and are planned without reading the table.
A shard's cursor is the Scan's ``LastEvaluatedKey`` after a finished page, as JSON naming its segment;
``resume_after`` gives it back as the ``ExclusiveStartKey``. Design: docs/backends/dynamodb.md, "Shards".
"""

from __future__ import annotations

import json
from typing import Any

from workflow_retention.base import Shard
from workflow_retention.exceptions import ConfigurationError

from .layout import Item

INDEX = "GSI1"


def plan(n: int) -> list[Shard]:
    """``n`` shards: segment ``i`` of ``n`` of the Scan of GSI1 (nothing is read to plan them)."""
    return [Shard(i, n, {"segment": i, "total": n, "index": INDEX}) for i in range(n)]


def segment_of(shard: Shard) -> tuple[int, int]:
    """``(Segment, TotalSegments)`` of a shard :func:`plan` made; :class:`ConfigurationError` for any other."""
    spec = shard.spec
    if spec != {"segment": shard.index, "total": shard.count, "index": INDEX}:
        raise ConfigurationError(f"shard {shard.label} is not a DynamoDB Scan segment of {INDEX} "
                                 f"(plan it with shards(n)); got spec {spec!r}")
    return shard.index, shard.count


def cursor(shard: Shard, last: Item | None) -> str:
    """The cursor after a finished page: its ``LastEvaluatedKey`` (None: the segment is done), as JSON."""
    segment, total = segment_of(shard)
    return json.dumps({"segment": segment, "total": total, "after": last}, sort_keys=True, separators=(",", ":"))


def start_of(shard: Shard, resume_after: str | None) -> tuple[bool, Item | None]:
    """``(done, ExclusiveStartKey)`` for a purge of ``shard`` resumed after ``resume_after`` (None: start).

    A cursor of another shard, or anything :func:`cursor` does not make, is a :class:`ConfigurationError`:
    resuming a segment from another's key would skip or repeat runs.
    """
    segment, total = segment_of(shard)
    if resume_after is None:
        return False, None
    try:
        data: Any = json.loads(resume_after)
        ok = (isinstance(data, dict) and set(data) == {"segment", "total", "after"}
              and data["segment"] == segment and data["total"] == total and _is_key(data["after"]))
    except ValueError:
        ok = False
    if not ok:
        raise ConfigurationError(f"resume_after is not a cursor of DynamoDB shard {shard.label} (segment "
                                 f"{segment} of {total}); got {resume_after[:200]!r}")
    after = data["after"]
    return after is None, after


def _is_key(value: Any) -> bool:
    """None, or a key as DynamoDB returns it: attribute names to ``{"S": text}``."""
    return value is None or (isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, dict) and len(v) == 1 and isinstance(v.get("S"), str)
        for k, v in value.items()))
