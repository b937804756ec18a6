"""Run records as the purge and the sweeps read them: refs, children, existence, step-checkpoint owners."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, func, select
from sqlalchemy.engine import Connection

from workflow_retention.backends.sql.client import Client
from workflow_retention.backends.sql.layout import MARKERS
from workflow_retention.planning import (
    KEY_SEPARATOR,
    TERMINAL_STATUSES,
    RunRef,
    chunked,
    key_owners,
    newest_terminal,
)
from workflow_retention.timeutil import parse_timestamp

#: RunRef.data of a run whose created_at cannot be read.
UNREADABLE_CREATED_AT = "created_at"


def readable(value: Any) -> bool:
    """True when :func:`parse_timestamp` reads ``value``; the common forms are recognised without it."""
    when = value
    if type(value) is str:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            when = None
    if type(when) is datetime and 1 < when.year < 9999:  # no offset can take it out of range
        return True
    try:
        parse_timestamp(value)
    except (TypeError, ValueError):
        return False
    return True


def ref_of(run_id: str, status: Any, updated_at: Any, parent_run_id: str | None, created_at: Any,
           workflow_name: Any = None) -> RunRef:
    """A run as plans see it: one whose created_at cannot be read is, like one whose updated_at cannot,
    never eligible (``data`` says which)."""
    ref = RunRef.parse(run_id, status, updated_at, parent_run_id, workflow_name=workflow_name)
    if not readable(created_at):
        ref.updated_at, ref.data = None, UNREADABLE_CREATED_AT
    return ref


def refs(client: Client, conn: Connection, run_ids: Sequence[str], lock: bool = False) -> dict[str, RunRef]:
    """The runs of ``run_ids`` that exist, locked until the transaction ends when ``lock``."""
    d, r = client.dialect, client.table("workflow_runs").c
    found: dict[str, RunRef] = {}
    for chunk in chunked(sorted(run_ids), d.id_chunk):
        stmt = select(r.run_id, r.status, r.updated_at, r.parent_run_id, r.created_at, r.workflow_name).where(
            d.among(r.run_id, chunk))
        if lock:
            stmt = d.lock(stmt.order_by(r.run_id))
        for row in conn.execute(stmt):
            found[row.run_id] = ref_of(row.run_id, row.status, row.updated_at, row.parent_run_id, row.created_at,
                                       row.workflow_name)
    return found


def unchanged(client: Client, conn: Connection, refs: Sequence[RunRef]) -> set[str]:
    """Lock the runs of ``refs`` (until the transaction ends, in run_id order) and read them again: the ids of
    those that still exist with the same status and updated_at (:meth:`RunRef.same_version`) and a readable
    created_at (:func:`ref_of`). A typed timestamp equal to the planned instant is not parsed again."""
    d, r = client.dialect, client.table("workflow_runs").c
    planned = {ref.run_id: ref for ref in refs}
    same: set[str] = set()
    for chunk in chunked(sorted(planned), d.id_chunk):
        stmt = d.lock(select(r.run_id, r.status, r.updated_at, r.created_at).where(d.among(r.run_id, chunk))
                      .order_by(r.run_id))
        for run_id, status, updated_at, created_at in conn.execute(stmt):
            ref = planned.get(run_id)
            if ref is None or status != ref.status or not readable(created_at):
                continue
            if updated_at == ref.updated_at or ref.same_version(RunRef.parse(run_id, status, updated_at)):
                same.add(run_id)
    return same


def children(client: Client, conn: Connection, parent_ids: Iterable[str]) -> dict[str, list[RunRef]]:
    """The child runs of ``parent_ids``, by parent."""
    d, r = client.dialect, client.table("workflow_runs").c
    found: dict[str, list[RunRef]] = {}
    for chunk in chunked(sorted(parent_ids), d.id_chunk):
        stmt = select(r.run_id, r.status, r.updated_at, r.parent_run_id, r.created_at, r.workflow_name).where(
            d.among(r.parent_run_id, chunk))
        for row in conn.execute(stmt):
            ref = ref_of(row.run_id, row.status, row.updated_at, row.parent_run_id, row.created_at, row.workflow_name)
            found.setdefault(row.parent_run_id, []).append(ref)
    return found


def newest(client: Client, conn: Connection, n: int) -> dict[str, list[str]]:
    """The ids of the ``n`` most recent terminal runs of every workflow name, newest first: one statement
    (``ROW_NUMBER() OVER (PARTITION BY workflow_name ORDER BY created_at DESC, run_id DESC)``). The layout has no
    index on (workflow_name, created_at): the server reads the terminal runs once (docs/backends/sql.md).

    A ranked row whose ``created_at`` cannot be read (NULL, which PostgreSQL sorts first, or text that is no
    timestamp) would take the place of a readable run: that workflow is ranked again in Python over all its
    terminal runs (:func:`~workflow_retention.planning.newest_terminal`, which leaves such runs out)."""
    d, table = client.dialect, client.table("workflow_runs")
    r = table.c
    terminal = d.exact(r.status).in_(sorted(TERMINAL_STATUSES))
    rank = func.row_number().over(partition_by=d.exact(r.workflow_name),  # by instant, whatever the offsets
                                  order_by=(d.instant(r.created_at).desc(), r.created_at.desc(),
                                            r.run_id.desc())).label("rank")
    ranked = select(r.workflow_name, r.run_id, r.created_at, rank).where(
        terminal, r.workflow_name.is_not(None)).subquery()
    stmt = select(ranked.c.workflow_name, ranked.c.run_id, ranked.c.created_at).where(ranked.c.rank <= n).order_by(
        ranked.c.workflow_name, ranked.c.rank)
    found: dict[str, list[str]] = {}
    again: set[str] = set()
    for workflow, run_id, created_at in conn.execute(stmt):
        found.setdefault(workflow, []).append(run_id)
        if not readable(created_at):
            again.add(workflow)
    for workflow in sorted(again):
        rows = conn.execute(select(r.workflow_name, r.run_id, r.status, r.created_at).where(
            terminal, d.exact(r.workflow_name) == workflow))
        found[workflow] = newest_terminal(rows, n).get(workflow, [])
    return found


def records(client: Client, conn: Connection, run_ids: Collection[str], table: Table | None = None) -> set[str]:
    """Those of ``run_ids`` that name a row of ``table`` (the run records by default), ids compared as the
    store does."""
    if not run_ids:
        return set()
    d = client.dialect
    column = (table if table is not None else client.table("workflow_runs")).c.run_id
    stored: set[str] = set()
    for chunk in chunked(sorted(run_ids), d.id_chunk):
        stored.update(d.id_fold(v) for v in conn.execute(select(column).where(d.among(column, chunk))).scalars())
    return {i for i in run_ids if d.id_fold(i) in stored}


def existing(client: Client, conn: Connection, run_ids: Collection[str]) -> set[str]:
    """Those of ``run_ids`` that name a run record, whatever its status, or a marked run (whose rows are
    still its own, see :data:`~.layout.MARKERS`)."""
    found = records(client, conn, run_ids)
    if client.has(MARKERS) and len(found) < len(run_ids):
        found |= records(client, conn, [i for i in run_ids if i not in found], client.markers)
    return found


def owners_of(client: Client, conn: Connection, keys: Iterable[str], run_ids: Sequence[str]) -> dict[str, str]:
    """Those of ``keys`` that belong to one of ``run_ids`` (taken to exist), with that run (:func:`key_owners`)."""
    fold = client.dialect.id_fold
    batch = set(run_ids)

    def exists(prefixes: set[str]) -> set[str]:
        return (prefixes & batch) | existing(client, conn, prefixes - batch)

    mine = {fold(r): r for r in run_ids}
    found: dict[str, str] = {}
    nested: list[str] = []
    for key in keys:
        head, sep, rest = key.partition(KEY_SEPARATOR)
        if sep and KEY_SEPARATOR not in rest:  # one ':': its only possible owner is the run it names
            if (owner := mine.get(fold(head))) is not None:
                found[key] = owner
        elif sep:
            nested.append(key)
    owners = key_owners(nested, exists) if nested else {}
    found.update({k: mine[fold(o)] for k, o in owners.items() if o is not None and fold(o) in mine})
    return found


def checkpoint_owners(client: Client, conn: Connection, run_ids: Sequence[str]) -> dict[str, str]:
    """Each step checkpoint that belongs to one of ``run_ids`` (all taken to exist), with that run.

    The checkpoints whose key starts with ``<run_id>:`` are read (a primary-key range or an
    escaped LIKE per run); each belongs to its longest prefix that names an existing run
    (:func:`key_owners`): the checkpoint ``a:b:s`` of a run ``a:b`` is not ``a``'s. Only keys
    with more than one ``:`` cost an existence lookup.
    """
    if not client.has("checkpoints"):
        return {}
    d = client.dialect
    keys: set[str] = set()
    for chunk in chunked(run_ids, d.checkpoint_chunk):
        stmt, params = d.checkpoint_keys(client.table("checkpoints"), chunk)
        keys.update(conn.execute(stmt, params).scalars())
    return owners_of(client, conn, keys, run_ids) if keys else {}


def owned_checkpoints(client: Client, conn: Connection, run_ids: Sequence[str]) -> list[str]:
    """The keys of the step checkpoints that belong to ``run_ids`` (see :func:`checkpoint_owners`), sorted."""
    return sorted(checkpoint_owners(client, conn, run_ids))


def apply(client: Client, conn: Connection, name: str, where: Any, dry_run: bool) -> int:
    """Delete (or, in a dry run, count) the rows of table ``name`` that match ``where``."""
    table = client.table(name)
    if dry_run:
        return int(conn.execute(select(func.count()).select_from(table).where(where)).scalar_one())
    return int(conn.execute(delete(table).where(where)).rowcount)
