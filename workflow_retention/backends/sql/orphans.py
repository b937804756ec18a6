"""The SQL orphan sweep: child rows and step checkpoints whose run record does not exist.

Which rows can be orphans, and how each is re-checked in the deleting transaction, is in
docs/backends/sql.md.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import exists, literal, select
from sqlalchemy.engine import Connection

from workflow_retention.backends.sql import runs
from workflow_retention.backends.sql.client import Client
from workflow_retention.backends.sql.markers import Markers
from workflow_retention.backends.sql.streams import KeyedSweep, run_sweep
from workflow_retention.base import OrphanJob
from workflow_retention.planning import key_owners, key_prefixes
from workflow_retention.report import Kind
from workflow_retention.timeutil import older


def sweep_orphans(client: Client, job: OrphanJob) -> None:
    """The orphan sweep of ``job``: an interrupted purge's marked runs first, then each table."""
    job.report.bytes_estimated = True
    with client.translated("orphan sweep"), client.session():
        with client.read() as conn:
            layout = client.inspect_layout(conn)
        Markers(client, job).resume()  # runs an interrupted purge left without records: finished first
        for sweep in orphan_sweeps(client, job.not_after):
            if not client.has(sweep.table.name):
                job.report.warn(layout.table_note(sweep.table.name))
                continue
            run_sweep(client, job, sweep)


def orphan_sweeps(client: Client, not_after: datetime) -> list[KeyedSweep]:
    """One keyed sweep per table that can hold orphans (only rows written before ``not_after``)."""
    tables = client.metadata.tables
    run_table = tables["workflow_runs"]

    def no_run(owner: Any) -> Any:
        return ~exists(select(literal(1)).where(run_table.c.run_id == owner))

    def decide(stamps: tuple[str, ...], keyed: bool = False) -> Callable[[Any], bool | None]:
        def verdict(row: Any) -> bool | None:
            if not keyed and not row.wr_orphan:  # keyed rows reach here only as orphans
                return False
            ages = [older(getattr(row, s), not_after, missing=True) for s in stamps]
            return None if None in ages else all(ages)
        return verdict

    sweeps = []
    for kind, name, key, stamps, payload in (
            (Kind.EVENTS, "events", "event_id", ("timestamp",), "data"),
            (Kind.STEPS, "steps", "step_id", ("created_at",), "result"),
            (Kind.HOOKS, "hooks", "token", ("created_at",), "payload"),
            (Kind.CANCELLATION_FLAGS, "cancellation_flags", "run_id", ("created_at",), None)):
        t = tables[name]
        flag = no_run(t.c.run_id)
        sweeps.append(KeyedSweep(kind, t, (key,), (*[t.c[s] for s in stamps], flag.label("wr_orphan")),
                                 recheck=flag, decide=decide(stamps), size=t.c[payload] if payload else None))
    cp = tables["checkpoints"]
    sweeps.append(KeyedSweep(Kind.CHECKPOINTS, cp, ("step_run_id",), (cp.c.created_at, cp.c.updated_at),
                             decide=decide(("created_at", "updated_at"), keyed=True), size=cp.c.data,
                             orphans=lambda conn, keys: orphan_keys(client, conn, keys)))
    return sweeps


def orphan_keys(client: Client, conn: Connection, keys: list[str]) -> set[str]:
    """The derived keys ``<run_id>:<rest>`` no prefix of which names an existing run (:func:`key_owners`).

    A key without ``:`` (a stream step's checkpoint) names no run and is never an orphan.
    """
    owners = key_owners(keys, lambda ids: runs.existing(client, conn, ids))
    return {key for key, owner in owners.items() if owner is None and key_prefixes(key)}
