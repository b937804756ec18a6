"""Settings from the environment. This is the only module that reads ``os.environ``.

Every variable is validated here; a bad value raises :class:`ConfigurationError`
naming the variable and the expected form.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

from workflow_retention import values
from workflow_retention.archive import SETTING as ARCHIVE_URL
from workflow_retention.archive import check_archive_url
from workflow_retention.base import DEFAULT_BATCH_SIZE, DEFAULT_GRACE, validate_batch_size, validate_shards
from workflow_retention.exceptions import ConfigurationError
from workflow_retention.policy import Policy, load_policy
from workflow_retention.urls import REDIS_URL_PREFIXES, redact_url, secrets_of, split_url

RETENTION_DAYS = "PYWORKFLOW_DATA_RETENTION_DAYS"
STORAGE_URL = "PYWORKFLOW_RETENTION_STORAGE_URL"
BATCH_SIZE = "PYWORKFLOW_RETENTION_BATCH_SIZE"
ENABLED = "PYWORKFLOW_RETENTION_ENABLED"
LOCK_URL = "PYWORKFLOW_RETENTION_LOCK_URL"
LOCK_TTL = "PYWORKFLOW_RETENTION_LOCK_TTL"
REPAIR_ORPHANS = "PYWORKFLOW_RETENTION_REPAIR_ORPHANS"
ORPHAN_GRACE = "PYWORKFLOW_RETENTION_ORPHAN_GRACE"
BROKER = "PYWORKFLOW_CELERY_BROKER"
LOCK_KEY = "PYWORKFLOW_RETENTION_LOCK_KEY"
SCHEDULE = "PYWORKFLOW_RETENTION_SCHEDULE"
SCHEDULE_JITTER = "PYWORKFLOW_RETENTION_SCHEDULE_JITTER"
QUEUE = "PYWORKFLOW_RETENTION_QUEUE"
RESULT_BACKEND = "PYWORKFLOW_CELERY_RESULT_BACKEND"
MIN_AGE = "PYWORKFLOW_RETENTION_MIN_AGE"
PUSHGATEWAY_URL = "PYWORKFLOW_RETENTION_PUSHGATEWAY_URL"
STATE_URL = "PYWORKFLOW_RETENTION_STATE_URL"
STARTUP_AUDIT = "PYWORKFLOW_RETENTION_STARTUP_AUDIT"
SHARDS = "PYWORKFLOW_RETENTION_SHARDS"
POLICY = "PYWORKFLOW_RETENTION_POLICY"
MAX_RUNS = "PYWORKFLOW_RETENTION_MAX_RUNS"
#: The largest PYWORKFLOW_RETENTION_MAX_RUNS accepted.
MAX_MAX_RUNS = 10**12

DEFAULT_BROKER = "redis://localhost:6379/0"
DEFAULT_LOCK_TTL = timedelta(minutes=5)
LOCK_KEY_PREFIX = "workflow-retention:lock"
DEFAULT_SCHEDULE = "03:00"
DEFAULT_JITTER = timedelta(hours=1)
#: The blast-radius guard: a cutoff newer than this is refused unless asked for explicitly.
DEFAULT_MIN_AGE = timedelta(hours=1)
MAX_LOCK_TTL = timedelta(days=1)
MAX_INTERVAL = timedelta(days=30)
#: How long the worker's start-up audit may take before it stops and reports what it counted.
DEFAULT_STARTUP_AUDIT = timedelta(seconds=30)
MAX_STARTUP_AUDIT = timedelta(minutes=10)

#: Every variable this package reads: name -> (default, meaning). The README table mirrors it.
VARIABLES: dict[str, tuple[str, str]] = {
    RETENTION_DAYS: ("unset (keep forever)",
        "Delete terminal runs not updated for this many days; a positive integer."),
    STORAGE_URL: ("unset",
        "Storage URL (memory://, file:///dir, sqlite:///file.db, postgresql://, mysql://, cassandra://, "
        "dynamodb://). Overrides the PyWorkflow variables below."),
    "PYWORKFLOW_STORAGE_TYPE": ("unset",
        "PyWorkflow's storage type (memory, file, sqlite, postgres, citus, mysql, cassandra, dynamodb), used "
        "when no URL is set. PYWORKFLOW_STORAGE_BACKEND is read if it is unset."),
    "PYWORKFLOW_STORAGE_PATH": ("./pyworkflow_data (file), ./pyworkflow_data/pyworkflow.db (sqlite)",
        "Directory or database file of file and SQLite stores."),
    "PYWORKFLOW_POSTGRES_HOST/PORT/USER/PASSWORD/DATABASE": ("localhost, 5432, pyworkflow, empty, pyworkflow",
        "PostgreSQL connection, as PyWorkflow reads it."),
    "PYWORKFLOW_MYSQL_HOST/PORT/USER/PASSWORD/DATABASE": ("localhost, 3306, pyworkflow, empty, pyworkflow",
        "MySQL connection, as PyWorkflow reads it."),
    BATCH_SIZE: (f"the backend's ({DEFAULT_BATCH_SIZE} for most)",
        "Runs per batch (one short transaction each); 1 to 10000."),
    ENABLED: ("true", "Kill switch for the Celery task: false turns it off."),
    LOCK_URL: ("the broker, if it is Redis", "Redis URL of the singleton lock."),
    LOCK_TTL: ("5m", "Lease of the singleton lock; renewed every TTL/3 while a purge runs."),
    REPAIR_ORPHANS: ("false", "true: the Celery task also sweeps orphans after the purge."),
    ORPHAN_GRACE: ("1h", "Orphans younger than this are left alone."),
    BROKER: (DEFAULT_BROKER, "Broker of the ready-made worker app (workflow_retention.worker)."),
    LOCK_KEY: (f"{LOCK_KEY_PREFIX}:<hash of the storage URL>",
        "Redis key of the singleton lock; purges of the same store must share it."),
    SCHEDULE: (DEFAULT_SCHEDULE,
        "When the Celery beat entry runs: a daily time HH:MM in the Celery app's timezone (UTC by default), "
        "or an interval such as 6h or 30s."),
    SCHEDULE_JITTER: ("1h",
        "A daily run starts up to this much after SCHEDULE; the offset is fixed per lock key, so every beat "
        "of one deployment picks the same minute. 0s disables it."),
    QUEUE: ("the app's default queue", "Celery queue of the retention task (the ready-made worker consumes it)."),
    RESULT_BACKEND: ("unset (results not stored)",
        "Result backend of the ready-made worker app, e.g. redis://localhost:6379/1."),
    MIN_AGE: ("1h",
        "Blast-radius guard: a cutoff newer than this (a purge of runs finished within it) is refused unless "
        "the command line passes --allow-recent-cutoff. 0s disables it."),
    PUSHGATEWAY_URL: ("unset (nothing pushed)",
        "Prometheus Pushgateway the Celery task pushes its metrics to after every run, e.g. "
        "http://pushgateway:9091 (http:// or https://; user:password@ is sent as basic auth)."),
    STATE_URL: ("the lock's Redis (Celery task); unset (command line)",
        "Redis URL of the run history (every purge and orphan sweep, its outcome and counts) that `status` "
        "and the metrics read. The command line records history only when this or "
        "PYWORKFLOW_RETENTION_LOCK_URL is set."),
    STARTUP_AUDIT: ("30s",
        "When a worker with the task starts, it logs what the store holds and what a purge would delete, "
        "counting for at most this long; 0s disables it."),
    ARCHIVE_URL: ("unset (no archive)",
        "Archive every batch of a purge there before deleting it, verified, fail-closed (docs/archive.md): "
        "file:///absolute/dir or s3://bucket[/prefix][?endpoint_url=...&region=...]; S3 credentials come from the "
        "AWS chain only."),
    POLICY: ("unset (PYWORKFLOW_DATA_RETENTION_DAYS alone decides)",
        "Path of a TOML retention policy (docs/policy.md): per status, per workflow name or glob, keep_last, a "
        "minimum. Read and checked before any store is opened; a bad policy is an error naming the key."),
    MAX_RUNS: ("unset (no cap)",
        "The most runs one purge may delete: a purge that would pass it stops at a batch boundary with an error."),
    SHARDS: ("1",
        "Shards the Celery task splits the purge into, each a task of its own (a chord), then a final "
        "whole-store pass; 1 to 1024. 1 is one purge in the task itself. Needs a result backend when above 1."),
}


@dataclass(frozen=True)
class Settings:
    retention_days: int | None
    storage_url: str | None
    batch_size: int | None = None
    enabled: bool = True
    lock_url: str | None = None
    lock_ttl: timedelta = DEFAULT_LOCK_TTL
    repair_orphans: bool = False
    orphan_grace: timedelta = DEFAULT_GRACE
    broker_url: str = DEFAULT_BROKER
    storage_error: str | None = field(default=None, repr=False)
    lock_key: str = LOCK_KEY_PREFIX
    explicit_lock_url: str | None = field(default=None, repr=False)
    min_age: timedelta = DEFAULT_MIN_AGE
    #: Problems with settings only the Celery task uses, found by a lenient load (the CLI warns about them).
    problems: tuple[str, ...] = field(default=(), repr=False)
    pushgateway_url: str | None = field(default=None, repr=False)
    #: PYWORKFLOW_RETENTION_STATE_URL as set (None: the history goes to the lock's Redis, see history_url_for).
    state_url: str | None = field(default=None, repr=False)
    startup_audit: timedelta = field(default=DEFAULT_STARTUP_AUDIT, repr=False)
    #: PYWORKFLOW_RETENTION_SHARDS: how many shards the Celery task fans the purge out to (1: no fan-out).
    shards: int = field(default=1, repr=False)
    #: PYWORKFLOW_RETENTION_POLICY, read and validated (None: the days setting alone decides).
    policy: Policy | None = field(default=None, repr=False)
    #: PYWORKFLOW_RETENTION_MAX_RUNS (None: no cap).
    max_runs: int | None = field(default=None, repr=False)
    #: PYWORKFLOW_RETENTION_ARCHIVE_URL: where a purge archives each batch before deleting it (None: no archive).
    archive_url: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (f"Settings(retention_days={self.retention_days}, storage_url={self._safe(self.storage_url)}, "
                f"batch_size={self.batch_size}, enabled={self.enabled}, lock_url={self._safe(self.lock_url)}, "
                f"lock_ttl={self.lock_ttl}, repair_orphans={self.repair_orphans}, "
                f"orphan_grace={self.orphan_grace}, broker_url={self._safe(self.broker_url)})")

    __str__ = __repr__

    @staticmethod
    def _safe(url: str | None) -> str | None:
        return redact_url(url) if url else url

    def require_storage_url(self) -> str:
        if self.storage_url is None:
            raise ConfigurationError(self.storage_error or "no storage configured")
        return self.storage_url

    @property
    def cli_history_url(self) -> str | None:
        """Where the command line records and reads run history: STATE_URL, else an explicit LOCK_URL, else None."""
        return self.state_url or self.explicit_lock_url

    def history_url_for(self, broker_url: str | None) -> str:
        """Where the Celery task records run history: STATE_URL, else the singleton lock's Redis."""
        return self.state_url or self.lock_url_for(broker_url)

    def lock_url_for(self, broker_url: str | None) -> str:
        """The singleton lock's Redis URL: LOCK_URL if set, else ``broker_url`` if it is Redis."""
        if self.explicit_lock_url:
            if not self.explicit_lock_url.startswith(REDIS_URL_PREFIXES):
                raise ConfigurationError(f"{LOCK_URL} must be a Redis URL (redis://host:6379/0, rediss://..., "
                                         f"unix:///path); got {self._safe(self.explicit_lock_url)!r}")
            return self.explicit_lock_url
        if isinstance(broker_url, str) and broker_url.startswith(REDIS_URL_PREFIXES):
            return broker_url
        broker = self._safe(broker_url) if isinstance(broker_url, str) else "unset"
        raise ConfigurationError(
            f"{LOCK_URL} is not set and the Celery broker ({broker}) is not Redis: "
            f"set {LOCK_URL} to a Redis URL for the singleton lock, e.g. redis://localhost:6379/0"
        )


