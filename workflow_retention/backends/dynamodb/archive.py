"""The archive primitives of the DynamoDB store: a batch's items read raw before the purge deletes them, the
step checkpoints of committed runs before the Scan's join deletes them, and archived items put back
(docs/archive.md).

A run's items are the ones :class:`~.purge.Purge` deletes with it: every item of its partition
``RUN#<id>`` (the record, the event counter, events, steps), its hooks (GSI1 ``RUN_HOOKS#<id>``), their
token items (``TOKEN#<token>``) and its cancellation flag (``CANCEL#<id>``), read at the batch boundary;
its step checkpoints (``CHECKPOINT#<id>:<step_id>``), which the purge finds by its one Scan after the
batches, are archived there (:func:`archive_checkpoints`), as part lines. Items are archived in the
low-level wire form (``{"PK": {"S": ...}, ...}``) and put back as they were, the run record last and only
if it does not exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workflow_retention.base import PurgeJob
from workflow_retention.exceptions import StorageError
from workflow_retention.planning import RunRef, chunked, key_prefixes

from . import expr
from .client import IN_VALUES, SCAN_PAGE, Table
from .layout import RUN_SK, Item, flag_key, key, key_of, text
from .runs import get_runs

ITEMS = "items"


def _select_all(table: Table, partition: str, values: list[str], index: str | None = None) -> list[Item]:
    source = expr.quoted(table.name) + (f".{expr.quoted(index)}" if index else "")
    statement = f"SELECT * FROM {source} WHERE {expr.quoted(partition)} IN [{', '.join('?' * len(values))}]"
    return [item for page in table.select(statement, [{"S": v} for v in values], consistent=index is None,
                                          limit=SCAN_PAGE) for item in page]


def gather(table: Table, run_ids: Sequence[str]) -> dict[str, tuple[RunRef, dict[str, list[Any]]]]:
    """Each run of ``run_ids`` that has a record, with its items (the record, partition, hooks, tokens, flag)."""
    refs = get_runs(table, run_ids)
    if not refs:
        return {}
    found: dict[str, list[Item]] = {i: [] for i in refs}
    ids = sorted(refs)
    for chunk in chunked(ids, IN_VALUES):
        for item in _select_all(table, "PK", [f"RUN#{r}" for r in chunk]):
            owner = item["PK"]["S"][len("RUN#"):]
            if owner in found:
                found[owner].append(item)
        hooks = [h for h in _select_all(table, "GSI1PK", [f"RUN_HOOKS#{r}" for r in chunk], index="GSI1")
                 if text(h, "GSI1PK") == f"RUN_HOOKS#{text(h, 'run_id')}" and text(h, "run_id") in found]
        for hook in table.get_many([key_of(h) for h in hooks]):  # the table's own items, not the index's copies
            found[text(hook, "run_id") or ""].append(hook)
        derived = [key(f"TOKEN#{text(h, 'token')}", h["PK"]["S"]) for h in hooks if text(h, "token")]
        owners = {f"TOKEN#{text(h, 'token')}": text(h, "run_id") for h in hooks if text(h, "token")}
        for item in table.get_many(derived + [flag_key(r) for r in chunk]):
            pk = item["PK"]["S"]
            owner = owners.get(pk) if pk.startswith("TOKEN#") else pk[len("CANCEL#"):]
            if owner in found:
                found[owner].append(item)
    return {i: (refs[i], {ITEMS: found[i]}) for i in ids}


def item_key(item: Item) -> tuple[str, str]:
    """An item's key, (PK, SK)."""
    return item["PK"]["S"], item["SK"]["S"]


def archive_checkpoints(table: Table, job: PurgeJob, doomed: list[tuple[str, Item]]) -> None:
    """The step checkpoints about to be deleted (``(owner, key)`` pairs of the Scan's join), read whole and
    archived as part lines of their runs before the caller deletes them (nothing without an archive)."""
    if job.archive is None or job.dry_run or not doomed:
        return
    owners = {(i["PK"]["S"], i["SK"]["S"]): owner for owner, i in doomed}
    found: dict[str, dict[str, list[Any]]] = {}
    for item in table.get_many([key_of(i) for _, i in doomed]):
        owner = owners[(item["PK"]["S"], item["SK"]["S"])]
        found.setdefault(owner, {}).setdefault(ITEMS, []).append(item)
    job.archive_records(found)


def _owned(run_id: str, item: Any) -> bool:
    """Whether an archived item can be ``run_id``'s: its partition, its flag, its hooks, their tokens, its
    step checkpoints (the keys :func:`gather` and :func:`archive_checkpoints` read)."""
    if not isinstance(item, dict):
        return False
    pk, sk = text(item, "PK"), text(item, "SK")
    if pk is None or sk is None:
        return False
    if pk in (f"RUN#{run_id}", f"CANCEL#{run_id}") or pk.startswith(f"HOOK#{run_id}#"):
        return True
    if pk.startswith("TOKEN#"):
        return sk.startswith(f"HOOK#{run_id}#")
    return pk.startswith("CHECKPOINT#") and run_id in key_prefixes(pk[len("CHECKPOINT#"):])


def restore(table: Table, lines: list[dict[str, Any]]) -> None:
    """Put the archived items of ``lines`` back: everything but the run records first, then each record
    only if it does not exist (a run that appeared meanwhile fails the restore)."""
    from botocore.exceptions import ClientError

    unknown = {kind for line in lines for kind in line["records"]} - {ITEMS}
    if unknown:
        raise StorageError(f"cannot restore into {table.name}: unknown item kinds {sorted(unknown)}")
    for line in lines:  # every item must be the run's own: an archive never writes into another run
        for item in line["records"].get(ITEMS, ()):
            if not _owned(line["run_id"], item):
                raise StorageError(f"cannot restore {line['run_id']} into {table.name}: the archive holds an item "
                                   f"({str(text(item, 'PK') if isinstance(item, dict) else item)[:200]!r}) that is "
                                   "not this run's; nothing restored")
    items = [i for line in lines for i in line["records"].get(ITEMS, ())]
    records = [i for i in items if i["SK"]["S"] == RUN_SK and i["PK"]["S"].startswith("RUN#")]
    keys = {k: r["PK"]["S"] for r in records if (k := text(r, "GSI3PK"))}
    for chunk in chunked(sorted(keys), IN_VALUES):  # an idempotency key a live run took since: refused
        for held in _select_all(table, "GSI3PK", chunk, index="GSI3"):
            raise StorageError(f"cannot restore {keys[text(held, 'GSI3PK') or '']} into {table.name}: its "
                               f"idempotency key is held by live run {held['PK']['S']}; nothing restored")
    table.put_many([i for i in items if not (i["SK"]["S"] == RUN_SK and i["PK"]["S"].startswith("RUN#"))])
    for record in records:
        try:
            table.call("put_item", Item=record, ConditionExpression="attribute_not_exists(PK)",
                       passthrough="ConditionalCheckFailedException")
        except ClientError as exc:
            raise StorageError(f"cannot restore {record['PK']['S']} into {table.name}: it exists") from exc
