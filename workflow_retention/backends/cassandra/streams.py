"""The baseline's other sweeps: soft-deleted schedules and aged stream data (signals, acknowledgments,
terminal subscriptions), run by the backend after the purge of runs, in the same job."""

from __future__ import annotations

from workflow_retention.base import PurgeJob
from workflow_retention.planning import DELETED_SCHEDULE, TERMINAL_SUBSCRIPTIONS, left_alone
from workflow_retention.report import Kind
from workflow_retention.timeutil import older

from .client import Cql, Statement, packed
from .layout import SCHEDULE_COLUMNS, SCHEDULE_STATUSES, Row
from .runs import from_ms, hour_buckets
from .versioned import Versioned, stamp


class StreamSweep:
    """Soft-deleted schedules with their listing rows, then signals (with their acknowledgments) and terminal
    subscriptions, all older than the job's cutoff."""

    def __init__(self, cql: Cql, job: PurgeJob) -> None:
        self.cql, self.job, self.report = cql, job, job.report
        self.records = Versioned(cql, "schedule_records_in", "delete_schedule", "restore_schedule", SCHEDULE_COLUMNS)

    def run(self) -> None:
        self.schedules()
        self.streams()

    def schedules(self) -> None:
        """Soft-deleted schedules (partition ``deleted`` of schedules_by_status) not updated since the cutoff.

        Committed like runs (a version-checked delete: pyworkflow's
        ``resume_schedule`` revives a deleted schedule), then their listing
        rows go, read and counted, the ``deleted`` status row last: a status
        row whose schedule is gone is how the next purge finishes the job.
        """
        for page in self.cql.pages("schedules_by_status", (DELETED_SCHEDULE,), self.job.batch_size):
            listed = {row.schedule_id: row for row in page}
            rows = self.records.read(listed)
            expired = [rows[i] for i in listed if i in rows and rows[i].status == DELETED_SCHEDULE
                       and self._older(rows[i].updated_at, f"schedule {i!r}", "updated_at")
                       and (rows[i].next_run_time is None
                            or self._older(rows[i].next_run_time, f"schedule {i!r}", "next_run_time") is not None)]
            dangling = [listed[i] for i in listed if i not in rows]  # left by an interrupted purge
            if not expired and not dangling:
                continue
            self.job.boundary([s.schedule_id for s in expired] + [d.schedule_id for d in dangling])
            gone = expired if self.job.dry_run else self._delete_schedules(expired)
            self.report.add(Kind.SCHEDULES, len(gone))
            self._schedule_rows([(s.schedule_id, s.workflow_name, s.next_run_time) for s in gone]
                                + [(d.schedule_id, d.workflow_name, None) for d in dangling])

    def _delete_schedules(self, expired: list[Row]) -> list[Row]:
        """The schedules' commit: those unchanged since they were read go, in that version."""
        current = self.records.read(s.schedule_id for s in expired)
        same = {s.schedule_id: current[s.schedule_id] for s in expired if s.schedule_id in current
                and (current[s.schedule_id].status, current[s.schedule_id].updated_at) == (s.status, s.updated_at)}
        for s in expired:
            if s.schedule_id in current and s.schedule_id not in same:
                self.report.warn(f"schedule {s.schedule_id!r} changed before its purge committed: it was kept")
        deleted = self.records.delete(same)
        for schedule_id in sorted(self.records.put_back(deleted)):
            self.report.warn(f"schedule {schedule_id!r} was written while its purge committed: it was put back")
            del deleted[schedule_id]
        return [row for row, _ in deleted.values()]

    def _schedule_rows(self, schedules: list[tuple[str, str | None, int | None]]) -> None:
        """Read, count and delete the listing rows of schedules that are gone: the status rows last."""
        reads: list[Statement] = []
        for schedule_id, workflow_name, next_run_time in schedules:
            if (due := from_ms(next_run_time)) is not None and due.year < 9999:  # hour buckets up to + 14 h
                reads.append(("due_rows_in", (hour_buckets(due), next_run_time, schedule_id)))
            if workflow_name:
                reads.append(("schedule_by_workflow_in", (workflow_name, schedule_id)))
            reads.append(("schedule_status_rows_in", (list(SCHEDULE_STATUSES), schedule_id)))
        found: dict[str, list[Row]] = {"due_rows_in": [], "schedule_by_workflow_in": [], "schedule_status_rows_in": []}
        for (name, _), rows in zip(reads, self.cql.reads(reads)):
            found[name].extend(rows)
        self.report.add(Kind.INDEX_ENTRIES, sum(map(len, found.values())))
        if self.job.dry_run:
            return
        self.cql.unlogged_batches(packed(
            [[("delete_due_row", (stamp([r]), r.hour_bucket, r.next_run_time, r.schedule_id))]
             for r in found["due_rows_in"]]
            + [[("delete_schedule_by_workflow", (stamp([r]), r.workflow_name, r.schedule_id))]
               for r in found["schedule_by_workflow_in"]]))
        self.cql.unlogged_batches(packed([("delete_schedule_status_row", (stamp([r]), r.status, r.schedule_id))]
                                         for r in found["schedule_status_rows_in"]))

    def streams(self) -> None:
        """Signals published before the cutoff (with their acknowledgments), old terminal subscriptions."""
        size = self.job.batch_size
        for page in self.cql.scan("scan_signals", size):
            old = [r for r in page if self._older(r.published_at, f"signal {r.signal_id or r.sequence!r} of stream "
                                                                  f"{r.stream_id!r}", "published_at")]
            if old:
                self.job.boundary([r.signal_id or f"{r.stream_id}:{r.sequence}" for r in old])
                signal_ids = [r.signal_id for r in old if r.signal_id]
                self.report.add(Kind.ACKNOWLEDGMENTS, len(self.cql.rows_in("acks_in", signal_ids)))
                self.report.add(Kind.SIGNALS, len(old))
                if not self.job.dry_run:
                    self.cql.delete_in("delete_acks_in", signal_ids)
                    self.cql.concurrent([("delete_signal", (r.stream_id, r.stream_run_id, r.sequence)) for r in old])
        for page in self.cql.scan("scan_subscriptions", size):
            old = [r for r in page if r.status in TERMINAL_SUBSCRIPTIONS
                   and self._older(r.created_at, f"subscription {r.step_run_id!r} of stream {r.stream_id!r}",
                                   "created_at")]
            if old:
                self.job.boundary([f"{r.stream_id}:{r.step_run_id}" for r in old])
                self.report.add(Kind.SUBSCRIPTIONS, len(old))
                if not self.job.dry_run:
                    self.cql.unlogged_batches(packed([("delete_subscription", (stamp([r]), r.stream_id, r.step_run_id))]
                                                     for r in old))  # in the version read: an update survives

    def _older(self, value: int | None, what: str, column: str) -> bool | None:
        """Whether a timestamp read as milliseconds is before the cutoff; None (reported) when unreadable."""
        verdict = older(from_ms(value), self.job.sweep_cutoff)
        if verdict is None:
            left_alone(self.report, what, f"its {column} cannot be read")
        return verdict
