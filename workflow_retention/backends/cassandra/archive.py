"""The archive primitives of the Cassandra store: a batch's rows read whole before the purge deletes them,
the step checkpoints of committed runs before the checkpoint pass deletes them, and archived rows written
back (docs/archive.md).

A run's rows are the ones the purge deletes with it, found exactly as :class:`~.cascade.Cascade` finds them
(:meth:`~.cascade.Cascade.read`: keys and write times), then read whole by those keys: its record, its
partitions (events, steps, hooks, flag), the pointer rows that still name it (idempotency key, step and
hook ids, hook tokens) and its listing rows (by status, workflow, parent). Its step checkpoints, which the
purge finds by one scan after the batches, are archived there (:func:`archive_checkpoints`), as part
lines. Rows are written back with plain ``INSERT`` s (new write times), the run record last with
``IF NOT EXISTS``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from workflow_retention.archiving import record_value
from workflow_retention.base import PurgeJob
from workflow_retention.exceptions import StorageError
from workflow_retention.planning import RunRef, key_prefixes
from workflow_retention.report import PurgeReport

from .cascade import POINTERS, Cascade
from .client import Cql
from .layout import STATEMENTS, TABLES
from .runs import RunReader

RECORDS = "workflow_runs"
#: A run's own partitions, keyed by run_id.
PARTITION_TABLES = ("events", "steps", "hooks", "cancellation_flags")
#: The cascade's pointer reads -> the table they read (each keyed by its first column).
POINTER_TABLES = {"idempotency_in": "runs_by_idempotency_key", "steps_by_id_in": "steps_by_id",
                  "hooks_by_id_in": "hooks_by_id", "tokens_in": "hooks_by_token"}
#: The cascade's listing reads -> (table, the key columns its rows carry, in the row's order).
LISTINGS = {"status_rows_in": ("runs_by_status", ("status", "date_bucket", "created_at", "run_id")),
            "workflow_rows_in": ("runs_by_workflow", ("workflow_name", "date_bucket", "created_at", "run_id")),
            "parent_rows_in": ("runs_by_parent", ("parent_run_id", "created_at", "run_id"))}
CHECKPOINTS = "checkpoints"
#: Every table a run's rows are archived from, in the order they are restored (the record last).
RESTORED = (*PARTITION_TABLES, *POINTER_TABLES.values(), *(t for t, _ in LISTINGS.values()), CHECKPOINTS, RECORDS)

assert {read for read, _, _ in POINTERS} == set(POINTER_TABLES), "the cascade's pointer reads changed"


def _bare(column: str) -> str:
    return column.strip('"')


_TYPES = {"TEXT", "TIMESTAMP", "TIMEUUID", "INT", "BIGINT", "BOOLEAN"}


def columns_of(table: str) -> list[str]:
    """A table's columns in declaration order, as :data:`~.layout.TABLES` declares them ("token" quoted)."""
    return [parts[0] for piece in TABLES[table].split(", ")
            if len(parts := piece.split()) >= 2 and parts[1].rstrip(",") in _TYPES]


_LISTING_TABLES = {table for table, _ in LISTINGS.values()}
for _table in RESTORED:
    _columns = columns_of(_table)
    if _table not in _LISTING_TABLES:  # keyed by run id or pointer: read by partition (a listing row by its key)
        STATEMENTS[f"archive_rows_{_table}"] = f"SELECT * FROM {_table} WHERE {_columns[0]} IN ?"
    # Plain inserts: no lightweight transaction (see docs/backends/cassandra.md, "Why not a lightweight
    # transaction"); that no restored run exists is checked before anything is written.
    STATEMENTS[f"archive_put_{_table}"] = (f"INSERT INTO {_table} ({', '.join(_columns)}) VALUES "
                                           f"({', '.join('?' * len(_columns))})")
for _table, _keys in LISTINGS.values():
    STATEMENTS[f"archive_row_{_table}"] = (f"SELECT * FROM {_table} WHERE "
                                           + " AND ".join(f"{k} = ?" for k in _keys))
assert all(t in TABLES for t in RESTORED)


def _dicts(rows: Sequence[Any]) -> list[dict[str, Any]]:
    return [dict(row._asdict()) for row in rows]


def gather(cql: Cql, run_ids: Sequence[str]) -> dict[str, tuple[RunRef, dict[str, list[Any]]]]:
    """Each run of ``run_ids`` that has a record, with its rows per table, read whole."""
    refs = RunReader(cql).refs(run_ids)
    if not refs:
        return {}
    ids = sorted(refs)
    found: dict[str, dict[str, list[Any]]] = {i: {} for i in ids}
    for row in _dicts(cql.rows_in(f"archive_rows_{RECORDS}", ids)):
        if row.get("run_id") in found:
            found[row["run_id"]].setdefault(RECORDS, []).append(row)
    runs = [refs[i].data for i in ids]
    keys = Cascade(cql, PurgeReport(backend="", dry_run=True), True).read(runs)
    for run_id, tables in _rows(cql, runs, keys).items():
        found[run_id].update(tables)
    return {i: (refs[i], found[i]) for i in ids}


