"""The singleton lock: a Redis lease that one purge holds while it runs.

Built on :class:`redis.lock.Lock`, which already does the three Redis-side
operations correctly, each an atomic command or Lua script:

* acquire: ``SET key token NX PX ttl``;
* renew: a compare-token ``PEXPIRE key ttl`` script (``Lock.reacquire``: resets
  the TTL to its full value, unlike ``extend`` which would add to it);
* release: a compare-and-delete script, so a non-owner, or an owner whose lease
  expired and was taken by someone else, deletes nothing (``LockNotOwnedError``).

What ``Lock`` does not do, and :class:`Lease` adds:

* ``thread_local=False``: ``Lock`` keeps its token in thread-local storage by
  default, so a renewal thread would see no token; the lease owns the token
  explicitly instead.
* A background thread renewing every TTL/3 and recording the loss of the
  lease (the token gone or replaced) instead of only raising in that thread.
* :meth:`Lease.check`, the fencing check for ``on_batch``: it renews
  synchronously, which proves the key still holds *our* token (nobody else can
  write our token, so it was held without interruption) and gives the next
  batch a full TTL; it raises :class:`LeaseLostError` if the lease was lost or
  cannot be confirmed. Only the batch in flight when a lease is lost may
  overlap with another purge; the stores re-check every run before deleting,
  so that overlap deletes nothing twice and nothing it should not.

A holder killed with SIGKILL stops renewing, so its key expires within one TTL.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

from workflow_retention.exceptions import ConfigurationError, LeaseLostError, StorageError
from workflow_retention.urls import REDIS_URL_PREFIXES, redact_url, scrub, split_url

log = logging.getLogger("workflow_retention.lock")



def redis_client(url: str, ttl: timedelta) -> Any:
    """A redis-py client whose socket timeouts fit inside one renewal interval."""
    if not url.startswith(REDIS_URL_PREFIXES):
        raise ConfigurationError(f"lock URL must be redis://, rediss:// or unix://; got {redact_url(url)!r}")
    import redis

    split_url(url, "lock URL")
    timeout = min(10.0, max(1.0, ttl.total_seconds() / 6))
    try:
        return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    except ValueError as exc:  # redis-py's own message may quote the URL: scrub it, never chain it
        raise ConfigurationError(f"lock URL {redact_url(url)!r} is malformed: {scrub(str(exc), url)}") from None


def new_token() -> str:
    """``host:pid:random``: unique per acquisition, and tells an operator who holds the lock."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"


class Lease:
    """A renewable, owner-checked Redis lease on ``key``.

    ``acquire()`` once; then ``with lease:`` renews in the background and
    releases on exit, whatever happened. Pass :meth:`check` as ``on_batch``.
    """

    def __init__(self, client: Any, key: str, ttl: timedelta, *, token: str | None = None) -> None:
        from redis.lock import Lock

        if ttl.total_seconds() < 1:
            raise ConfigurationError(f"lock TTL must be at least 1s; got {ttl}")
        self.client, self.key, self.ttl = client, key, ttl
        self.token = token or new_token()
        self._lock = Lock(client, key, timeout=ttl.total_seconds(), blocking=False, thread_local=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.renewals = 0
        self.lost: str | None = None
        self._acquired_at = 0.0

    def __repr__(self) -> str:
        return f"<Lease {self.key} ttl={self.ttl.total_seconds():g}s held={self.held} lost={self.lost!r}>"

    @property
    def held(self) -> bool:
        return self._lock.local.token is not None and self.lost is None

    # -- redis operations ---------------------------------------------------------

    def acquire(self) -> bool:
        """``SET key token NX PX ttl``: True if this lease now holds the lock."""
        self._acquired_at = time.monotonic()
        try:
            if self._lock.acquire(blocking=False, token=self.token):
                return True
            if self.holder() == self.token:  # our SET succeeded but its reply was lost, and redis-py retried
                self._lock.local.token = self.token.encode()
                return True
            return False
        except self._redis_errors() as exc:
            raise StorageError(f"cannot acquire lock {self.key!r}: {exc}") from exc

    def ping(self) -> None:
        """Check that the lock's Redis answers (StorageError if not); nothing is written."""
        try:
            self.client.ping()
        except self._redis_errors() as exc:
            raise StorageError(f"the lock's Redis does not answer: {exc}") from exc
        finally:
            self.client.close()

    def holder(self) -> str | None:
        """The token of whoever holds the lock now (None if free)."""
        try:
            value = self.client.get(self.key)
        except self._redis_errors() as exc:
            raise StorageError(f"cannot read lock {self.key!r}: {exc}") from exc
        return value.decode() if isinstance(value, bytes) else value

    def renew(self) -> None:
        """Reset the TTL if the key still holds our token; otherwise record the loss and raise."""
        from redis.exceptions import LockError

        if self.lost is not None:
            raise LeaseLostError(self.lost)
        try:
            self._lock.reacquire()
        except LockError as exc:  # LockNotOwnedError, or the token was already released
            self._mark_lost(f"lock {self.key!r} is no longer ours ({exc})")
            raise LeaseLostError(self.lost) from exc
        self.renewals += 1

    def check(self, info: object = None) -> None:
        """The fencing check: renew now or raise :class:`LeaseLostError` (an ``on_batch`` callback)."""
        try:
            self.renew()
        except self._redis_errors() as exc:
            raise LeaseLostError(f"cannot confirm lock {self.key!r} is still ours: {exc}") from exc

    def release(self) -> bool:
        """Compare-and-delete: True if we deleted our key, False if it was no longer ours."""
        from redis.exceptions import LockError

        self._stop_renewing()
        if self._lock.local.token is None:
            return False
        try:
            self._lock.release()
        except LockError:
            self._mark_lost(self.lost or f"lock {self.key!r} had expired or been taken before release")
            log.error("lock was no longer ours at release key=%s reason=%s", self.key, self.lost)
            return False
        except self._redis_errors() as exc:
            raise StorageError(f"cannot release lock {self.key!r} (it expires within {self.ttl}): {exc}") from exc
        return True

    # -- renewal thread -----------------------------------------------------------

    def __enter__(self) -> Lease:
        if self._lock.local.token is None:
            raise RuntimeError("acquire() the lease before entering it")
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-renewal:{self.key}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self.release()
        except StorageError:
            if exc is None:
                raise
            log.exception("lock release failed while handling another error key=%s", self.key)

    def _renew_loop(self) -> None:
        interval = self.ttl.total_seconds() / 3
        deadline = self._acquired_at + self.ttl.total_seconds()
        while not self._stop.wait(interval):
            started = time.monotonic()
            try:
                self.renew()
                deadline = started + self.ttl.total_seconds()
            except LeaseLostError:
                log.error("lease lost key=%s reason=%s", self.key, self.lost)
                return
            except self._redis_errors() as exc:
                if time.monotonic() >= deadline:
                    self._mark_lost(f"lock {self.key!r} could not be renewed within its TTL: {exc}")
                    log.error("lease lost key=%s reason=%s", self.key, self.lost)
                    return
                log.warning("lease renewal failed, retrying key=%s error=%s", self.key, exc)

    def _stop_renewing(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _mark_lost(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason

    @staticmethod
    def _redis_errors() -> type[Exception]:
        from redis.exceptions import RedisError

        return RedisError


def open_lease(url: str, key: str, ttl: timedelta) -> Lease:
    """A :class:`Lease` on ``key`` at the Redis server ``url`` (not yet acquired)."""
    return Lease(redis_client(url, ttl), key, ttl)
