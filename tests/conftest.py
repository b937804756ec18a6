"""Test configuration: the parametrised ``backend`` fixture over every backend's harness."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.services",
    "tests.harness.memory",
    "tests.harness.file",
    "tests.harness.sqlite",
    "tests.harness.postgres",
    "tests.harness.mysql",
    "tests.harness.cassandra",
    "tests.harness.dynamodb",
]

BACKENDS = ["memory", "file", "sqlite", "postgres", "mysql", "cassandra", "dynamodb"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest):
    """A fresh store of each backend, as a :class:`tests.harness.base.Harness`."""
    return request.getfixturevalue(f"{request.param}_harness")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``orphan_kind``: one case per (backend, kind of orphan that backend can hold)."""
    if "orphan_kind" not in metafunc.fixturenames:
        return
    import importlib

    pairs = []
    for name in BACKENDS:
        cls = getattr(importlib.import_module(f"tests.harness.{name}"), "HARNESS_CLASS", None)
        kinds = sorted(cls.orphan_kinds) if cls is not None else ["(not implemented)"]
        pairs += [pytest.param(name, kind, id=f"{name}-{kind}") for kind in kinds]
    metafunc.parametrize(("kind_backend", "orphan_kind"), pairs, indirect=["kind_backend"])


@pytest.fixture
def kind_backend(request: pytest.FixtureRequest):
    """Like ``backend``, parametrised together with ``orphan_kind``."""
    return request.getfixturevalue(f"{request.param}_harness")