@dataclass(frozen=True)
class ScheduleSettings:
    """When the Celery beat entry runs: daily at ``daily_at`` (hour, minute) or ``every`` interval."""

    daily_at: tuple[int, int] | None
    every: timedelta | None
    jitter: timedelta
    queue: str | None
    lock_key: str


_DAILY = re.compile(r"^\s*([01]?\d|2[0-3]):([0-5]\d)\s*$")


def parse_schedule(raw: str) -> tuple[tuple[int, int] | None, timedelta | None]:
    """``HH:MM`` (daily) or a duration such as ``6h`` (interval)."""
    if match := _DAILY.match(raw):
        return (int(match.group(1)), int(match.group(2))), None
    expected = (f"{SCHEDULE} must be a daily time HH:MM (e.g. 03:00) or an interval such as 6h or 30s, "
                "from 1s to 30d")
    try:
        every = values.duration(raw, SCHEDULE, minimum=timedelta(seconds=1), maximum=MAX_INTERVAL)
    except ConfigurationError:
        raise ConfigurationError(f"{expected}; got {raw!r}") from None
    return None, every


def lock_key_for(storage_url: str | None) -> str:
    """The default lock key: one per store, so deployments sharing a Redis do not block each other."""
    if not storage_url:
        return LOCK_KEY_PREFIX
    return f"{LOCK_KEY_PREFIX}:{hashlib.sha256(redact_url(storage_url).encode()).hexdigest()[:12]}"


