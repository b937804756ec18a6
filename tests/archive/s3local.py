"""moto's standalone S3 server for the archive tests, started on a free 127.0.0.1 port (``moto_server``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.services import port_open

STARTUP_TIMEOUT = 30.0


class S3Unavailable(RuntimeError):
    pass


def _binary() -> str | None:
    beside = Path(sys.executable).with_name("moto_server")
    return str(beside) if beside.exists() else shutil.which("moto_server")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[str, Callable[[], None]]:
    """Start ``moto_server`` (pip ``moto[server]``, the test extra); return (endpoint URL, stop)."""
    binary = _binary()
    if binary is None:
        raise S3Unavailable("moto_server is not installed: pip install 'moto[server]' (make install does)")
    port = free_port()
    proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)

    def stop() -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise S3Unavailable(f"moto_server exited with code {proc.returncode}")
        if port_open("127.0.0.1", port, timeout=0.2):
            return f"http://127.0.0.1:{port}", stop
        time.sleep(0.1)
    stop()
    raise S3Unavailable(f"moto_server did not answer within {STARTUP_TIMEOUT:.0f}s")
