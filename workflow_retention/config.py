"""Settings from the environment. This is the only module that reads ``os.environ``.

Every variable is validated here; a bad value raises :class:`ConfigurationError`
naming the variable and the expected form.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

from workflow_retention.base import DEFAULT_BATCH_SIZE, DEFAULT_GRACE, validate_batch_size
from workflow_retention.exceptions import ConfigurationError
from workflow_retention.timeutil import parse_duration
from workflow_retention.urls import redact_url

RETENTION_DAYS = "PYWORKFLOW_DATA_RETENTION_DAYS"
STORAGE_URL = "PYWORKFLOW_RETENTION_STORAGE_URL"
BATCH_SIZE = "PYWORKFLOW_RETENTION_BATCH_SIZE"
ENABLED = "PYWORKFLOW_RETENTION_ENABLED"
LOCK_URL = "PYWORKFLOW_RETENTION_LOCK_URL"
LOCK_TTL = "PYWORKFLOW_RETENTION_LOCK_TTL"
REPAIR_ORPHANS = "PYWORKFLOW_RETENTION_REPAIR_ORPHANS"
ORPHAN_GRACE = "PYWORKFLOW_RETENTION_ORPHAN_GRACE"
BROKER = "PYWORKFLOW_CELERY_BROKER"

DEFAULT_BROKER = "redis://localhost:6379/0"
DEFAULT_LOCK_TTL = timedelta(minutes=5)

#: Every variable this package reads: name -> (default, meaning). The README table mirrors it.
VARIABLES: dict[str, tuple[str, str]] = {
    RETENTION_DAYS: ("unset (keep forever)", "Delete terminal runs not updated for this many days; a positive integer."),
    STORAGE_URL: ("unset", "Storage URL (memory://, file:///dir, sqlite:///file.db, postgresql://, mysql://, cassandra://, dynamodb://). Overrides the PyWorkflow variables below."),
    "PYWORKFLOW_STORAGE_TYPE": ("unset", "PyWorkflow's storage type (memory, file, sqlite, postgres, citus, mysql, cassandra, dynamodb), used when no URL is set. PYWORKFLOW_STORAGE_BACKEND is read if it is unset."),
    "PYWORKFLOW_STORAGE_PATH": ("./pyworkflow_data (file), ./pyworkflow_data/pyworkflow.db (sqlite)", "Directory or database file of file and SQLite stores."),
    "PYWORKFLOW_POSTGRES_HOST/PORT/USER/PASSWORD/DATABASE": ("localhost, 5432, pyworkflow, empty, pyworkflow", "PostgreSQL connection, as PyWorkflow reads it."),
    "PYWORKFLOW_MYSQL_HOST/PORT/USER/PASSWORD/DATABASE": ("localhost, 3306, pyworkflow, empty, pyworkflow", "MySQL connection, as PyWorkflow reads it."),
    BATCH_SIZE: (str(DEFAULT_BATCH_SIZE), "Runs per batch (one short transaction each); 1 to 10000."),
    ENABLED: ("true", "Kill switch for the Celery task: false turns it off."),
    LOCK_URL: ("the broker, if it is Redis", "Redis URL of the singleton lock."),
    LOCK_TTL: ("5m", "Lease of the singleton lock; renewed every TTL/3 while a purge runs."),
    REPAIR_ORPHANS: ("false", "true: the Celery task also sweeps orphans after the purge."),
    ORPHAN_GRACE: ("1h", "Orphans younger than this are left alone."),
    BROKER: (DEFAULT_BROKER, "Broker of the ready-made worker app (workflow_retention.worker)."),
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Settings:
    retention_days: int | None
    storage_url: str | None
    batch_size: int = DEFAULT_BATCH_SIZE
    enabled: bool = True
    lock_url: str | None = None
    lock_ttl: timedelta = DEFAULT_LOCK_TTL
    repair_orphans: bool = False
    orphan_grace: timedelta = DEFAULT_GRACE
    broker_url: str = DEFAULT_BROKER
    storage_error: str | None = field(default=None, repr=False)

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


def parse_retention_days(raw: str | None) -> int | None:
    """Unset or empty means keep forever; otherwise a positive integer."""
    if raw is None or raw.strip() == "":
        return None
    text = raw.strip()
    if not text.isdigit() or int(text) < 1:
        raise ConfigurationError(
            f"{RETENTION_DAYS} must be a positive integer number of days (e.g. 30), "
            f"or unset to keep runs forever; got {raw!r}"
        )
    return int(text)


def parse_bool(name: str, raw: str | None, default: bool) -> bool:
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false (also 1/0, yes/no, on/off); got {raw!r}")


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
        if not port.isdigit():
            raise ConfigurationError(f"{prefix}PORT must be a port number; got {port!r}")
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


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting. ``env`` defaults to ``os.environ``."""
    env = os.environ if env is None else env
    storage_url = env.get(STORAGE_URL) or None
    storage_error = None
    if storage_url is None:
        try:
            storage_url = storage_url_from_env(env)
        except ConfigurationError as exc:
            storage_error = str(exc)
    broker = env.get(BROKER) or DEFAULT_BROKER
    lock_url = env.get(LOCK_URL) or (broker if broker.startswith(("redis://", "rediss://", "unix://")) else None)
    lock_ttl = parse_duration(env[LOCK_TTL], LOCK_TTL) if env.get(LOCK_TTL) else DEFAULT_LOCK_TTL
    if lock_ttl < timedelta(seconds=3):
        raise ConfigurationError(f"{LOCK_TTL} must be at least 3s; got {env.get(LOCK_TTL)!r}")
    return Settings(
        retention_days=parse_retention_days(env.get(RETENTION_DAYS)),
        storage_url=storage_url,
        batch_size=validate_batch_size(env[BATCH_SIZE], BATCH_SIZE) if env.get(BATCH_SIZE) else DEFAULT_BATCH_SIZE,
        enabled=parse_bool(ENABLED, env.get(ENABLED), True),
        lock_url=lock_url,
        lock_ttl=lock_ttl,
        repair_orphans=parse_bool(REPAIR_ORPHANS, env.get(REPAIR_ORPHANS), False),
        orphan_grace=parse_duration(env[ORPHAN_GRACE], ORPHAN_GRACE) if env.get(ORPHAN_GRACE) else DEFAULT_GRACE,
        broker_url=broker,
        storage_error=storage_error,
    )
