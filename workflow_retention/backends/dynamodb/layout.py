"""pyworkflow-engine 0.4.0's single-table DynamoDB layout: the table, keys, item kinds and item encoding.

Everything here is pure (no I/O): the table's schema, key builders, the kind
and owning run of a raw item, its stored times, a size estimate, and
pyworkflow's ``_dict_to_item`` encoding (``None`` dropped, numbers as ``N``
strings), which ``seed.py`` writes with.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

from workflow_retention.planning import RUN_STATUSES, Reporter, key_prefixes, left_alone
from workflow_retention.report import Kind

Item = dict[str, dict[str, Any]]  # a raw item, as the low-level client returns it

RUN_SK = "#METADATA"
COUNTER_SK = "#EVENT_COUNTER"
MARKER_PREFIX = "RETENTION#PURGE#"
MARKER_SHARDS = 16

# Items the purge's one table Scan looks at: step checkpoints (no index names
# them) and stream data (which has no index at all).
SCANNED_PREFIXES = ("CHECKPOINT#", "STREAM_RUN#", "STREAMSUB#", "SIGACK#")


#: GSI1SK prefixes of run records: ``<status>#`` for every status pyworkflow writes, in key order.
STATUS_PREFIXES = tuple(f"{status}#" for status in sorted(RUN_STATUSES))
# Engine GSI1SK tails are ISO timestamps, which start with a digit (or a sign): all sort below ':'.
_TAIL_END = ":"


def gsi1_gaps() -> list[dict[str, tuple[str, ...]]]:
    """The GSI1SK ranges of ``GSI1PK = RUNS`` that no status range covers, as ``expr.query`` arguments.

    Before the first ``<status>#``, between ``<status>#:`` and the next
    ``<status>#``, and from the last ``<status>#:`` on: statuses pyworkflow
    never writes (``COMPLETED``, ``done``, empty) and tails that are not
    timestamps. BETWEEN is inclusive: drop what :func:`in_status_range` says
    the status queries read.
    """
    gaps: list[dict[str, tuple[str, ...]]] = [{"sk_compare": ("GSI1SK", "<", STATUS_PREFIXES[0])}]
    for here, following in zip(STATUS_PREFIXES, STATUS_PREFIXES[1:]):
        gaps.append({"sk_between": ("GSI1SK", here + _TAIL_END, following)})
    gaps.append({"sk_compare": ("GSI1SK", ">=", STATUS_PREFIXES[-1] + _TAIL_END)})
    return gaps


def in_status_range(gsi1sk: str | None) -> bool:
    """True when a GSI1SK is ``<status>#`` followed by nothing or by what sorts as a timestamp."""
    for prefix in STATUS_PREFIXES:
        if gsi1sk is not None and gsi1sk.startswith(prefix):
            return gsi1sk[len(prefix):len(prefix) + 1] < _TAIL_END
    return False


def s(value: str) -> dict[str, str]:
    return {"S": value}


def key(pk: str, sk: str) -> Item:
    return {"PK": s(pk), "SK": s(sk)}


def run_key(run_id: str) -> Item:
    return key(f"RUN#{run_id}", RUN_SK)


def flag_key(run_id: str) -> Item:
    return key(f"CANCEL#{run_id}", "#FLAG")


def marker_key(run_id: str) -> Item:
    """Where the purge records a run it committed to deleting (16 partitions, so writes spread)."""
    return key(f"{MARKER_PREFIX}{zlib.crc32(run_id.encode()) % MARKER_SHARDS:02d}", run_id)


def marker_partitions() -> list[str]:
    return [f"{MARKER_PREFIX}{n:02d}" for n in range(MARKER_SHARDS)]


def key_of(item: Item) -> Item:
    return {"PK": item["PK"], "SK": item["SK"]}


def text(item: Mapping[str, Any], name: str) -> str | None:
    value = item.get(name)
    return value.get("S") if isinstance(value, dict) else None


def written(item: Mapping[str, Any], *names: str) -> object:
    """The stored time of the first of ``names`` the item has, for ``timeutil.older``; None if it has none.

    A string attribute gives its text; any other type gives the raw attribute,
    which no parser reads (so the item is reported, never taken for old).
    """
    for name in names:
        value = item.get(name)
        if value is not None:
            return value.get("S", value) if isinstance(value, dict) else value
    return None


def leave(report: Reporter, item: Item, why: str) -> None:
    """Keep ``item`` and report it (:func:`workflow_retention.planning.left_alone`), named by its key."""
    left_alone(report, f"{item['PK']['S']!r}/{item['SK']['S']!r}", why)


def unreadable(item: Item, name: str) -> str:
    return f"its {name} {written(item, name)!r} cannot be read as a time"


def checkpoint_key(item: Item) -> str | None:
    """The derived key ``<run_id>:<step_id>`` of a step checkpoint; None for any other item.

    Stream-step checkpoints (``stream_step_<name>_<stream_run_id>``) name no
    run and give None too. Which run the key belongs to is decided by
    :func:`workflow_retention.planning.key_owners` (the longest prefix that
    names an existing run).
    """
    pk = item["PK"]["S"]
    if not pk.startswith("CHECKPOINT#"):
        return None
    rest = pk[len("CHECKPOINT#"):]
    return rest if key_prefixes(rest) else None


