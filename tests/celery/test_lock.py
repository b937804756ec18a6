"""The Redis lease, against a real Redis: ownership, renewal, loss detection, release."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.lock import Lock
from redis.retry import Retry

from tests.celery.conftest import ROOT, wait_until
from workflow_retention.exceptions import ConfigurationError, LeaseLostError, StorageError
from workflow_retention.lock import Lease, open_lease, redis_client


@pytest.fixture
def client(redis_service: Any) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_service.url)
    yield conn
    conn.close()


@pytest.fixture
def key(client: redis.Redis) -> Iterator[str]:
    name = f"wr-test-{uuid.uuid4().hex[:10]}:lock"
    yield name
    client.delete(name, f"{name}:done")


def lease(client: redis.Redis, key: str, ttl: float = 3) -> Lease:
    return Lease(client, key, timedelta(seconds=ttl))


def test_acquire_is_set_nx_px_with_an_owner_token(client: redis.Redis, key: str) -> None:
    first, second = lease(client, key, ttl=30), lease(client, key, ttl=30)
    assert first.acquire()
    assert not second.acquire()
    assert client.get(key).decode() == first.token != second.token
    assert 29_000 < client.pttl(key) <= 30_000
    assert second.holder() == first.token


def test_a_non_owner_cannot_release(client: redis.Redis, key: str) -> None:
    owner, other = lease(client, key, ttl=30), lease(client, key, ttl=30)
    assert owner.acquire()
    assert not other.acquire()
    assert other.release() is False  # never acquired: nothing to release
    forged = Lock(client, key, timeout=30, thread_local=False)
    forged.local.token = b"someone-else"
    with pytest.raises(redis.exceptions.LockNotOwnedError):
        forged.release()  # the compare-and-delete script refuses a foreign token
    assert client.get(key).decode() == owner.token
    assert owner.release() is True
    assert client.get(key) is None


def test_an_expired_owner_cannot_release_or_renew_the_next_holder_lock(client: redis.Redis, key: str) -> None:
    stale = lease(client, key, ttl=1)
    assert stale.acquire()
    wait_until(lambda: client.get(key) is None, 5, "the 1s lease to expire")
    fresh = lease(client, key, ttl=30)
    assert fresh.acquire()
    with pytest.raises(LeaseLostError, match="no longer ours"):
        stale.check()
    assert stale.release() is False
    assert client.get(key).decode() == fresh.token
    assert client.pttl(key) > 25_000  # the stale renew did not touch the new holder's TTL
    assert fresh.release() is True


def test_renewal_keeps_the_lease_beyond_its_ttl_and_release_frees_it(client: redis.Redis, key: str) -> None:
    held = lease(client, key, ttl=1.5)
    assert held.acquire()
    started = time.monotonic()
    with held:
        wait_until(lambda: time.monotonic() - started > 4, 6, "4 seconds (over 2 TTLs)")
        assert client.get(key).decode() == held.token
        assert client.pttl(key) > 500  # renewed every TTL/3
        held.check()
    assert held.renewals >= 6
    assert client.get(key) is None
    assert held.lost is None


def test_release_happens_when_the_body_fails(client: redis.Redis, key: str) -> None:
    held = lease(client, key, ttl=60)
    assert held.acquire()
    with pytest.raises(RuntimeError, match="store exploded"), held:
        raise RuntimeError("store exploded")
    assert client.get(key) is None


def test_a_lost_lease_is_detected_by_the_renewal_thread_and_the_fencing_check(client: redis.Redis, key: str) -> None:
    held = lease(client, key, ttl=1.5)
    assert held.acquire()
    with held:
        client.set(key, "intruder")  # e.g. an operator reset it, or a failover lost it
        wait_until(lambda: held.lost, 3, "the renewal thread to notice the lost lease")
        with pytest.raises(LeaseLostError, match="no longer ours"):
            held.check()
    assert client.get(key) == b"intruder"  # never deleted by the former owner


def test_unreachable_redis_fails_the_fencing_check(key: str) -> None:
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    held = lease(down, key)
    with pytest.raises(StorageError, match="cannot acquire lock"):
        held.acquire()
    held._lock.local.token = held.token.encode()  # as if acquired just before Redis went away
    with pytest.raises(LeaseLostError, match="cannot confirm"):
        held.check()


def test_lock_url_and_ttl_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="redis://, rediss:// or unix://"):
        redis_client("amqp://guest@localhost//", timedelta(minutes=5))
    with pytest.raises(ConfigurationError, match="at least 1s"):
        Lease(object(), "k", timedelta(milliseconds=200))


HOLDER = """
import sys, time
from datetime import timedelta
from workflow_retention.lock import open_lease
lease = open_lease(sys.argv[1], sys.argv[2], timedelta(seconds=float(sys.argv[3])))
assert lease.acquire()
with lease:
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_sigkilled_holder_leaves_a_lock_that_expires_within_one_ttl(
        redis_service: Any, client: redis.Redis, key: str) -> None:
    ttl = 3.0
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, redis_service.url, key, str(ttl)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        wait_until(lambda: client.pttl(key) > 0 and client.pttl(key) < 2_500, 5, "one renewal cycle")
        wait_until(lambda: client.pttl(key) > 2_500, 5, "a renewal")  # the holder is renewing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    killed = time.monotonic()
    wait_until(lambda: client.get(key) is None, ttl + 1, "the dead holder's lock to expire")
    assert time.monotonic() - killed <= ttl + 0.5
    successor = open_lease(redis_service.url, key, timedelta(seconds=ttl))
    assert successor.acquire()
    assert successor.release()
