"""Backend registry: URL scheme -> ``"module:Class"``, resolved lazily (as Celery's ``by_url``)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from workflow_retention.base import StorageBackend
from workflow_retention.exceptions import ConfigurationError
from workflow_retention.urls import redact_url, scrub, split_url

#: Every backend, by name (also its URL scheme): the one list of backends (the test suite's too).
BACKENDS: dict[str, str] = {
    "memory": "workflow_retention.backends.memory:MemoryBackend",
    "file": "workflow_retention.backends.file:FileBackend",
    "sqlite": "workflow_retention.backends.sql.sqlite:SQLiteBackend",
    "postgres": "workflow_retention.backends.sql.postgres:PostgresBackend",
    "mysql": "workflow_retention.backends.sql.mysql:MySQLBackend",
    "cassandra": "workflow_retention.backends.cassandra:CassandraBackend",
    "dynamodb": "workflow_retention.backends.dynamodb:DynamoDBBackend",
}
#: Other URL schemes of a backend.
ALIASES: dict[str, str] = {"postgresql": "postgres"}


def resolve(scheme: str) -> type[StorageBackend]:
    """Return the backend class for a URL scheme (``postgresql+psycopg`` counts as ``postgresql``)."""
    base = scheme.lower().split("+", 1)[0]
    try:
        target = BACKENDS[ALIASES.get(base, base)]
    except KeyError:
        raise ConfigurationError(
            f"unknown storage URL scheme {scheme!r}; valid schemes: {', '.join(sorted({*BACKENDS, *ALIASES}))}"
        ) from None
    module_name, _, attr = target.partition(":")
    return getattr(import_module(module_name), attr)


def by_url(url: str, **options: Any) -> StorageBackend:
    """Build the backend for ``url``. ``options`` (e.g. ``batch_size``) go to its constructor."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"storage URL must look like scheme://...; got {redact_url(str(url))!r}; "
            f"valid schemes: {', '.join(sorted({*BACKENDS, *ALIASES}))}"
        )
    parts = split_url(url)
    backend = resolve(parts.scheme)
    try:
        return backend.from_url(url, **options)
    except ConfigurationError as exc:
        # A backend's parser may quote what it could not parse: never the password (nor chain it).
        raise ConfigurationError(scrub(str(exc), url)) from None
