"""Storage and Redis URLs: parsing helpers, and the one place that hides secrets in them.

Redaction works on the raw string, not on what :func:`urllib.parse.urlsplit`
understood: a password with an unencoded ``#``, ``/``, ``?`` or ``@`` makes
``urlsplit`` see no password at all (and its port error quotes the password's
first characters), and a password may also travel as a query parameter
(``?password=``, ``?sslpassword=``). So:

* :func:`secret_spans` finds, in the raw text, everything between the first
  ``:`` of the authority and the *last* ``@`` (the userinfo's password, whatever
  it contains), and the value of every query parameter whose name looks secret;
* :func:`redact_url` masks those spans, and is what every message, report,
  repr and log line shows;
* :func:`scrub` removes the same secrets (whole, percent-decoded, and the
  fragments a parser error may quote) from any other text, for messages that
  a driver or parser wrote;
* parse errors (:func:`split_url`) never carry the parser's own text or chain
  its exception: they name the setting and show the redacted URL.

Over-masking is accepted: a displayed URL may hide more than its password.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from workflow_retention.exceptions import ConfigurationError

MASK = "***"
#: The URL forms of a Redis server (redis-py's ``from_url``): the lock's, and a broker that can serve as it.
REDIS_URL_PREFIXES = ("redis://", "rediss://", "unix://")

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_SECRET_NAME = re.compile(r"pass|pwd|secret|token|credential|auth|key", re.IGNORECASE)
_QUERY_PARAM = re.compile(r"[?&;]([^=&#;?/]*)=([^&;]*)")  # a secret value may hold an unencoded '#'
_DELIMITERS = re.compile(r"[/?#@:&=;%\s]+")
#: Pieces of a secret shorter than this are not scrubbed on their own (they would hit ordinary words).
MIN_FRAGMENT = 3


def _authority_start(url: str) -> int:
    """Where the authority (``user:password@host``) begins, as a person meant it."""
    match = _SCHEME.match(url)
    if match:
        end = match.end()
        while end < len(url) and url[end] == "/":
            end += 1
        return end
    slashes = url.find("//")  # a mistyped scheme: postgresql//user:pw@host/db
    return slashes + 2 if slashes != -1 else 0


def secret_spans(url: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each secret in the raw URL text, merged, in order."""
    spans: list[tuple[int, int]] = []
    at = url.rfind("@")
    if at != -1:
        colon = url.find(":", _authority_start(url), at)
        if colon != -1:
            spans.append((colon + 1, at))
    for match in _QUERY_PARAM.finditer(url):
        if _SECRET_NAME.search(match.group(1)) and match.group(2):
            spans.append(match.span(2))
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        elif end > start:
            merged.append((start, end))
    return merged


def redact_url(url: str) -> str:
    """``url`` with every secret replaced by ``***`` (see the module docstring)."""
    if not isinstance(url, str):
        return "<not a URL>"
    out, last = [], 0
    for start, end in secret_spans(url):
        out += [url[last:start], MASK]
        last = end
    out.append(url[last:])
    return "".join(out)


def secrets_of(url: str) -> list[str]:
    """The secret strings of ``url`` and their fragments, longest first (what :func:`scrub` removes)."""
    found: set[str] = set()
    for start, end in secret_spans(url):
        raw = url[start:end]
        for text in (raw, unquote(raw)):
            found.add(text)
            found.update(piece for piece in _DELIMITERS.split(text) if len(piece) >= MIN_FRAGMENT)
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, *urls: str | None) -> str:
    """``text`` with every secret of ``urls`` (whole, decoded, or a fragment of it) replaced by ``***``."""
    return remove_secrets(text, [secret for url in urls if url for secret in secrets_of(url)])


def remove_secrets(text: str, secrets: list[str]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***``, longest first."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return text


def split_url(url: str, what: str = "storage URL") -> SplitResult:
    """``urlsplit`` with the port validated; a malformed URL is a :class:`ConfigurationError`.

    The error shows the redacted URL and a reason of our own, never the
    parser's text (which can quote the password) and never its exception.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        reason = "it cannot be parsed"
        try:
            redacted = urlsplit(redact_url(url))
            redacted.port  # noqa: B018
        except ValueError:
            pass
        else:
            reason = ("characters of the password must be percent-encoded "
                      "(# as %23, / as %2F, ? as %3F, @ as %40, : as %3A)")
        raise ConfigurationError(f"{what} {redact_url(url)!r} is malformed: {reason}") from None
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
        names = ", ".join(sorted(MASK if not n.isidentifier() else n for n in unknown))
        raise ConfigurationError(
            f"storage URL {redact_url(url)!r}: unknown parameter(s) {names}; "
            f"allowed: {', '.join(sorted(allowed)) or 'none'}"
        )
    return params