def classify(item: Item) -> tuple[str | None, str | None, object]:
    """``(kind, owning run_id, stored write time)`` of a raw item; kind None for what retention ignores.

    The run record itself has kind ``runs``. ``owner`` is None for items that
    belong to no run (schedules, streams). A checkpoint names the shortest
    prefix of its key, the run it would belong to were no longer prefix a run:
    ownership is decided with :func:`checkpoint_key` and ``planning.key_owners``.
    The write time is as stored (see :func:`written`): read it with ``timeutil``.
    """
    pk, sk = item["PK"]["S"], item["SK"]["S"]
    head, _, rest = pk.partition("#")
    if head == "RUN":
        if sk == RUN_SK:
            return Kind.RUNS, rest, written(item, "updated_at")
        if sk == COUNTER_SK:
            return Kind.EVENT_COUNTERS, rest, None
        if sk.startswith("EVENT#"):
            return Kind.EVENTS, rest, written(item, "timestamp")
        if sk.startswith("STEP#"):
            return Kind.STEPS, rest, written(item, "created_at")
        return None, rest, None
    if head == "HOOK":
        return Kind.HOOKS, text(item, "run_id"), written(item, "created_at")
    if head == "TOKEN":
        return Kind.HOOK_TOKENS, text(item, "run_id"), None
    if head == "CANCEL":
        return Kind.CANCELLATION_FLAGS, rest, written(item, "created_at")
    if head == "CHECKPOINT":
        prefixes = key_prefixes(rest)
        return Kind.CHECKPOINTS, prefixes[0] if prefixes else None, written(item, "updated_at", "created_at")
    if pk.startswith(MARKER_PREFIX):
        if sk.startswith("SEGMENT#"):  # a sharded purge's segment items (markers.py): its final pass drops them
            return None, None, None
        return Kind.INDEX_ENTRIES, sk, written(item, "created_at")
    other = {"SCHEDULE": Kind.SCHEDULES, "STREAM": Kind.STREAMS, "STREAM_RUN": Kind.SIGNALS,
             "STREAMSUB": Kind.SUBSCRIPTIONS, "SIGACK": Kind.ACKNOWLEDGMENTS}
    return other.get(head), None, None


def _value_size(value: Mapping[str, Any]) -> int:
    (tag, inner), = value.items()
    if tag in ("S", "B"):
        return len(inner.encode()) if isinstance(inner, str) else len(inner)
    if tag == "N":
        return len(str(inner).lstrip("-").replace(".", "")) // 2 + 1
    if tag == "L":
        return 3 + sum(1 + _value_size(v) for v in inner)
    if tag == "M":
        return 3 + sum(1 + len(k.encode()) + _value_size(v) for k, v in inner.items())
    if tag in ("SS", "NS", "BS"):
        return sum(len(str(v)) for v in inner)
    return 1  # BOOL, NULL


def item_size(item: Item) -> int:
    """DynamoDB's item size rule (attribute names plus values), an estimate in bytes."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


# -- encoding, as pyworkflow's _serialize_value / _dict_to_item -------------------------


def encode(value: Any) -> dict[str, Any]:
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, (int, float)):
        return {"N": str(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, list):
        return {"L": [encode(v) for v in value]}
    if isinstance(value, dict):
        return {"M": {k: encode(v) for k, v in value.items()}}
    return {"S": str(value)}


def to_item(data: Mapping[str, Any]) -> Item:
    return {k: encode(v) for k, v in data.items() if v is not None}


#: pyworkflow's table (``DynamoDBStorageBackend.connect()`` creates it so; ``seed`` does the same).
TABLE_SCHEMA: dict[str, Any] = {
    "KeySchema": [{"AttributeName": "PK", "KeyType": "HASH"}, {"AttributeName": "SK", "KeyType": "RANGE"}],
    "AttributeDefinitions": [{"AttributeName": n, "AttributeType": "S"} for n in (
        "PK", "SK", "GSI1PK", "GSI1SK", "GSI2PK", "GSI2SK", "GSI3PK", "GSI4PK", "GSI4SK", "GSI5PK", "GSI5SK")],
    "GlobalSecondaryIndexes": [
        {"IndexName": f"GSI{n}", "Projection": {"ProjectionType": "ALL"},
         "KeySchema": [{"AttributeName": f"GSI{n}PK", "KeyType": "HASH"}]
         + ([] if n == 3 else [{"AttributeName": f"GSI{n}SK", "KeyType": "RANGE"}])}
        for n in range(1, 6)],
    "BillingMode": "PAY_PER_REQUEST",
}
#: The key schema and the indexes retention reads (GSI1: runs by status, schedules, hooks by run; GSI4: children).
KEY_SCHEMA = {"PK": "HASH", "SK": "RANGE"}
REQUIRED_INDEXES = ("GSI1", "GSI4")
