"""Test configuration: the parametrised ``backend`` fixture over every backend's harness."""

from __future__ import annotations

import pytest

from workflow_retention.backends import BACKENDS as REGISTRY

#: The registry's backends, each with a harness module tests/harness/<name>.py.
BACKENDS = list(REGISTRY)
pytest_plugins = ["tests.services", *(f"tests.harness.{name}" for name in BACKENDS)]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest):
    """A fresh store of each backend, as a :class:`tests.harness.base.Harness`."""
    return request.getfixturevalue(f"{request.param}_harness")


def _harness_class(name: str):
    import importlib

    return importlib.import_module(f"tests.harness.{name}").HARNESS_CLASS


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Cases that exist only where a store can hold them (capability flags, as Django's BaseCacheTests).

    ``orphan_kind``: one case per (backend, kind of orphan that backend can hold).
    ``capable_backend``: the backends whose harness has every capability the test's
    ``requires`` marker names (typed timestamp columns cannot hold a corrupt value, say).
    """
    if "orphan_kind" in metafunc.fixturenames:
        pairs = [pytest.param(name, kind, id=f"{name}-{kind}")
                 for name in BACKENDS for kind in sorted(_harness_class(name).orphan_kinds)]
        metafunc.parametrize(("kind_backend", "orphan_kind"), pairs, indirect=["kind_backend"])
    if "capable_backend" in metafunc.fixturenames:
        needed = {c for m in metafunc.definition.iter_markers("requires") for c in m.args}
        names = [n for n in BACKENDS if needed <= _harness_class(n).capabilities]
        metafunc.parametrize("capable_backend", names, indirect=True)


@pytest.fixture
def kind_backend(request: pytest.FixtureRequest):
    """Like ``backend``, parametrised together with ``orphan_kind``."""
    return request.getfixturevalue(f"{request.param}_harness")


@pytest.fixture
def capable_backend(request: pytest.FixtureRequest):
    """Like ``backend``, over the backends with the capabilities the test ``requires``."""
    return request.getfixturevalue(f"{request.param}_harness")
