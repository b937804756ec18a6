"""The Cassandra storage URL and its settings.

``cassandra://[user:password@]host1[,host2...][:port]/keyspace?param=value``

Query parameters: ``local_dc``, ``read_consistency`` and ``write_consistency``
(default ``LOCAL_QUORUM``), ``serial_consistency`` (``SERIAL`` or
``LOCAL_SERIAL``, for the conditional deletes), ``protocol_version`` (unset:
the driver negotiates; ``3`` for Cassandra 2.1), ``connect_timeout`` and
``request_timeout`` (seconds), ``concurrency`` (requests in flight).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from workflow_retention.exceptions import ConfigurationError
from workflow_retention.urls import query_params, redact_url

FORM = "cassandra://[user:password@]host1[,host2...][:port]/keyspace[?local_dc=...&read_consistency=...]"
CONSISTENCY = ("ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE")
SERIAL = ("SERIAL", "LOCAL_SERIAL")
PROTOCOL_VERSIONS = (3, 4, 5, 6)
_KEYSPACE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)(?::(\d{1,5}))?$")
PARAMS = {"local_dc", "read_consistency", "write_consistency", "serial_consistency", "protocol_version",
          "connect_timeout", "request_timeout", "concurrency"}


@dataclass(frozen=True)
class CassandraSettings:
    contact_points: tuple[str, ...] = ("localhost",)
    port: int = 9042
    keyspace: str = "pyworkflow"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    local_dc: str | None = None
    read_consistency: str = "LOCAL_QUORUM"
    write_consistency: str = "LOCAL_QUORUM"
    serial_consistency: str = "SERIAL"
    protocol_version: int | None = None
    connect_timeout: float = 10.0
    request_timeout: float = 30.0
    concurrency: int = 64

    def __post_init__(self) -> None:
        if not self.contact_points or not all(isinstance(h, str) and h for h in self.contact_points):
            raise ConfigurationError(f"contact_points must name at least one host; expected {FORM}")
        if not isinstance(self.keyspace, str) or not _KEYSPACE.match(self.keyspace):
            raise ConfigurationError(f"keyspace must be a Cassandra identifier (a letter, then up to 47 letters, "
                                     f"digits or _); got {self.keyspace!r}")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ConfigurationError(f"port must be a TCP port number; got {self.port!r}")
        for name in ("read_consistency", "write_consistency"):
            _choice(name, getattr(self, name), CONSISTENCY)
        _choice("serial_consistency", self.serial_consistency, SERIAL)
        if self.protocol_version is not None and self.protocol_version not in PROTOCOL_VERSIONS:
            raise ConfigurationError(f"protocol_version must be one of {', '.join(map(str, PROTOCOL_VERSIONS))} "
                                     f"(or unset to negotiate); got {self.protocol_version!r}")
        if not isinstance(self.concurrency, int) or not 1 <= self.concurrency <= 512:
            raise ConfigurationError(f"concurrency must be an integer from 1 to 512; got {self.concurrency!r}")
        for name in ("connect_timeout", "request_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value <= 3600:
                raise ConfigurationError(f"{name} must be a number of seconds from 0 to 3600; got {value!r}")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigurationError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _number(params: dict[str, str], name: str, kind: type, url: str) -> Any:
    if name not in params:
        return None
    try:
        return kind(params[name])
    except ValueError:
        raise ConfigurationError(f"storage URL {redact_url(url)!r}: {name} must be a number; "
                                 f"got {params[name]!r}") from None


def _hosts(netloc: str, url: str) -> tuple[tuple[str, ...], int | None]:
    hosts, ports = [], set()
    for n, part in enumerate(netloc.split(","), start=1):
        match = _HOST.match(part.strip())
        if not match:  # the part is not quoted: with an unencoded '/' or '#' it may hold the password
            raise ConfigurationError(f"storage URL {redact_url(url)!r}: host number {n} is not a host name, "
                                     f"IP address or host:port (percent-encode # / ? @ in the password); "
                                     f"expected {FORM}")
        hosts.append(match.group(1).strip("[]"))
        if match.group(2):
            ports.add(int(match.group(2)))
    if len(ports) > 1:
        raise ConfigurationError(f"storage URL {redact_url(url)!r}: every host must use the same port; "
                                 f"expected {FORM}")
    return tuple(hosts), (ports.pop() if ports else None)


def parse_url(url: str) -> CassandraSettings:
    """Parse a ``cassandra://`` URL; anything malformed raises ConfigurationError naming the expected form."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "cassandra":
        raise ConfigurationError(f"expected a cassandra:// URL ({FORM}); got {redact_url(url)!r}")
    userinfo, _, netloc = parts.netloc.rpartition("@")
    if not netloc:
        raise ConfigurationError(f"storage URL {redact_url(url)!r} names no host; expected {FORM}")
    hosts, port = _hosts(netloc, url)
    username, _, password = userinfo.partition(":")
    keyspace = parts.path.strip("/") or "pyworkflow"
    params = query_params(parts, PARAMS, url)
    options: dict[str, Any] = {
        "contact_points": hosts, "keyspace": keyspace,
        "username": unquote(username) or None, "password": unquote(password) or None,
        "local_dc": params.get("local_dc") or None,
    }
    if port is not None:
        options["port"] = port
    for name in ("read_consistency", "write_consistency", "serial_consistency"):
        if params.get(name):
            options[name] = params[name].upper()
    for name, kind in (("protocol_version", int), ("concurrency", int), ("connect_timeout", float),
                       ("request_timeout", float)):
        value = _number(params, name, kind, url)
        if value is not None:
            options[name] = value
    return CassandraSettings(**options)
