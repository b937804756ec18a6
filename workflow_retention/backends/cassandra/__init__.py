"""Cassandra backend: pyworkflow-engine 0.4.0's keyspace, purged with CQL a real cluster accepts.

URL: ``cassandra://[user:password@]host1,host2:9042/keyspace?local_dc=&read_consistency=&write_consistency=
&serial_consistency=&protocol_version=&concurrency=`` (see :mod:`.settings`). Reads and writes default to
LOCAL_QUORUM, conditional deletes to SERIAL (as pyworkflow's own LWT); no protocol version is pinned unless
given (Cassandra 2.1 needs ``protocol_version=3``: the driver cannot step down to it).

**Only legal CQL.** Every statement is in :mod:`.cql`, prepared once, executed by name with at most
``concurrency`` requests in flight (``execute_concurrent``). Each restricts the whole partition key
(``=``, or ``IN`` in chunks of 50 keys; on a composite key only its last column) or is a paged
``token()`` range scan. No ALLOW FILTERING; ``"token"`` is always quoted; no ``SELECT DISTINCT``
(paged, Cassandra 2.1.0 silently drops partitions from it: 313 of 615 returned at fetch size 500).

**Discovery: a paged token scan of ``workflow_runs``**, the table the engine treats as the truth,
filtered client-side (expired or corrupt), one page of ``batch_size`` rows at a time. The
alternative, walking ``runs_by_status`` day buckets per terminal status up to the cutoff, needs a
lower bound: a persisted low-water mark (the only places that are not a schema change are
pyworkflow's own tables, where a fake checkpoint or schedule row would be read by the engine and
flagged by any orphan sweep) or an enumeration of partitions with ``DISTINCT`` (incomplete on 2.1,
above). Its rows are also unreliable: pyworkflow files a run under the date of ``created_at`` in
whatever offset its caller used, and leaves stale rows behind ``try_claim_run``. Measured on the
local 2.1 at N = 10,000: scan 0.24 s vs walk 1.53 s on a fresh store, 0.15 s vs 0.38 s after a
purge (tombstones). The scan's cost is one small row per kept run per purge (a daily purge with
30 days' retention reads 30 days of run rows): accepted for a complete, stateless discovery.

**Planning** is the shared one (:mod:`workflow_retention.planning`): children from ``runs_by_parent``
partitions, expired parents held by surviving children, children first. A batch is deleted in
waves by height in the plan, so a run's children are committed before its own cascade starts.

**The cascade**, per wave, in the order that lets a rerun finish an interrupted purge (everything
before the run record the next purge finds the run by):

1. the run's rows are read in ``IN`` chunks (events, steps, hooks, flag, lookup rows) and counted;
2. lookup rows: ``runs_by_idempotency_key``, ``steps_by_id``, ``hooks_by_id`` with
   ``DELETE ... IF run_id = ?`` (ids and keys are shared between runs; a row pointing to another
   run stays), ``hooks_by_token`` rows that point to the run; then the listing indexes in one
   UNLOGGED batch per run: ``runs_by_status`` under all eight statuses (``try_claim_run`` leaves
   stale ones), ``runs_by_workflow`` and ``runs_by_parent``, under every date bucket pyworkflow
   may have used (the dates of ``created_at`` - 12 h ... + 14 h, bound as ``date_bucket IN ?``).
   These are blind deletes: reading 8 statuses x 2-3 buckets per run costs more than writing
   their tombstones, which land in partitions of days older than the cutoff, and never add more
   than one tombstone per run to a partition (as the engine's own status changes do);
3. partitions: ``events``, ``steps``, ``hooks``, ``cancellation_flags``, and the ``runs_by_parent``
   partition of a deleted parent (``WHERE pk IN ?``);
4. the record: ``DELETE FROM workflow_runs WHERE run_id = ? IF status = ? AND updated_at = ?``.

Step checkpoints are keyed ``<run_id>:<step_id>`` with step ids no table lists per run, so one token
scan of ``checkpoints`` per purge, after the runs, deletes those whose run record is gone (which also
finishes an interrupted purge); a dry run counts those whose run is gone or would be deleted.

**Live engine.** After ``on_batch`` each planned run is re-read; one whose status or ``updated_at``
changed keeps everything, and so do its ancestors (``changed``). The record's conditional delete
is the commit point; it also serializes with the engine's own lightweight transactions. Trade-off:
Cassandra has no transaction spanning a run's partitions and the engine updates runs
unconditionally, so a write landing between the re-read and the commit (the time of one wave's
cascade) cannot be prevented: that run keeps its record but has lost its other data; it is counted
in ``changed`` with a warning, and its ancestors, in later waves, are left untouched. Deleting the
record first would close that window but leave a crash mid-cascade with data no purge can find
(only the orphan sweep), so the contract's order wins.

**Other sweeps.** Soft-deleted schedules are read from the ``deleted`` partition of
``schedules_by_status`` (pyworkflow's own purge reads ``'DELETED'``, always empty); their
``due_schedules`` row (kept by the soft delete, under every hour bucket an offset could give),
``schedules_by_workflow`` row and, conditionally, the schedule go before the status index row.
Signals published before the cutoff go after their acknowledgments; terminal subscriptions
created before it go too (token scans; pyworkflow's filtering queries are rejected by 2.1).

**Orphans** (:mod:`.orphans`): one token scan per table that names runs (12 tables), existence
checked against ``workflow_runs`` in ``IN`` chunks, re-checked after ``on_batch``; the grace period
uses ``WRITETIME`` (every row has one: when the cluster wrote it); lookup rows go ``IF run_id = ?``;
bytes are estimated from value sizes. The census scans every table the same way.

:attr:`CassandraBackend.requests` and :attr:`CassandraBackend.statements` count round trips and CQL
statements per statement name (an UNLOGGED batch is one request, its members are statements).
"""

from workflow_retention.backends.cassandra.backend import CassandraBackend

__all__ = ["CassandraBackend"]
