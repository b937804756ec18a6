"""The baseline's other sweeps on a file store: soft-deleted schedules and aged stream data.

Each directory is streamed once. A file is read without a lock to decide,
then re-read and deleted (or rewritten atomically) under the lock the engine
uses for it: ``schedule_<id>.lock``, ``signals_<stream_id>.lock``,
``sub_<stream_id>_<step_run_id>.lock``. Acknowledgments have no engine lock.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from filelock import FileLock, Timeout

from workflow_retention.backends.file.layout import (
    ACKS,
    SCHEDULES,
    SIGNALS,
    SUBSCRIPTIONS,
    Corrupt,
    Layout,
    atomic_write,
    is_component,
    load_json,
    unlink,
)
from workflow_retention.base import PurgeJob
from workflow_retention.planning import TERMINAL_SUBSCRIPTIONS
from workflow_retention.report import Kind
from workflow_retention.timeutil import older


class _Busy(Exception):
    pass


class AuxSweep:
    def __init__(self, layout: Layout, job: PurgeJob, lock_timeout: float) -> None:
        self.layout, self.job, self.lock_timeout = layout, job, lock_timeout

    def run(self) -> None:
        self._files(SCHEDULES, Kind.SCHEDULES, self._deleted_schedule,
                    lambda data: f"schedule_{data['schedule_id']}.lock")
        self._signals()
        self._files(SUBSCRIPTIONS, Kind.SUBSCRIPTIONS, self._old_subscription,
                    lambda data: f"sub_{data['stream_id']}_{data['step_run_id']}.lock")
        self._files(ACKS, Kind.ACKNOWLEDGMENTS, self._old_ack, None)

    # -- predicates (the file name must match the ids inside) ----------------------------

    def _older(self, value: Any) -> bool:
        return bool(older(value, self.job.cutoff))

    def _deleted_schedule(self, name: str, data: Any) -> bool:
        return (isinstance(data, dict) and name == f"{data.get('schedule_id')}.json"
                and str(data.get("status")).lower() == "deleted" and self._older(data.get("updated_at")))

    def _old_subscription(self, name: str, data: Any) -> bool:
        return (isinstance(data, dict) and name == f"{data.get('stream_id')}__{data.get('step_run_id')}.json"
                and data.get("status") in TERMINAL_SUBSCRIPTIONS and self._older(data.get("created_at")))

    def _old_ack(self, name: str, data: Any) -> bool:
        return isinstance(data, dict) and self._older(data.get("acknowledged_at"))

    # -- one directory of single-record files ------------------------------------------

    def _files(self, directory: str, kind: str, expired: Callable[[str, Any], bool],
               lock_name: Callable[[dict], str] | None) -> None:
        for entry in self.layout.entries(directory):
            data = self._load(entry)
            if data is None or not expired(entry.name, data):
                continue
            if self.job.dry_run:
                self.job.report.add(kind)
                continue
            try:
                with self._locked(lock_name(data) if lock_name else None, entry.name):
                    again = self._load(entry)
                    if again is not None and expired(entry.name, again) and unlink(entry.path) is not None:
                        self.job.report.add(kind)
            except _Busy:
                continue

    # -- signals: one JSON array per stream ------------------------------------------------

    def _signals(self) -> None:
        for entry in self.layout.entries(SIGNALS):
            if not entry.name.endswith(".json"):
                continue
            signals = self._signal_list(entry)
            if not signals or not any(self._old_signal(s) for s in signals):
                continue
            if self.job.dry_run:
                self.job.report.add(Kind.SIGNALS, sum(1 for s in signals if self._old_signal(s)))
                continue
            try:
                with self._locked(f"signals_{entry.name[:-5]}.lock", entry.name):
                    signals = self._signal_list(entry) or []
                    kept = [s for s in signals if not self._old_signal(s)]
                    if len(kept) < len(signals):
                        atomic_write(self.layout.file(SIGNALS, entry.name), json.dumps(kept, indent=2).encode())
                        self.job.report.add(Kind.SIGNALS, len(signals) - len(kept))
            except _Busy:
                continue

    def _old_signal(self, signal: Any) -> bool:
        return isinstance(signal, dict) and self._older(signal.get("published_at"))

    def _signal_list(self, entry: os.DirEntry[str]) -> list | None:
        data = self._load(entry)
        if data is not None and not isinstance(data, list):
            self._skip(entry.name, "not a JSON array")
            return None
        return data

    # -- helpers ---------------------------------------------------------------------

    def _load(self, entry: os.DirEntry[str]) -> Any:
        if not entry.name.endswith(".json"):
            return None
        try:
            return load_json(entry.path)
        except FileNotFoundError:
            return None
        except (Corrupt, OSError) as exc:
            self._skip(entry.name, str(exc))
            return None

    def _skip(self, name: str, why: str) -> None:
        self.job.report.skipped += 1
        self.job.report.warn(f"{name}: {why}; left alone")

    @contextmanager
    def _locked(self, lock_name: str | None, what: str) -> Iterator[None]:
        if lock_name is None:
            yield
            return
        if not is_component(lock_name):
            self._skip(what, f"its ids give no usable lock file name ({lock_name!r})")
            raise _Busy
        try:
            with FileLock(str(self.layout.lock(lock_name)), timeout=self.lock_timeout):
                yield
        except Timeout:
            self._skip(what, f"{lock_name} stayed held for {self.lock_timeout}s")
            raise _Busy from None