def load_schedule(env: Mapping[str, str] | None = None) -> ScheduleSettings:
    """Read the beat-entry settings only, so a bad purge setting cannot break a worker's start-up."""
    env = os.environ if env is None else env
    daily_at, every = parse_schedule(env.get(SCHEDULE) or DEFAULT_SCHEDULE)
    jitter = (values.duration(env[SCHEDULE_JITTER], SCHEDULE_JITTER, maximum=timedelta(hours=23))
              if env.get(SCHEDULE_JITTER) else DEFAULT_JITTER)
    storage_url = env.get(STORAGE_URL) or None
    if storage_url is None:
        try:
            storage_url = storage_url_from_env(env)
        except ConfigurationError:
            storage_url = None
    return ScheduleSettings(daily_at=daily_at, every=every, jitter=jitter,
                            queue=(env.get(QUEUE) or "").strip() or None,
                            lock_key=(env.get(LOCK_KEY) or "").strip() or lock_key_for(storage_url))


def worker_app_config(env: Mapping[str, str] | None = None) -> dict[str, object]:
    """Celery configuration of the ready-made worker app (:mod:`workflow_retention.worker`)."""
    env = os.environ if env is None else env
    conf: dict[str, object] = {"broker_url": env.get(BROKER) or DEFAULT_BROKER,
                               "result_backend": env.get(RESULT_BACKEND) or None}
    if queue := (env.get(QUEUE) or "").strip():
        conf["task_default_queue"] = queue
    return conf


