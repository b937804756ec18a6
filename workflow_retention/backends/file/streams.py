"""The baseline's other sweeps on a file store: soft-deleted schedules and aged stream data.

Each directory is streamed once. A file is read without a lock to decide,
then re-read and deleted (or rewritten atomically, keeping its owner) under
the lock the engine uses for it: ``schedule_<id>.lock``,
``signals_<stream_id>.lock``, ``sub_<stream_id>_<step_run_id>.lock``. The lock
file of a deleted schedule or subscription is deleted with it, while held
(counted as a lock file). Acknowledgments have no engine lock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from workflow_retention.backends.file.client import HeldLock, LockTimeout, NotRegular, Store
from workflow_retention.backends.file.layout import (
    ACKS,
    JSON,
    LOCKS,
    SCHEDULE_PREFIX,
    SCHEDULES,
    SIGNALS,
    SIGNALS_PREFIX,
    SUBSCRIPTIONS,
    Corrupt,
    is_component,
    lock_file,
    pair_file,
    subscription_lock,
)
from workflow_retention.base import PurgeJob
from workflow_retention.planning import DELETED_SCHEDULE, TERMINAL_SUBSCRIPTIONS, left_alone
from workflow_retention.report import Kind
from workflow_retention.timeutil import older

Record = dict[str, object]


class _Busy(Exception):
    pass


class StreamSweep:
    """Deletes soft-deleted schedules, old signals, terminal subscriptions and old acknowledgments."""

    def __init__(self, store: Store, job: PurgeJob, lock_timeout: float) -> None:
        self.store, self.job, self.lock_timeout = store, job, lock_timeout

    def run(self) -> None:
        self._files(SCHEDULES, Kind.SCHEDULES, self._deleted_schedule,
                    lambda data: lock_file(SCHEDULE_PREFIX, str(data["schedule_id"])))
        self._signals()
        self._files(SUBSCRIPTIONS, Kind.SUBSCRIPTIONS, self._old_subscription,
                    lambda data: subscription_lock(str(data["stream_id"]), str(data["step_run_id"])))
        self._files(ACKS, Kind.ACKNOWLEDGMENTS, self._old_ack, None)

    # -- predicates (the file name must match the ids inside) ----------------------------

    def _older(self, value: object) -> bool:
        return bool(older(value, self.job.sweep_cutoff))

    def _deleted_schedule(self, name: str, data: object) -> bool:
        return (isinstance(data, dict) and name == f"{data.get('schedule_id')}{JSON}"
                and data.get("status") == DELETED_SCHEDULE and self._older(data.get("updated_at")))

    def _old_subscription(self, name: str, data: object) -> bool:
        return (isinstance(data, dict)
                and name == pair_file(f"{data.get('stream_id')}", f"{data.get('step_run_id')}")
                and data.get("status") in TERMINAL_SUBSCRIPTIONS and self._older(data.get("created_at")))

    def _old_ack(self, name: str, data: object) -> bool:
        return isinstance(data, dict) and self._older(data.get("acknowledged_at"))

    # -- one directory of single-record files ------------------------------------------

    def _files(self, directory: str, kind: str, expired: Callable[[str, object], bool],
               lock_name: Callable[[Record], str] | None) -> None:
        report = self.job.report
        for entry in self.store.entries(directory):
            data = self._load(directory, entry.name)
            if data is None or not expired(entry.name, data) or not isinstance(data, dict):
                continue
            lock = lock_name(data) if lock_name else None
            if self.job.dry_run:
                report.add(kind)
                if lock is not None and is_component(lock) and self.store.is_regular(LOCKS, lock):
                    report.add(Kind.LOCK_FILES)
                continue
            try:
                with self._locked(lock, f"{directory}/{entry.name}") as held:
                    again = self._load(directory, entry.name)
                    if again is not None and expired(entry.name, again) \
                            and self.store.unlink(directory, entry.name) is not None:
                        report.add(kind)
                        if held is not None and held.unlink() is not None and not held.created:
                            report.add(Kind.LOCK_FILES)
                    elif held is not None and held.created:
                        held.unlink()
            except _Busy:
                continue

    # -- signals: one JSON array per stream ------------------------------------------------

    def _signals(self) -> None:
        for entry in self.store.entries(SIGNALS):
            if not entry.name.endswith(JSON):
                continue
            signals = self._signal_list(entry.name)
            if not signals or not any(self._old_signal(s) for s in signals):
                continue
            if self.job.dry_run:
                self.job.report.add(Kind.SIGNALS, sum(1 for s in signals if self._old_signal(s)))
                continue
            try:
                with self._locked(lock_file(SIGNALS_PREFIX, entry.name[: -len(JSON)]), f"{SIGNALS}/{entry.name}"):
                    signals = self._signal_list(entry.name) or []
                    kept = [s for s in signals if not self._old_signal(s)]
                    if len(kept) < len(signals):
                        self.store.rewrite(SIGNALS, entry.name, json.dumps(kept, indent=2).encode())
                        self.job.report.add(Kind.SIGNALS, len(signals) - len(kept))
            except _Busy:
                continue

    def _old_signal(self, signal: object) -> bool:
        return isinstance(signal, dict) and self._older(signal.get("published_at"))

    def _signal_list(self, name: str) -> list[object] | None:
        data = self._load(SIGNALS, name)
        if data is not None and not isinstance(data, list):
            left_alone(self.job.report, f"{SIGNALS}/{name}", "not a JSON array")
            return None
        return data if isinstance(data, list) else None

    # -- helpers ---------------------------------------------------------------------

    def _load(self, directory: str, name: str) -> object:
        """A record's JSON, or None if it is not a ``.json`` file, is gone, or is unusable (reported)."""
        if not name.endswith(JSON):
            return None
        try:
            return self.store.read_json(directory, name)
        except FileNotFoundError:
            return None
        except Corrupt as exc:
            left_alone(self.job.report, f"{directory}/{name}", str(exc))
            return None

    @contextmanager
    def _locked(self, lock_name: str | None, what: str) -> Iterator[HeldLock | None]:
        if lock_name is None:
            yield None
            return
        if not is_component(lock_name):
            left_alone(self.job.report, what, f"its ids give no usable lock file name ({lock_name!r})")
            raise _Busy
        try:
            with self.store.lock(lock_name, self.lock_timeout) as held:
                yield held
        except LockTimeout:
            left_alone(self.job.report, what, f".locks/{lock_name} stayed held for {self.lock_timeout}s")
            raise _Busy from None
        except NotRegular as exc:
            left_alone(self.job.report, what, f"its lock .locks/{lock_name} is {exc}")
            raise _Busy from None
