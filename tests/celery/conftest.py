"""Fixtures for the Celery tests: real Redis, real worker and beat subprocesses, isolated per test.

Every test gets a unique id used as its broker key prefix, queue, lock key and
fault-control key, so tests (and concurrent test runs) sharing one Redis never
interfere. Processes are started in their own session and killed by process
group at teardown; nothing is waited on with a fixed sleep: every wait polls
with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.services import delete_keys
from workflow_retention.backends import BACKENDS, by_url
from workflow_retention.seed import generate

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC)
#: Seeded runs per test store, and the batch size that makes their purge take several batches.
RUNS = 120
BATCH = 10


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Proc:
    """A ``celery`` subprocess (worker or beat) with its combined output in ``log``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    popen: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> Proc:
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen([sys.executable, "-m", "celery", *self.argv], cwd=self.cwd, env=self.env,
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match:
        def found() -> re.Match | None:
            if self.popen is not None and self.popen.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.popen.returncode}:\n{self.output()[-4000:]}")
            return re.search(pattern, self.output())

        return wait_until(found, timeout, f"{pattern!r} in the output of {self.name}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process group: the worker and its pool children."""
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            self.popen.wait(timeout=30)

    def terminate(self) -> None:
        """Ask for a warm shutdown (SIGTERM to the process group); :meth:`stop` waits for it."""
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        if self.popen is None:
            return
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class CeleryEnv:
    """One test's isolated Celery world: ids, environment and the processes it started."""

    redis_url: str
    tmp: Path
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    procs: list[Proc] = field(default_factory=list)
    apps: list[Any] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"wr-test-{self.uid}:"

    @property
    def queue(self) -> str:
        return f"wr-test-{self.uid}"

    @property
    def lock_key(self) -> str:
        return f"wr-test-{self.uid}:lock"

    @property
    def faults_key(self) -> str:
        return f"wr-test-{self.uid}:faults"

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def env(self, storage_url: str, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PYWORKFLOW_", "TEST_FAULTS", "TEST_CELERY"))}
        return {**base, "PYTHONPATH": str(ROOT), "TEST_CELERY_BROKER": self.redis_url,
                "TEST_CELERY_PREFIX": self.prefix, "TEST_CELERY_QUEUE": self.queue,
                "TEST_FAULTS_REDIS": self.redis_url, "TEST_FAULTS_KEY": self.faults_key,
                "PYWORKFLOW_DATA_RETENTION_DAYS": "30", "PYWORKFLOW_RETENTION_STORAGE_URL": storage_url,
                "PYWORKFLOW_RETENTION_BATCH_SIZE": str(BATCH), "PYWORKFLOW_RETENTION_LOCK_KEY": self.lock_key,
                # The start-up audit would add its own dry-run batches to the faulty store's record and faults:
                # off here; tests/celery/test_ops.py turns it on to test it.
                "PYWORKFLOW_RETENTION_STARTUP_AUDIT": "0s",
                **extra}

    def worker(self, env: dict[str, str], *, app: str = "tests.celery.testapp", concurrency: int = 1,
               queue: str | None = None, beat: bool = False) -> Proc:
        """A prefork worker consuming ``queue`` (default: this test's; "" = the app's default queue)."""
        name = f"worker{len(self.procs)}"
        argv = ["-A", app, "worker", "-l", "INFO", "-n", f"{name}-{self.uid}@%h", "-c", str(concurrency),
                "--without-mingle", "--without-gossip", "--without-heartbeat"]
        if queue != "":
            argv += ["-Q", queue or self.queue]
        if beat:
            argv += ["-B", "-s", str(self.tmp / f"{name}-schedule")]
        return self._start(name, argv, env)

    def beat(self, env: dict[str, str], *, app: str = "tests.celery.testapp") -> Proc:
        name = f"beat{len(self.procs)}"
        argv = ["-A", app, "beat", "-l", "INFO", "-s", str(self.tmp / f"{name}-schedule"), "--max-interval", "1"]
        return self._start(name, argv, env)

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, argv, env, self.tmp, self.tmp / f"{name}.log").start()
        self.procs.append(proc)
        return proc

    def client(self) -> Any:
        """A Celery app in this process, configured like the workers, to send tasks and read results."""
        from tests.celery.appfactory import make_app

        app = make_app(self.redis_url, self.prefix, self.queue)
        self.apps.append(app)
        return app

    def set_faults(self, **faults: Any) -> None:
        self.redis().set(self.faults_key, json.dumps(faults))

    def batches(self) -> list[dict[str, Any]]:
        return [json.loads(b) for b in self.redis().lrange(f"{self.faults_key}:batches", 0, -1)]

    def cleanup(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.stop()
        for app in self.apps:
            app.close()
        delete_keys(self.redis_url, f"wr-test-{self.uid}")


@pytest.fixture
def celery_env(redis_service: Any, tmp_path: Path) -> Iterator[CeleryEnv]:
    world = CeleryEnv(redis_service.url, tmp_path)
    try:
        yield world
    finally:
        world.cleanup()
        for proc in world.procs:
            if proc.popen is not None and proc.popen.returncode not in (None, 0, -signal.SIGKILL, -signal.SIGTERM):
                print(f"--- {proc.name} output ---\n{proc.output()[-3000:]}")


@pytest.fixture
def faulty_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the test-only ``faulty+<url>`` backend in this process, for this test only."""
    from tests.celery.faulty import TARGET

    monkeypatch.setitem(BACKENDS, "faulty", TARGET)


def seed_store(url: str, n: int = RUNS) -> int:
    """Seed ``url`` with ``n`` runs; return how many a 30-day purge deletes (a dry run)."""
    backend = by_url(url)
    with backend:
        backend.seed(generate(n, now=NOW, seed=7))
        return expired_runs(backend)


def expired_runs(backend: Any) -> int:
    return backend.delete_old_runs(datetime.now(UTC) - timedelta(days=30), dry_run=True).runs
