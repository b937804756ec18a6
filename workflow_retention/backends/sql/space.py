"""What a SQL store occupies (``StorageBackend.space``) and SQLite's vacuum, from each server's catalog.

One function per dialect, keyed by the dialect's ``name`` (:data:`SPACE`); each reads metadata only:

* SQLite: ``PRAGMA page_size, page_count, freelist_count, auto_vacuum`` and, where SQLite was built with
  it, the ``dbstat`` virtual table for bytes per table and index;
* PostgreSQL: ``pg_total_relation_size``, ``pg_relation_size``, ``pg_indexes_size`` and
  ``pg_stat_user_tables`` (live and dead rows, last vacuum and autovacuum) for the tables of the schema,
  with a note per table whose dead rows are past autovacuum's trigger and not vacuumed for a while;
* MySQL/MariaDB: ``information_schema.tables`` (``data_length``, ``index_length``, ``data_free``).

Deleted rows give space back differently on each: SQLite keeps the pages in the file (free pages, reused by
later writes) until ``VACUUM``; PostgreSQL leaves dead rows that (auto)vacuum makes reusable, and the files
shrink only with ``VACUUM FULL`` or a rebuild; InnoDB reuses the freed pages and returns them only with
``OPTIMIZE TABLE``. The notes say so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, timedelta
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from workflow_retention.backends.sql.client import Client
from workflow_retention.report import SpaceReport, TableSpace
from workflow_retention.timeutil import utcnow

#: PostgreSQL: a table whose dead rows are past autovacuum's trigger with no (auto)vacuum for this long lags.
AUTOVACUUM_LAG = timedelta(days=1)
#: Seconds after the writer's connections closed before the dialect's space figures include its writes: a
#: PostgreSQL backend flushes its table statistics (dead rows) to ``pg_stat_user_tables`` when it exits (an idle
#: one may keep them up to 10 s), so the caller closes its connections and waits this long.
SETTLE_S = {"postgres": 0.5, "postgresql": 0.5}


def space(client: Client) -> SpaceReport:
    """The store's :class:`SpaceReport`, by the dialect's function in :data:`SPACE`."""
    reader = SPACE.get(client.dialect.name)
    if reader is None:
        return SpaceReport.unknown(client.url, f"no space query for the {client.dialect.name} dialect")
    report = SpaceReport(backend=client.url, measured_at=utcnow())
    with client.translated("space"), client.read() as conn:
        reader(client, conn, report)
    report.tables.sort(key=lambda t: t.name)
    if report.bytes is None:
        report.total()
    return report


# -- SQLite ---------------------------------------------------------------------------------------------------

AUTO_VACUUM = {0: "none", 1: "full", 2: "incremental"}


def _pragma(conn: Connection, name: str) -> int:
    return int(conn.exec_driver_sql(f"PRAGMA {name}").scalar_one())


def sqlite_space(client: Client, conn: Connection, report: SpaceReport) -> None:
    page = _pragma(conn, "page_size")
    pages, free = _pragma(conn, "page_count"), _pragma(conn, "freelist_count")
    mode = AUTO_VACUUM.get(_pragma(conn, "auto_vacuum"), "?")
    try:
        rows = conn.exec_driver_sql(
            "SELECT m.tbl_name, m.type, SUM(d.pgsize) FROM dbstat d JOIN sqlite_master m ON m.name = d.name "
            "GROUP BY m.tbl_name, m.type").all()
    except SQLAlchemyError:  # dbstat is an optional compile-time feature
        rows = []
        report.note("bytes per table unknown: this SQLite was built without the dbstat table")
    tables: dict[str, TableSpace] = {}
    for name, kind, size in rows:
        t = tables.setdefault(name, TableSpace(name=name, data_bytes=0, index_bytes=0))
        if kind == "index":
            t.index_bytes = (t.index_bytes or 0) + int(size or 0)
        else:
            t.data_bytes = (t.data_bytes or 0) + int(size or 0)
    for t in tables.values():
        t.bytes = (t.data_bytes or 0) + (t.index_bytes or 0)
    report.tables.extend(tables.values())
    report.total()
    report.bytes = pages * page
    report.free_bytes = free * page
    path = getattr(client.dialect, "path", None)
    wal = f"{path}-wal" if path is not None else None
    wal_note = ""
    if wal is not None and os.path.exists(wal):
        wal_note = f"; its write-ahead log {os.path.basename(wal)} holds {os.path.getsize(wal):,} B more"
    report.note(f"database file {pages:,} pages of {page:,} B = {pages * page:,} B, of which {free:,} free "
                f"pages = {free * page:,} B{wal_note} (auto_vacuum={mode})")
    if mode == "full":
        report.note("auto_vacuum=FULL: SQLite gives free pages back to the file system at every commit")
    elif free:
        how = ("`purge --vacuum` runs PRAGMA incremental_vacuum, which gives them back without rewriting the file"
               if mode == "incremental" else
               "`purge --vacuum` gives them back with a full VACUUM (it rewrites the whole file and holds the "
               "write lock until done; auto_vacuum=INCREMENTAL would make this cheap)")
        report.note(f"the {free * page:,} B of free pages stay in the file (later writes reuse them): {how}")


def sqlite_vacuum(client: Client) -> str:
    """``PRAGMA incremental_vacuum`` when the database allows it, else ``VACUUM``; what ran, in words.

    On the driver's connection in autocommit (VACUUM cannot run in a transaction), so no purge batch is
    open: the caller runs it after the purge returned.
    """
    raw = client.engine.raw_connection()
    try:
        db: Any = raw.driver_connection
        mode = AUTO_VACUUM.get(db.execute("PRAGMA auto_vacuum").fetchone()[0], "?")
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        if mode == "incremental":
            # One page per step of the statement, and Python's execute() steps it once: executescript() runs it
            # to the end (sqlite3_exec).
            db.executescript("PRAGMA incremental_vacuum;")
            return f"PRAGMA incremental_vacuum ({free:,} free pages before)"
        db.execute("VACUUM")
        return f"VACUUM (auto_vacuum={mode}; {free:,} free pages before; the file was rewritten)"
    finally:
        raw.close()


# -- PostgreSQL -----------------------------------------------------------------------------------------------

PG_TABLES = (
    "SELECT c.relname, pg_total_relation_size(c.oid), pg_relation_size(c.oid), pg_indexes_size(c.oid), "
    "s.n_live_tup, s.n_dead_tup, s.last_vacuum, s.last_autovacuum, c.reloptions "
    "FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
    "WHERE c.relkind IN ('r', 'p') AND c.relnamespace = current_schema()::regnamespace")
PG_SETTINGS = ("SELECT name, setting FROM pg_settings WHERE name IN ('autovacuum', 'autovacuum_vacuum_threshold', "
               "'autovacuum_vacuum_scale_factor', 'track_counts')")


def postgres_space(client: Client, conn: Connection, report: SpaceReport) -> None:
    settings: dict[str, str] = {str(k): str(v) for k, v in conn.exec_driver_sql(PG_SETTINGS).all()}
    threshold = float(settings.get("autovacuum_vacuum_threshold", 50))
    scale = float(settings.get("autovacuum_vacuum_scale_factor", 0.2))
    now = utcnow()
    dead_total = 0
    for name, total, heap, indexes, live, dead, vacuum, autovacuum, options in conn.exec_driver_sql(PG_TABLES):
        last = max((w for w in (vacuum, autovacuum) if w is not None), default=None)
        table = TableSpace(name=name, bytes=int(total), data_bytes=int(heap), index_bytes=int(indexes),
                           rows=None if live is None else int(live), dead_rows=None if dead is None else int(dead),
                           last_vacuum=last.astimezone(UTC) if last is not None else None)
        report.tables.append(table)
        dead_total += table.dead_rows or 0
        trigger = threshold + scale * (table.rows or 0)
        if table.dead_rows and table.dead_rows > trigger:
            since = "never vacuumed" if last is None else f"last vacuumed {_ago(now - last)} ago"
            if last is None or now - last > AUTOVACUUM_LAG:
                custom = " (per-table autovacuum settings apply)" if options else ""
                report.note(f"autovacuum lags on {name}: {table.dead_rows:,} dead rows, past its trigger of "
                            f"{trigger:,.0f}{custom}, {since}: the space stays unusable until it runs (VACUUM "
                            f"{name} does it now); check that autovacuum keeps up")
            else:
                report.note(f"{name}: {table.dead_rows:,} dead rows wait for autovacuum ({since})")
    if settings.get("autovacuum") == "off":
        report.note("autovacuum is off on this server: dead rows stay until a manual VACUUM")
    if settings.get("track_counts") == "off":
        report.note("track_counts is off: live and dead row counts are not collected (and autovacuum cannot run)")
    if dead_total:
        report.note(f"{dead_total:,} dead rows in all: (auto)vacuum makes their space reusable by new rows; the files "
                    "shrink only with VACUUM FULL or a rebuild (pg_repack), which lock or rewrite the table")


def _ago(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f}h" if hours < 48 else f"{hours / 24:.0f}d"


# -- MySQL / MariaDB ----------------------------------------------------------------------------------------

MYSQL_TABLES = ("SELECT table_name, data_length, index_length, data_free, table_rows FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE'")


def mysql_space(client: Client, conn: Connection, report: SpaceReport) -> None:
    report.approximate = True
    try:  # MySQL 8 caches these figures for a day by default; this session wants them fresh (MariaDB has no cache)
        conn.exec_driver_sql("SET SESSION information_schema_stats_expiry = 0")
    except SQLAlchemyError:
        pass
    for name, data, index, free, rows in conn.exec_driver_sql(MYSQL_TABLES):
        data_b, index_b = int(data or 0), int(index or 0)
        report.tables.append(TableSpace(name=name, bytes=data_b + index_b, data_bytes=data_b, index_bytes=index_b,
                                        free_bytes=None if free is None else int(free),
                                        rows=None if rows is None else int(rows)))
    free_total = sum(t.free_bytes or 0 for t in report.tables)
    report.note("InnoDB's figures are estimates (information_schema.tables; MySQL 8 caches them for "
                "information_schema_stats_expiry, a day by default, unless ANALYZE TABLE refreshes them)")
    if free_total:
        report.note(f"data_free {free_total:,} B in all: InnoDB reuses the freed pages for new rows; OPTIMIZE TABLE "
                    "gives them back to the file system (it rebuilds the table; with a shared tablespace, "
                    "data_free is the shared file's and is not returned)")


SPACE: dict[str, Callable[[Client, Connection, SpaceReport], None]] = {
    "sqlite": sqlite_space, "postgres": postgres_space, "postgresql": postgres_space, "mysql": mysql_space,
}
