"""A latency model of a real network: a TCP proxy on 127.0.0.1 that delays every client request.

``DelayProxy(target_host, target_port, delay_ms)`` listens on ``127.0.0.1`` (a free port unless one is
given) and forwards each accepted connection to the target. Every read from the client is held for
``delay_ms`` after it arrived, then written to the server; reads are forwarded in the order they arrived on
their connection, and each is due ``delay_ms`` after its own arrival, so pipelined requests are delayed
once each, not one after another (a fixed one-way latency, not a bandwidth limit). The server's answers go
back to the client unchanged and at once: with the request path delayed, every round trip costs at least
``delay_ms`` more, which is what a client sees of a network with that round-trip time. Any number of
connections are served side by side (one asyncio event loop in a background thread).

From Python::

    with DelayProxy("127.0.0.1", 9042, delay_ms=10) as proxy:
        ...  # connect to 127.0.0.1:proxy.port

``start()``/``stop()`` do the same without ``with``. ``stats()`` gives connections accepted and client
reads forwarded. From a shell (until interrupted)::

    python -m benchmarks.proxy 127.0.0.1:9042 --delay-ms 10 [--port 19042]

The delay is a floor, not an exact figure: on a loaded machine the event loop wakes late, and the proxy's
own CPU (one Python thread) is part of what a benchmark through it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import threading
import time
from types import TracebackType

#: Bytes read from one side at a time.
CHUNK = 256 * 1024


class DelayProxy:
    """A TCP proxy adding ``delay_ms`` to every client->server read (see the module docstring)."""

    def __init__(self, target_host: str, target_port: int, delay_ms: float, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        if delay_ms < 0:
            raise ValueError(f"delay_ms must be 0 or more, not {delay_ms}")
        self.target_host, self.target_port = target_host, int(target_port)
        self.delay = delay_ms / 1000.0
        self.host, self.port = host, int(port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.reads = 0

    # -- the life cycle -----------------------------------------------------------------------------------

    def start(self) -> DelayProxy:
        """Listen (in a background thread) and return once the port is bound; ``self.port`` is the port."""
        if self._thread is not None:
            raise RuntimeError("the proxy is already started")
        self._thread = threading.Thread(target=self._run, name=f"delay-proxy-{self.target_port}", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        if self._server is None:
            raise RuntimeError("the proxy did not start within 30 s")
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection, and end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(30)
        thread.join(30)
        self._loop = self._thread = self._server = None

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``: where clients connect."""
        return f"{self.host}:{self.port}"

    def stats(self) -> dict[str, int]:
        return {"connections": self.connections, "reads": self.reads}

    # -- the event loop -----------------------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve, self.host, self.port, backlog=1024, reuse_address=True))
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # noqa: BLE001 - re-raised by start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None and self._loop is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop.call_soon(self._loop.stop)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(client_w)
        _nodelay(client_w)
        try:
            server_r, server_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_w.close()
            self._writers.discard(client_w)
            return
        self._writers.add(server_w)
        _nodelay(server_w)
        try:
            await asyncio.gather(self._upstream(client_r, server_w), _pipe(server_r, client_w),
                                 return_exceptions=True)
        finally:
            for writer in (client_w, server_w):
                writer.close()
                self._writers.discard(writer)

    async def _upstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Client -> server: each read is written ``delay`` after it arrived, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def forward() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
                self.reads += 1

        sender = asyncio.ensure_future(forward())
        try:
            while True:
                data = await reader.read(CHUNK)
                queue.put_nowait((loop.time() + self.delay, data))
                if not data or sender.done():
                    break
            await sender
        finally:
            sender.cancel()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Server -> client, unchanged and undelayed; EOF is passed on."""
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="host:port of the server")
    p.add_argument("--delay-ms", type=float, required=True)
    p.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    args = p.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    with DelayProxy(host or "127.0.0.1", int(port), args.delay_ms, port=args.port) as proxy:
        print(f"127.0.0.1:{proxy.port} -> {args.target}, +{args.delay_ms} ms per client read", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
