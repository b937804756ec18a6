"""Settings: every variable validated, named in the error, secrets never printed."""

from __future__ import annotations

from datetime import timedelta

import pytest

from workflow_retention.config import load_settings, storage_url_from_env
from workflow_retention.exceptions import ConfigurationError


@pytest.mark.parametrize("value", ["0", "-3", "30d", "abc", "1.5", " 7x"])
def test_invalid_retention_days_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigurationError, match="PYWORKFLOW_DATA_RETENTION_DAYS must be a positive integer"):
        load_settings({"PYWORKFLOW_DATA_RETENTION_DAYS": value})


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), ("  ", None), ("30", 30), (" 7 ", 7)])
def test_retention_days_unset_means_keep_forever(value, expected) -> None:
    env = {} if value is None else {"PYWORKFLOW_DATA_RETENTION_DAYS": value}
    assert load_settings(env).retention_days == expected


@pytest.mark.parametrize(("name", "value", "pattern"), [
    ("PYWORKFLOW_RETENTION_BATCH_SIZE", "0", "PYWORKFLOW_RETENTION_BATCH_SIZE must be an integer from 1"),
    ("PYWORKFLOW_RETENTION_BATCH_SIZE", "lots", "PYWORKFLOW_RETENTION_BATCH_SIZE"),
    ("PYWORKFLOW_RETENTION_ENABLED", "maybe", "PYWORKFLOW_RETENTION_ENABLED must be true or false"),
    ("PYWORKFLOW_RETENTION_REPAIR_ORPHANS", "2", "PYWORKFLOW_RETENTION_REPAIR_ORPHANS must be true or false"),
    ("PYWORKFLOW_RETENTION_LOCK_TTL", "5 minutes", "PYWORKFLOW_RETENTION_LOCK_TTL: expected a duration"),
    ("PYWORKFLOW_RETENTION_LOCK_TTL", "1s", "from 3s to 1d"),
    ("PYWORKFLOW_RETENTION_ORPHAN_GRACE", "-1h", "PYWORKFLOW_RETENTION_ORPHAN_GRACE"),
])
def test_bad_settings_name_the_variable(name: str, value: str, pattern: str) -> None:
    with pytest.raises(ConfigurationError, match=pattern):
        load_settings({name: value})


def test_defaults() -> None:
    s = load_settings({})
    assert (s.retention_days, s.batch_size, s.enabled, s.repair_orphans) == (None, None, True, False)
    assert s.lock_ttl == timedelta(minutes=5) and s.orphan_grace == timedelta(hours=1)
    assert s.lock_url == s.broker_url == "redis://localhost:6379/0"
    with pytest.raises(ConfigurationError, match="no storage configured: set PYWORKFLOW_RETENTION_STORAGE_URL"):
        s.require_storage_url()


def test_lock_url_only_defaults_to_a_redis_broker() -> None:
    assert load_settings({"PYWORKFLOW_CELERY_BROKER": "amqp://guest@localhost//"}).lock_url is None
    assert load_settings({"PYWORKFLOW_CELERY_BROKER": "rediss://h:6380/1"}).lock_url == "rediss://h:6380/1"


def test_explicit_url_wins_over_pyworkflow_variables() -> None:
    env = {"PYWORKFLOW_RETENTION_STORAGE_URL": "sqlite:////tmp/x.db", "PYWORKFLOW_STORAGE_TYPE": "memory"}
    assert load_settings(env).storage_url == "sqlite:////tmp/x.db"


def test_pyworkflow_variables_with_pyworkflow_defaults(tmp_path) -> None:
    assert storage_url_from_env({"PYWORKFLOW_STORAGE_TYPE": "POSTGRES"}) == \
        "postgresql://pyworkflow@localhost:5432/pyworkflow"
    assert storage_url_from_env({"PYWORKFLOW_STORAGE_BACKEND": "mysql", "PYWORKFLOW_MYSQL_HOST": "db",
                                 "PYWORKFLOW_MYSQL_PASSWORD": "p@ss/word"}) == \
        "mysql://pyworkflow:p%40ss%2Fword@db:3306/pyworkflow"
    sqlite_env = {"PYWORKFLOW_STORAGE_TYPE": "sqlite", "PYWORKFLOW_STORAGE_PATH": str(tmp_path / "a.db")}
    assert storage_url_from_env(sqlite_env) == f"sqlite://{tmp_path}/a.db"
    assert storage_url_from_env({"PYWORKFLOW_STORAGE_TYPE": "file", "PYWORKFLOW_STORAGE_PATH": str(tmp_path)}) \
        == f"file://{tmp_path}"
    assert storage_url_from_env({"PYWORKFLOW_STORAGE_TYPE": "memory"}) == "memory://"
    with pytest.raises(ConfigurationError, match="PYWORKFLOW_STORAGE_TYPE='redis' is not supported"):
        storage_url_from_env({"PYWORKFLOW_STORAGE_TYPE": "redis"})
    with pytest.raises(ConfigurationError, match="PYWORKFLOW_POSTGRES_PORT must be a port number"):
        storage_url_from_env({"PYWORKFLOW_STORAGE_TYPE": "postgres", "PYWORKFLOW_POSTGRES_PORT": "x"})


def test_settings_repr_masks_passwords() -> None:
    s = load_settings({"PYWORKFLOW_RETENTION_STORAGE_URL": "postgresql://u:hunter2@h/db",
                       "PYWORKFLOW_CELERY_BROKER": "redis://:s3cret@h:6379/0"})
    assert "hunter2" not in repr(s) and "s3cret" not in repr(s) and "s3cret" not in str(s)
    assert "u:***@h" in repr(s)
