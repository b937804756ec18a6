"""The backend registry: lazy resolution, clear errors, masked secrets."""

from __future__ import annotations

from datetime import datetime

import pytest

from workflow_retention.backends import BACKENDS, by_url, resolve
from workflow_retention.backends.memory import MemoryBackend
from workflow_retention.exceptions import ConfigurationError


def test_unknown_scheme_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigurationError) as err:
        by_url("redis://localhost/0")
    for scheme in ("memory", "file", "sqlite", "postgresql", "mysql", "cassandra", "dynamodb"):
        assert scheme in str(err.value)


@pytest.mark.parametrize("url", ["", "memory", "/tmp/store", None, 42])
def test_not_a_url(url) -> None:
    with pytest.raises(ConfigurationError, match="storage URL must look like scheme://"):
        by_url(url)  # type: ignore[arg-type]


def test_every_registered_backend_resolves_to_a_storage_backend() -> None:
    for scheme in BACKENDS:
        cls = resolve(scheme)
        assert cls.from_url and cls.__module__.startswith("workflow_retention.backends")


def test_memory_url_and_batch_size_validation() -> None:
    backend = by_url("memory://named", batch_size=10)
    assert isinstance(backend, MemoryBackend) and backend.batch_size == 10
    assert repr(backend) == "<MemoryBackend memory://named>"
    with pytest.raises(ConfigurationError, match="batch_size must be an integer from 1 to 10000"):
        by_url("memory://", batch_size=0)
    with pytest.raises(ConfigurationError, match="memory URL must be memory:// or memory://NAME"):
        by_url("memory://x/y")


def test_naive_cutoff_is_a_value_error_naming_the_expected_form() -> None:
    with pytest.raises(ValueError, match=r"older_than must be timezone-aware \(for example"):
        by_url("memory://").delete_old_runs(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware datetime"):
        by_url("memory://").delete_old_runs("2026-01-01")  # type: ignore[arg-type]
