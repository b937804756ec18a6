"""The order in which tests find their services (explicit address, testcontainers, default)."""

from __future__ import annotations

import pytest

from tests.services import ServiceMissing, choose, in_ci

DEFAULT = "postgresql://root@127.0.0.1:5432/test"


def _container():
    return ("postgresql://test:test@127.0.0.1:49153/test", lambda: None)


def test_explicit_variable_wins_even_when_docker_is_up() -> None:
    s = choose("PostgreSQL", env_var="TEST_POSTGRES_URL", default_url=DEFAULT,
               env={"TEST_POSTGRES_URL": "postgresql://u@db:5432/x"}, docker_ok=lambda: True,
               start_container=_container, reachable=lambda u: True)
    assert (s.url, s.source) == ("postgresql://u@db:5432/x", "env:TEST_POSTGRES_URL")


def test_testcontainers_before_the_default_address() -> None:
    s = choose("PostgreSQL", env_var="TEST_POSTGRES_URL", default_url=DEFAULT, env={},
               docker_ok=lambda: True, start_container=_container, reachable=lambda u: True)
    assert s.source == "testcontainers" and s.url.endswith(":49153/test")


def test_default_address_when_no_docker() -> None:
    s = choose("PostgreSQL", env_var="TEST_POSTGRES_URL", default_url=DEFAULT, env={},
               docker_ok=lambda: False, start_container=_container, reachable=lambda u: u == DEFAULT)
    assert (s.url, s.source) == (DEFAULT, "default")


def test_local_server_started_by_the_test_setup_comes_last() -> None:
    s = choose("Cassandra", env_var="CASSANDRA_CONTACT_POINTS", default_url=None, env={},
               docker_ok=lambda: False, start_container=None,
               start_local=lambda: ("cassandra://127.0.0.1:39042/x", lambda: None))
    assert s.source == "local"


def test_nothing_found_is_an_error_naming_every_way() -> None:
    with pytest.raises(ServiceMissing, match="set TEST_POSTGRES_URL, run a Docker engine for testcontainers"):
        choose("PostgreSQL", env_var="TEST_POSTGRES_URL", default_url=DEFAULT, env={},
               docker_ok=lambda: False, start_container=_container, reachable=lambda u: False)


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("1", True), ("TRUE", True), ("", False),
                                                  ("false", False)])
def test_ci_flag(value: str, expected: bool) -> None:
    assert in_ci({"CI": value}) is expected