def _rows(cql: Cql, runs: Sequence[Any], keys: Mapping[str, list[Any]]) -> dict[str, dict[str, list[Any]]]:
    """Everything of ``runs`` (their :class:`~.runs.RunKeys`) but their records, read whole: their partitions,
    and the pointer and listing rows that ``keys`` (what :meth:`Cascade.read` found) name."""
    found: dict[str, dict[str, list[Any]]] = {r.run_id: {} for r in runs}
    ids = sorted(found)

    def add(table: str, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if row.get("run_id") in found:
                found[row["run_id"]].setdefault(table, []).append(row)

    for table in PARTITION_TABLES:
        add(table, _dicts(cql.rows_in(f"archive_rows_{table}", ids)))
    for read, table in POINTER_TABLES.items():
        wanted = sorted({row[0] for row in keys.get(read, ()) if row.run_id in found})
        if wanted:
            add(table, _dicts(cql.rows_in(f"archive_rows_{table}", wanted)))
    for read, (table, columns) in LISTINGS.items():
        work = [(f"archive_row_{table}", tuple(getattr(row, c) for c in columns))
                for row in keys.get(read, ()) if row.run_id in found]
        add(table, [d for rows in cql.reads(work) for d in _dicts(rows)])
    return found


def archive_late_rows(cql: Cql, job: PurgeJob, runs: Sequence[Any], keys: Mapping[str, list[Any]]) -> None:
    """With an archive, before a cascade deletes what it found of committed ``runs``: their rows that are not,
    value for value, among those archived at their boundary (the engine wrote them since: an event, a step,
    a hook) are archived first, verified, as part lines (restore keeps the newest row of each primary key).
    Read whole again for the comparison, only with an archive."""
    archive = job.archive
    if archive is None or job.dry_run:
        return
    mine = [r for r in runs if r.run_id in archive.gathered]
    if not mine:
        return
    late: dict[str, dict[str, list[Any]]] = {}
    for run_id, tables in _rows(cql, mine, keys).items():
        for table, rows in tables.items():
            if extra := archive.unarchived(run_id, table, rows, record_value):
                late.setdefault(run_id, {})[table] = extra
    if late:
        job.archive_records(late)


def primary_key(table: str) -> list[str]:
    """The primary key columns of ``table`` (partition and clustering), as its DDL declares them."""
    ddl = TABLES[table]
    if "PRIMARY KEY (" in ddl:
        inner = ddl.split("PRIMARY KEY (", 1)[1]
        depth = 1
        for end, char in enumerate(inner):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                return [_bare(c.strip(" ()")) for c in inner[:end].split(",")]
        raise AssertionError(f"unbalanced PRIMARY KEY in {table}")
    return [_bare(ddl.split(" PRIMARY KEY", 1)[0].split(",")[-1].split()[0])]


def row_key(table: str, row: Any) -> tuple[Any, ...] | None:
    """An archived row's primary key (with its table), or None for anything that is not such a row."""
    if table not in TABLES or not isinstance(row, dict):
        return None
    return (table, *(row.get(c) for c in primary_key(table)))


def archive_checkpoints(cql: Cql, job: PurgeJob, doomed: Mapping[str, str]) -> None:
    """The step checkpoints about to be deleted (key -> owner run), read whole and archived as part lines of
    their runs before the caller deletes them (nothing without an archive)."""
    if job.archive is None or job.dry_run or not doomed:
        return
    found: dict[str, dict[str, list[Any]]] = {}
    for row in _dicts(cql.rows_in(f"archive_rows_{CHECKPOINTS}", sorted(doomed))):
        owner = doomed.get(row["step_run_id"])
        if owner is not None:
            found.setdefault(owner, {}).setdefault(CHECKPOINTS, []).append(row)
    job.archive_records(found)


def restore(cql: Cql, lines: list[dict[str, Any]]) -> None:
    """Insert the archived rows of ``lines``: every table but the records in unlogged batches, then the run
    records (last: a restore stopped midway leaves rows without a record, which the next purge or orphan
    sweep finds, never a record without its rows). That no run of ``lines`` exists was checked by the
    caller; the inserts are plain, as the engine's writes are (no lightweight transaction)."""
    unknown = {table for line in lines for table in line["records"]} - set(RESTORED)
    if unknown:
        raise StorageError(f"cannot restore into Cassandra: unknown table(s) {sorted(unknown)}")
    for line in lines:  # every row must be the run's own: an archive never writes into another run
        for table, rows in line["records"].items():
            for row in rows:
                key = row.get("step_run_id") if isinstance(row, dict) and table == CHECKPOINTS else None
                if not ((isinstance(row, dict) and table != CHECKPOINTS and row.get("run_id") == line["run_id"])
                        or (isinstance(key, str) and line["run_id"] in key_prefixes(key))):
                    raise StorageError(f"cannot restore run {line['run_id']!r} into Cassandra: the archive holds a "
                                       f"{table} row that is not this run's; nothing restored")
    for table in POINTER_TABLES.values():  # a pointer a live run now holds (an idempotency key taken since) refuses
        first = _bare(columns_of(table)[0])
        wanted = {row.get(first): line["run_id"] for line in lines for row in line["records"].get(table, ())}
        if wanted:
            for row in _dicts(cql.rows_in(f"archive_rows_{table}", sorted(wanted))):
                if row.get("run_id") != wanted.get(row.get(first)):
                    raise StorageError(f"cannot restore run {wanted.get(row.get(first))!r} into Cassandra: its "
                                       f"{table} row {str(row.get(first))[:200]!r} names live run "
                                       f"{row.get('run_id')!r}; nothing restored")
    statements = []
    for table in RESTORED[:-1]:
        columns = [_bare(c) for c in columns_of(table)]
        statements += [(f"archive_put_{table}", tuple(row.get(c) for c in columns))
                       for line in lines for row in line["records"].get(table, ())]
    cql.unlogged_batches([statements[i:i + 20] for i in range(0, len(statements), 20)])
    columns = [_bare(c) for c in columns_of(RECORDS)]
    records = [(f"archive_put_{RECORDS}", tuple(row.get(c) for c in columns))
               for line in lines for row in line["records"].get(RECORDS, ())]
    cql.unlogged_batches([records[i:i + 20] for i in range(0, len(records), 20)])
