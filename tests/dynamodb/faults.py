"""A wrapper around a real boto3 DynamoDB client that injects what DynamoDB Local never produces.

Every call reaches DynamoDB Local unless a rule says otherwise: throttling
errors, ``UnprocessedItems``/``UnprocessedKeys`` (only part of the request is
sent on, the rest is handed back as unprocessed, as DynamoDB does), or a
crash (an exception) at the n-th call of an operation.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError


class Crash(Exception):
    """An injected process death at a chosen point."""


def throttle(code: str, op: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"injected {code}"}}, op)


class FaultyClient:
    def __init__(self, real: Any) -> None:
        self.real = real
        self.meta = real.meta
        self.exceptions = real.exceptions
        self.calls: Counter = Counter()
        self.rules: dict[str, Callable[..., Any]] = {}
        self._lock = threading.Lock()

    def __getattr__(self, op: str) -> Any:
        real_fn = getattr(self.real, op)
        if not callable(real_fn):
            return real_fn

        def call(**params: Any) -> Any:
            with self._lock:
                self.calls[op] += 1
                n = self.calls[op]
            rule = self.rules.get(op)
            return rule(real_fn, n, **params) if rule else real_fn(**params)

        return call

    # -- rules ----------------------------------------------------------------------

    def throttle_first(self, op: str, k: int, code: str = "ProvisionedThroughputExceededException") -> None:
        def rule(real_fn: Callable[..., Any], n: int, **params: Any) -> Any:
            if n <= k:
                raise throttle(code, op)
            return real_fn(**params)

        self.rules[op] = rule

    def unprocessed_writes(self, k: int) -> None:
        """The first ``k`` BatchWriteItem calls process only the first request; the rest comes back unprocessed."""
        def rule(real_fn: Callable[..., Any], n: int, RequestItems: dict, **params: Any) -> Any:
            if n > k:
                return real_fn(RequestItems=RequestItems, **params)
            first = {t: reqs[:1] for t, reqs in RequestItems.items()}
            rest = {t: reqs[1:] for t, reqs in RequestItems.items() if len(reqs) > 1}
            return {**real_fn(RequestItems=first, **params), "UnprocessedItems": rest}

        self.rules["batch_write_item"] = rule

    def stuck_writes(self, after: int) -> None:
        """Every BatchWriteItem call after the first ``after`` comes back entirely unprocessed."""
        def rule(real_fn: Callable[..., Any], n: int, RequestItems: dict, **params: Any) -> Any:
            if n <= after:
                return real_fn(RequestItems=RequestItems, **params)
            return {"UnprocessedItems": RequestItems}

        self.rules["batch_write_item"] = rule

    def cancelled_transactions(self, k: int, code: str = "ThrottlingError") -> None:
        """The first ``k`` TransactWriteItems calls are cancelled unrun: the first delete with reason ``code``
        (as DynamoDB reports a throttled or conflicting one), the others with ``None``."""
        def rule(real_fn: Callable[..., Any], n: int, TransactItems: list, **params: Any) -> Any:
            if n > k:
                return real_fn(TransactItems=TransactItems, **params)
            reasons = [{"Code": code, "Message": f"injected {code}"}] + [{"Code": "None"}] * (len(TransactItems) - 1)
            raise ClientError({"Error": {"Code": "TransactionCanceledException", "Message": "injected"},
                               "CancellationReasons": reasons}, "TransactWriteItems")

        self.rules["transact_write_items"] = rule

    def unprocessed_reads(self, k: int) -> None:
        """The first ``k`` BatchGetItem calls return half of the keys as ``UnprocessedKeys``."""
        def rule(real_fn: Callable[..., Any], n: int, RequestItems: dict, **params: Any) -> Any:
            if n > k:
                return real_fn(RequestItems=RequestItems, **params)
            sent, back = {}, {}
            for table, spec in RequestItems.items():
                keys = spec["Keys"]
                half = max(1, len(keys) // 2)
                sent[table] = {**spec, "Keys": keys[:half]}
                if keys[half:]:
                    back[table] = {**spec, "Keys": keys[half:]}
            return {**real_fn(RequestItems=sent, **params), "UnprocessedKeys": back}

        self.rules["batch_get_item"] = rule

    def crash_at(self, op: str, n: int) -> None:
        """Raise :class:`Crash` instead of the ``n``-th call of ``op``."""
        def rule(real_fn: Callable[..., Any], count: int, **params: Any) -> Any:
            if count == n:
                raise Crash(f"injected crash at {op} call {n}")
            return real_fn(**params)

        self.rules[op] = rule

    def crash_when(self, op: str, matches: Callable[[dict[str, Any]], bool]) -> None:
        """Raise :class:`Crash` instead of the first call of ``op`` whose parameters match."""
        fired: list[int] = []

        def rule(real_fn: Callable[..., Any], count: int, **params: Any) -> Any:
            if not fired and matches(params):
                fired.append(count)
                raise Crash(f"injected crash at {op} call {count}")
            return real_fn(**params)

        self.rules[op] = rule

    def before(self, op: str, n: int, action: Callable[[dict[str, Any]], None]) -> None:
        """Run ``action(params)`` (e.g. an engine write) right before the ``n``-th call of ``op``."""
        def rule(real_fn: Callable[..., Any], count: int, **params: Any) -> Any:
            if count == n:
                action(params)
            return real_fn(**params)

        self.rules[op] = rule
