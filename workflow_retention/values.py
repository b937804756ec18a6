"""Validation of every value an operator gives (environment, command line, URL options, constructor options).

One function per kind of value, one message style: a bad value raises
:class:`ConfigurationError` naming the setting, the expected form and what
was given, never a raw ``ValueError``, ``OverflowError`` or ``AttributeError``.
Numbers are ASCII digits only (``٣٠``, ``３０`` and ``²`` are refused, though
Python's ``int`` accepts them), and every number and duration has an upper
bound, so that no later arithmetic (``now - timedelta(days=N)``) can overflow.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from workflow_retention.exceptions import ConfigurationError

_INTEGER = re.compile(r"^\s*([0-9]{1,18})\s*$", re.ASCII)
_NUMBER = re.compile(r"^\s*([0-9]{1,15}(?:\.[0-9]{1,9})?)\s*$", re.ASCII)
_DURATION = re.compile(r"^\s*([0-9]{1,12})\s*([smhdw])\s*$", re.ASCII)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

#: The longest retention or grace period accepted (a hundred years): the cutoff stays a real date.
MAX_DAYS = 36_500
MAX_DURATION = timedelta(days=MAX_DAYS)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def integer(value: object, name: str, *, minimum: int = 1, maximum: int, example: int | None = None) -> int:
    """An integer from ``minimum`` to ``maximum``: an ``int`` or a string of ASCII digits."""
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    else:
        match = _INTEGER.match(value) if isinstance(value, str) else None
        number = int(match.group(1)) if match else None
    if number is None or not minimum <= number <= maximum:
        hint = f", e.g. {example}" if example is not None else ""
        raise ConfigurationError(f"{name} must be an integer from {minimum} to {maximum}{hint}; "
                                 f"got {_shown(value)}")
    return number


def duration(value: object, name: str, *, minimum: timedelta = timedelta(0),
             maximum: timedelta = MAX_DURATION) -> timedelta:
    """``30s``, ``15m``, ``1h``, ``7d`` or ``2w`` (or a ``timedelta``), from ``minimum`` to ``maximum``."""
    if isinstance(value, timedelta):
        result: timedelta | None = value
    else:
        match = _DURATION.match(value) if isinstance(value, str) else None
        try:
            result = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))}) if match else None
        except OverflowError:
            result = None
    if result is None or not minimum <= result <= maximum:
        raise ConfigurationError(f"{name}: expected a duration such as 30s, 15m, 1h or 7d, from "
                                 f"{human(minimum)} to {human(maximum)}; got {_shown(value)}")
    return result


def number(value: object, name: str, *, minimum: float = 0.0, maximum: float, example: str = "10",
           unit: str = "") -> float:
    """A number from ``minimum`` (exclusive) to ``maximum``: an int, a float or ASCII decimal text (not nan/inf)."""
    result: float | None
    if isinstance(value, bool):
        result = None
    elif isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str) and (match := _NUMBER.match(value)):
        result = float(match.group(1))
    else:
        result = None
    if result is None or not minimum < result <= maximum:  # also refuses nan and inf
        what = f" {unit}" if unit else ""
        raise ConfigurationError(f"{name} must be a number{what} above {minimum:g} and up to {maximum:g} "
                                 f"(e.g. {example}); got {_shown(value)}")
    return result


def seconds(value: object, name: str, *, maximum: float = 3600.0) -> float:
    """A positive number of seconds up to ``maximum``: a number, a numeric string, a duration or a timedelta."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    elif isinstance(value, str) and _DURATION.match(value):
        value = duration(value, name, maximum=timedelta(seconds=maximum)).total_seconds()
    return number(value, name, maximum=maximum, example="10 or 90s", unit="of seconds")


def boolean(value: str | None, name: str, default: bool) -> bool:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``); unset or empty gives ``default``."""
    if value is None or value.strip() == "":
        return default
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false (also 1/0, yes/no, on/off); got {_shown(value)}")


def iso_datetime(text: str, name: str) -> datetime:
    """A user-supplied ISO-8601 datetime with a UTC offset, as an aware UTC datetime."""
    form = "an ISO-8601 datetime with offset, e.g. 2026-01-31T00:00:00+00:00"
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigurationError(f"{name}: expected {form}; got {_shown(text)}") from None
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ConfigurationError(f"{name} must be timezone-aware: expected {form}; got {_shown(text)}")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ConfigurationError(f"{name}: {_shown(text)} has no UTC equivalent (out of range)") from None


def human(value: timedelta) -> str:
    """``90m`` -> ``90m``, ``1 day`` -> ``1d``: a duration as the settings write it."""
    total = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if total and total % size == 0:
            return f"{total // size}{unit}"
    return f"{total}s"
