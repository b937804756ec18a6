"""Shards of a Cassandra store: contiguous token ranges planned from the driver's token map.

The ring's tokens (``cluster.metadata.token_map.ring``) cut the token space ``(min, max]`` into ranges, the
wrap-around one split at the partitioner's minimum token. A shard is a run of consecutive ranges,
``{"from": t1, "to": t2}`` meaning ``token(run_id) > t1 AND token(run_id) <= t2`` (Murmur3: int64), so
its rows are read from the nodes that own them. The shards are planned from metadata only (no run is
read): the cut points are the ring tokens nearest to ``n`` equal parts of the token space, and where the
ring has fewer tokens than shards (a one-node cluster without vnodes), the equal parts themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

from workflow_retention.base import Shard
from workflow_retention.exceptions import ConfigurationError

#: The partitioners' token spaces ``(minimum, maximum]``: every partition's token lies in it.
TOKEN_SPACES = {"Murmur3Partitioner": (-(2**63), 2**63 - 1), "RandomPartitioner": (-1, 2**127)}
KIND = "token"


def token_shards(ring: Sequence[int], low: int, high: int, n: int) -> list[Shard]:
    """At most ``n`` contiguous token ranges covering ``(low, high]``, cut at ring tokens where it has enough.

    Disjoint and covering by construction: consecutive shards share their cut point (``to`` of one is
    ``from`` of the next).
    """
    tokens = sorted({t for t in ring if low < t < high})
    ideal = [low + (high - low) * i // n for i in range(1, n)]
    if len(tokens) >= n - 1:
        cuts: list[int] = []
        for target in ideal:  # the nearest ring token after the previous cut (ring ranges stay whole)
            rest = [t for t in tokens if not cuts or t > cuts[-1]]
            if not rest:
                break
            cuts.append(min(rest, key=lambda t: abs(t - target)))
    else:
        cuts = ideal
    bounds = [low, *sorted(set(cuts)), high]
    count = len(bounds) - 1
    return [Shard(i, count, {KIND: "range", "from": bounds[i], "to": bounds[i + 1]}) for i in range(count)]


def shard_range(shard: Shard, low: int, high: int) -> tuple[int, int]:
    """The token range ``(from, to]`` a shard covers (the whole space for the whole store)."""
    if shard.is_whole:
        return low, high
    spec = shard.spec
    try:
        first, last = spec["from"], spec["to"]
        ok = spec.get(KIND) == "range" and all(isinstance(v, int) and not isinstance(v, bool)
                                               for v in (first, last)) and low <= first < last <= high
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise ConfigurationError(f"shard {shard.label} is not a token range of this cluster "
                                 f"({{'token': 'range', 'from': t1, 'to': t2}}, {low} <= t1 < t2 <= {high}): "
                                 f"{spec!r}")
    return first, last


def resume_token(cursor: str | None, first: int, last: int) -> int:
    """Where a scan of ``(first, last]`` starts: after the cursor (a token reported earlier) if given."""
    if cursor is None:
        return first
    try:
        token = int(cursor)
    except ValueError:
        token = None
    if token is None or not first <= token <= last:
        raise ConfigurationError(f"resume_after must be a token of this shard ({first} < token <= {last}) "
                                 f"reported by on_cursor; got {cursor!r}")
    return token
