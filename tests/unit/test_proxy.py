"""benchmarks.proxy: bytes pass through unchanged both ways, and each request is delayed at least the delay."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from benchmarks.proxy import DelayProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "connection closed early"
        out += chunk
    return bytes(out)


def test_round_trip_is_delayed_and_bytes_unchanged(echo: int) -> None:
    with DelayProxy("127.0.0.1", echo, delay_ms=50) as proxy:
        assert proxy.port and proxy.port != echo
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            for _ in range(3):
                payload = os.urandom(1000) + bytes(range(256))
                started = time.monotonic()
                sock.sendall(payload)
                assert _recv_exactly(sock, len(payload)) == payload
                assert time.monotonic() - started >= 0.05
        assert proxy.stats()["connections"] == 1


def test_large_payload_in_order_and_many_connections(echo: int) -> None:
    payload = os.urandom(3 * 1024 * 1024)  # several reads: they must arrive in order
    results: dict[int, bool] = {}

    def client(i: int, port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            data = payload[i:] + payload[:i]
            sender = threading.Thread(target=sock.sendall, args=(data,))
            sender.start()
            results[i] = _recv_exactly(sock, len(data)) == data
            sender.join()

    with DelayProxy("127.0.0.1", echo, delay_ms=2) as proxy:
        threads = [threading.Thread(target=client, args=(i, proxy.port)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert proxy.stats()["connections"] == 8
    assert results == dict.fromkeys(range(8), True)


def test_stopped_proxy_refuses_and_eof_passes(echo: int) -> None:
    proxy = DelayProxy("127.0.0.1", echo, delay_ms=1).start()
    port = proxy.port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"bye")
        assert _recv_exactly(sock, 3) == b"bye"
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b""  # the client's EOF reached the server, whose close came back
    proxy.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
