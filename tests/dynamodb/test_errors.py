"""Loud failures: every botocore error becomes a StorageError naming the endpoint and the cause, and a
DynamoDB endpoint that never answers fails within the stated ``timeout`` (a socket this test opens)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.dynamodb.helpers import faulty_backend
from tests.dynamodb.local import DUMMY_CREDENTIALS
from tests.harness.dynamodb import DynamoDBHarness
from tests.scenario import CUTOFF
from workflow_retention.backends import by_url
from workflow_retention.backends.dynamodb import DynamoDBBackend
from workflow_retention.backends.dynamodb.client import translate
from workflow_retention.exceptions import StorageError

ENDPOINT = "http://127.0.0.1:9"


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


def test_an_endpoint_that_never_answers_fails_within_the_timeout_naming_endpoint_and_cause(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ReadTimeoutError

    for name, value in {**DUMMY_CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)  # signing needs some; nothing may ask a metadata service
    with silent_server() as port:
        endpoint = f"http://127.0.0.1:{port}"
        backend = by_url(f"dynamodb://pyworkflow?region=us-east-1&endpoint_url={endpoint}&timeout=1s")
        started = time.monotonic()
        try:
            with pytest.raises(StorageError) as caught:
                backend.delete_old_runs(CUTOFF)
        finally:
            backend.close()
        elapsed = time.monotonic() - started
    message = str(caught.value)
    assert endpoint in message and "1s" in message and "timeout" in message, message
    assert isinstance(caught.value.__cause__, ReadTimeoutError)
    assert elapsed < 20, f"took {elapsed:.1f}s with a 1 s timeout"


def test_the_timeout_is_a_url_option_with_a_default() -> None:
    def timeout(url: str) -> float:
        backend = by_url(url)
        assert isinstance(backend, DynamoDBBackend)
        return backend.timeout

    assert timeout("dynamodb://pyworkflow?region=us-east-1") == 30.0
    assert timeout("dynamodb://pyworkflow?region=us-east-1&timeout=2m") == 120.0
    assert timeout("dynamodb://pyworkflow?region=us-east-1&timeout=7.5") == 7.5


def _errors() -> list[Exception]:
    from botocore import exceptions as e

    return [
        e.EndpointConnectionError(endpoint_url=ENDPOINT),
        e.ReadTimeoutError(endpoint_url=ENDPOINT, error="read timed out"),
        e.ConnectTimeoutError(endpoint_url=ENDPOINT, error="connect timed out"),
        e.ConnectionClosedError(endpoint_url=ENDPOINT),
        e.SSLError(endpoint_url=ENDPOINT, error="certificate verify failed"),
        e.ProxyConnectionError(proxy_url="http://127.0.0.1:3128", error="refused"),
        e.HTTPClientError(error="connection reset"),
        e.NoCredentialsError(),
        e.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
        e.CredentialRetrievalError(provider="sso", error_msg="token expired"),
        e.NoRegionError(),
        e.ParamValidationError(report="Invalid length for parameter Key"),
        e.ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not allowed"}}, "Query"),
        e.ClientError({}, "Query"),
    ]


@pytest.mark.parametrize("exc", _errors(), ids=lambda exc: type(exc).__name__)
def test_every_botocore_error_translates_to_a_storage_error_naming_the_endpoint_and_the_cause(
        exc: Exception) -> None:
    error = translate(exc, "Query", "pyworkflow", endpoint=ENDPOINT, timeout=30.0)
    message = str(error)
    assert isinstance(error, StorageError)
    assert ENDPOINT in message and "Query" in message and "'pyworkflow'" in message, message
    assert type(exc).__name__ in message or "AccessDeniedException" in message, message


def test_credential_errors_say_where_credentials_come_from() -> None:
    from botocore.exceptions import NoCredentialsError

    message = str(translate(NoCredentialsError(), "DescribeTable", "pyworkflow", endpoint=ENDPOINT))
    assert "credential chain" in message


def test_retrying_past_the_deadline_names_the_table_and_the_endpoint(dynamodb_harness: DynamoDBHarness) -> None:
    h = dynamodb_harness
    backend, client = faulty_backend(h, retry_deadline=0.2)
    client.throttle_first("query", 10**6, "ThrottlingException")
    with pytest.raises(StorageError, match="still throttled") as caught:
        backend.delete_old_runs(CUTOFF)
    assert f"on table {h.table!r} at {h.endpoint}" in str(caught.value)