def parse_retention_days(raw: str | None, name: str = RETENTION_DAYS) -> int | None:
    """Unset or empty means keep forever; otherwise a positive integer of ASCII digits, at most 36500."""
    if raw is None or raw.strip() == "":
        return None
    try:
        return values.integer(raw, name, maximum=values.MAX_DAYS, example=30)
    except ConfigurationError:
        raise ConfigurationError(
            f"{name} must be a positive integer number of days from 1 to {values.MAX_DAYS} (e.g. 30), "
            f"or unset to keep runs forever; got {raw!r}") from None


def parse_bool(name: str, raw: str | None, default: bool) -> bool:
    return values.boolean(raw, name, default)


def storage_url_from_env(env: Mapping[str, str]) -> str:
    """Build a storage URL from PyWorkflow's own variables, with PyWorkflow's defaults."""
    kind = (env.get("PYWORKFLOW_STORAGE_TYPE") or env.get("PYWORKFLOW_STORAGE_BACKEND") or "").strip().lower()
    if not kind:
        raise ConfigurationError(
            f"no storage configured: set {STORAGE_URL} (e.g. sqlite:////var/lib/app/pyworkflow.db) "
            "or PyWorkflow's PYWORKFLOW_STORAGE_TYPE"
        )
    if kind == "memory":
        return "memory://"
    if kind in ("file", "sqlite"):
        default = "./pyworkflow_data" if kind == "file" else "./pyworkflow_data/pyworkflow.db"
        path = Path(env.get("PYWORKFLOW_STORAGE_PATH") or default).expanduser().resolve()
        return f"{kind}://{quote(str(path))}"
    if kind in ("postgres", "citus", "mysql"):
        prefix = "PYWORKFLOW_MYSQL_" if kind == "mysql" else "PYWORKFLOW_POSTGRES_"
        port = env.get(prefix + "PORT") or ("3306" if kind == "mysql" else "5432")
        try:
            values.integer(port, f"{prefix}PORT", maximum=65535, example=5432 if kind != "mysql" else 3306)
        except ConfigurationError:
            raise ConfigurationError(f"{prefix}PORT must be a port number from 1 to 65535; got {port!r}") from None
        user = quote(env.get(prefix + "USER") or "pyworkflow", safe="")
        password = env.get(prefix + "PASSWORD") or ""
        auth = f"{user}:{quote(password, safe='')}" if password else user
        host = env.get(prefix + "HOST") or "localhost"
        database = quote(env.get(prefix + "DATABASE") or "pyworkflow", safe="")
        scheme = "mysql" if kind == "mysql" else "postgresql"
        return f"{scheme}://{auth}@{host}:{port}/{database}"
    if kind == "cassandra":
        return "cassandra://localhost:9042/pyworkflow"
    if kind == "dynamodb":
        return "dynamodb://pyworkflow?region=us-east-1"
    raise ConfigurationError(
        f"PYWORKFLOW_STORAGE_TYPE={kind!r} is not supported; expected one of "
        "memory, file, sqlite, postgres, citus, mysql, cassandra, dynamodb"
    )


