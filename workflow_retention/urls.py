"""Storage URLs: parsing helpers and password masking for logs and reprs."""

from __future__ import annotations

from urllib.parse import SplitResult, parse_qs, urlsplit

from workflow_retention.exceptions import ConfigurationError

MASK = "***"


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:{MASK}@{netloc}").geturl()


def split_url(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ConfigurationError(f"storage URL {redact_url(url)!r} is malformed: {exc}") from exc
    return parts


def server_and_database(url: str, form: str) -> tuple[SplitResult, str]:
    """The parts of a ``scheme://user:password@host:port/database`` URL and its database name.

    Anything else is an error that states ``form`` and shows the URL with its password masked.
    """
    parts = split_url(url)
    database = parts.path.lstrip("/")
    if not parts.hostname or not database or "/" in database:
        raise ConfigurationError(f"{form}; got {redact_url(url)!r}")
    return parts, database


def query_params(parts: SplitResult, allowed: set[str], url: str) -> dict[str, str]:
    """Single-valued query parameters; an unknown one is an error naming the allowed ones."""
    params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(params) - allowed
    if unknown:
        raise ConfigurationError(
            f"storage URL {redact_url(url)!r}: unknown parameter(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(allowed)) or 'none'}"
        )
    return params
