"""The archive primitives of the SQL stores: a batch's rows read raw before the purge deletes them, and
archived rows inserted back (docs/archive.md).

A run's rows are its ``workflow_runs`` record, its rows in the tables keyed by ``run_id`` (events, steps,
hooks, cancellation flag: :data:`~.layout.RUN_CHILDREN`) and the step checkpoints it owns
(:func:`~.runs.owned_checkpoints`): exactly what :class:`~.purge.Purge` deletes. Values are read as the
dialect's driver returns them and written back the same way, so restored rows equal the archived ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection

from workflow_retention.backends.sql import runs
from workflow_retention.backends.sql.client import Client
from workflow_retention.backends.sql.layout import RUN_CHILDREN
from workflow_retention.exceptions import StorageError
from workflow_retention.planning import RunRef, chunked, key_prefixes

#: The tables a run's rows are archived from, in the order they are restored (the record first).
TABLES = ("workflow_runs", *(name for name, _kind in RUN_CHILDREN), "checkpoints")


def gather(client: Client, run_ids: Sequence[str]) -> dict[str, tuple[RunRef, dict[str, list[Any]]]]:
    """Each run of ``run_ids`` that has a record, with its rows per table (column -> value), in one read."""
    d = client.dialect
    with client.translated("archive read"), client.read() as conn:
        refs = runs.refs(client, conn, list(run_ids))
        if not refs:
            return {}
        ids = sorted(refs)
        fold = {d.id_fold(i): i for i in ids}
        rows: dict[str, dict[str, list[Any]]] = {i: {} for i in ids}
        for name in TABLES[:-1]:
            if not client.has(name):
                continue
            table = client.table(name)
            for chunk in chunked(ids, d.id_chunk):
                for row in conn.execute(select(table).where(d.among(table.c.run_id, chunk))):
                    owner = fold.get(d.id_fold(row.run_id))
                    if owner is not None:
                        rows[owner].setdefault(name, []).append(dict(row._mapping))
        owners = runs.checkpoint_owners(client, conn, ids)
        if owners:
            table = client.table("checkpoints")
            for chunk in chunked(sorted(owners), d.id_chunk):
                for row in conn.execute(select(table).where(d.among(table.c.step_run_id, chunk))):
                    rows[owners[row.step_run_id]].setdefault("checkpoints", []).append(dict(row._mapping))
    return {i: (refs[i], rows[i]) for i in ids}


def count_rows(client: Client, conn: Connection, run_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Each run's rows per table, as :func:`gather` reads them, counted (in the caller's transaction, under
    its lock: what the delete is about to remove)."""
    d = client.dialect
    fold = {d.id_fold(i): i for i in run_ids}
    counts: dict[str, Counter] = {i: Counter({"workflow_runs": 1}) for i in run_ids}
    for name in TABLES[1:-1]:
        if not client.has(name):
            continue
        column = client.table(name).c.run_id
        for chunk in chunked(sorted(run_ids), d.id_chunk):
            for run_id, n in conn.execute(select(column, func.count()).where(d.among(column, chunk))
                                          .group_by(column)):
                owner = fold.get(d.id_fold(run_id))
                if owner is not None:
                    counts[owner][name] += int(n)
    for owner in runs.checkpoint_owners(client, conn, list(run_ids)).values():
        counts[owner]["checkpoints"] += 1
    return {i: dict(c) for i, c in counts.items()}


def restore(client: Client, lines: list[dict[str, Any]]) -> None:
    """Insert the archived rows of ``lines`` in one transaction, records first (parents before children as
    given); a run that exists fails the insert on its primary key (:class:`StorageError`), nothing written."""
    unknown = {name for line in lines for name in line["records"]} - set(TABLES)
    if unknown:
        raise StorageError(f"cannot restore into {client.url}: archived table(s) {sorted(unknown)} are not "
                           "pyworkflow's")
    fold = client.dialect.id_fold
    for line in lines:  # every row must be the run's own: an archive never writes into another run
        own = fold(line["run_id"])
        for name, rows in line["records"].items():
            for row in rows:
                key = row.get("step_run_id") if isinstance(row, dict) and name == "checkpoints" else None
                owner = row.get("run_id") if isinstance(row, dict) and name != "checkpoints" else None
                if not (isinstance(owner, str) and fold(owner) == own) and not (
                        isinstance(key, str) and own in {fold(p) for p in key_prefixes(key)}):
                    raise StorageError(f"cannot restore {line['run_id']} into {client.url}: the archive holds a "
                                       f"{name} row that is not this run's; nothing restored")

    def write(conn: Connection) -> None:
        for name in TABLES:
            batch = [row for line in lines for row in line["records"].get(name, ())]
            if batch:
                conn.execute(insert(client.table(name)), batch)

    with client.translated("restore"):
        client.write(write)