#: Variables that hold a URL (which may carry a password) or a password itself.
URL_VARIABLES = (STORAGE_URL, LOCK_URL, BROKER, RESULT_BACKEND, PUSHGATEWAY_URL, STATE_URL)
PASSWORD_VARIABLES = ("PYWORKFLOW_POSTGRES_PASSWORD", "PYWORKFLOW_MYSQL_PASSWORD")


def secrets(env: Mapping[str, str] | None = None, urls: tuple[str | None, ...] = ()) -> list[str]:
    """Every secret the environment (and ``urls``, e.g. a ``--storage`` argument) holds, for scrubbing output.

    The passwords of every URL variable (see :func:`workflow_retention.urls.secrets_of`) and the
    PostgreSQL/MySQL password variables, whole and in the fragments a parser error may quote.
    """
    env = os.environ if env is None else env
    found = [secret for url in (*(env.get(name) for name in URL_VARIABLES), *urls) if url
             for secret in secrets_of(url)]
    found += [env[name] for name in PASSWORD_VARIABLES if env.get(name)]
    return found


def load_settings(env: Mapping[str, str] | None = None, *, strict: bool = True) -> Settings:
    """Read and validate every setting. ``env`` defaults to ``os.environ``.

    With ``strict=False`` (the command line, which takes no lock and runs no
    schedule), a bad value of a setting only the Celery task uses does not
    fail: it is left at its default and described in ``Settings.problems``.
    """
    env = os.environ if env is None else env
    storage_url = env.get(STORAGE_URL) or None
    storage_error = None
    if storage_url is None:
        try:
            storage_url = storage_url_from_env(env)
        except ConfigurationError as exc:
            storage_error = str(exc)
    problems: list[str] = []

    def celery_only(parse: Callable[[], object], default: object) -> object:
        try:
            return parse()
        except ConfigurationError as exc:
            if strict:
                raise
            problems.append(str(exc))
            return default

    broker = env.get(BROKER) or DEFAULT_BROKER
    lock_url = env.get(LOCK_URL) or (broker if broker.startswith(REDIS_URL_PREFIXES) else None)
    lock_ttl = celery_only(lambda: values.duration(env[LOCK_TTL], LOCK_TTL, minimum=timedelta(seconds=3),
                                                   maximum=MAX_LOCK_TTL) if env.get(LOCK_TTL) else DEFAULT_LOCK_TTL,
                           DEFAULT_LOCK_TTL)
    return Settings(
        retention_days=parse_retention_days(env.get(RETENTION_DAYS)),
        storage_url=storage_url,
        batch_size=validate_batch_size(env[BATCH_SIZE], BATCH_SIZE) if env.get(BATCH_SIZE) else None,
        enabled=celery_only(lambda: values.boolean(env.get(ENABLED), ENABLED, True), True),  # type: ignore[arg-type]
        lock_url=lock_url,
        lock_ttl=lock_ttl,  # type: ignore[arg-type]
        repair_orphans=celery_only(lambda: values.boolean(env.get(REPAIR_ORPHANS), REPAIR_ORPHANS, False),
                                   False),  # type: ignore[arg-type]
        orphan_grace=celery_only(lambda: values.duration(env[ORPHAN_GRACE], ORPHAN_GRACE)
                                 if env.get(ORPHAN_GRACE) else DEFAULT_GRACE, DEFAULT_GRACE),  # type: ignore[arg-type]
        broker_url=broker,
        storage_error=storage_error,
        lock_key=(env.get(LOCK_KEY) or "").strip() or lock_key_for(storage_url),
        explicit_lock_url=env.get(LOCK_URL) or None,
        min_age=values.duration(env[MIN_AGE], MIN_AGE) if env.get(MIN_AGE) else DEFAULT_MIN_AGE,
        pushgateway_url=celery_only(lambda: parse_pushgateway_url(env.get(PUSHGATEWAY_URL)), None),  # type: ignore[arg-type]
        state_url=parse_state_url(env.get(STATE_URL)),
        startup_audit=celery_only(lambda: values.duration(env[STARTUP_AUDIT], STARTUP_AUDIT,
                                                          maximum=MAX_STARTUP_AUDIT)
                                  if env.get(STARTUP_AUDIT) else DEFAULT_STARTUP_AUDIT,
                                  DEFAULT_STARTUP_AUDIT),  # type: ignore[arg-type]
        shards=celery_only(lambda: validate_shards(env[SHARDS], SHARDS) if env.get(SHARDS) else 1,
                           1),  # type: ignore[arg-type]
        problems=tuple(problems),
        archive_url=check_archive_url(env[ARCHIVE_URL], ARCHIVE_URL) if env.get(ARCHIVE_URL, "").strip() else None,
        policy=load_policy(env[POLICY], POLICY) if env.get(POLICY, "").strip() else None,
        max_runs=values.integer(env[MAX_RUNS], MAX_RUNS, maximum=MAX_MAX_RUNS, example=100000)
        if env.get(MAX_RUNS, "").strip() else None,
    )


def parse_state_url(raw: str | None) -> str | None:
    """PYWORKFLOW_RETENTION_STATE_URL: unset, or a Redis URL (redis://, rediss://, unix://)."""
    if raw is None or not raw.strip():
        return None
    raw = raw.strip()
    if not raw.startswith(REDIS_URL_PREFIXES):
        raise ConfigurationError(f"{STATE_URL} must be a Redis URL (redis://host:6379/0, rediss://..., "
                                 f"unix:///path); got {redact_url(raw)!r}")
    split_url(raw, STATE_URL)
    return raw


def parse_pushgateway_url(raw: str | None) -> str | None:
    """PYWORKFLOW_RETENTION_PUSHGATEWAY_URL: unset, or http(s)://[user:password@]host[:port][/path]."""
    if raw is None or not raw.strip():
        return None
    raw = raw.strip()
    expected = f"{PUSHGATEWAY_URL} must be http://host:port or https://host:port (e.g. http://pushgateway:9091)"
    parts = split_url(raw, PUSHGATEWAY_URL)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigurationError(f"{expected}; got {redact_url(raw)!r}")
    return raw
