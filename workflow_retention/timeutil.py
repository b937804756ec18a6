"""Timestamps and durations: one place that parses what stores contain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from workflow_retention import values
from workflow_retention.exceptions import ConfigurationError


def require_aware(value: datetime, name: str = "older_than") -> datetime:
    """Return ``value`` in UTC; a naive or non-datetime value raises ValueError."""
    if not isinstance(value, datetime):
        raise ConfigurationError(f"{name} must be a timezone-aware datetime, got {value!r}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ConfigurationError(
            f"{name} must be timezone-aware (for example "
            f"datetime(2026, 1, 1, tzinfo=timezone.utc)); got the naive datetime {value.isoformat()}"
        )
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ConfigurationError(f"{name} {value.isoformat()} has no UTC equivalent (out of range)") from None
    if not CUTOFF_RANGE[0] <= utc <= CUTOFF_RANGE[1]:
        raise ConfigurationError(f"{name} {value.isoformat()} is out of range: give an instant from "
                                 f"{CUTOFF_RANGE[0].date()} to {CUTOFF_RANGE[1].date()} (a purge computes "
                                 "margins around it)")
    return utc


#: The instants a cutoff may be: a purge adds and subtracts margins of up to days around it.
CUTOFF_RANGE = (datetime(2, 1, 1, tzinfo=UTC), datetime(9998, 12, 31, tzinfo=UTC))


def parse_timestamp(value: object) -> datetime:
    """Parse a stored timestamp into an aware UTC datetime.

    Accepts datetimes (naive ones are UTC wall-clock, as MySQL and Cassandra
    return them) and ISO-8601 strings with any UTC offset or ``Z``. Anything
    else raises ValueError, so a corrupt record is never mistaken for an old one.
    So does an instant that has no UTC representation (``9999-12-31T23:59:59-14:00``
    is in year 10000), and the sentinels ``datetime.min``/``datetime.max`` that
    drivers use for ``-infinity``/``infinity``.
    """
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        dt = datetime.fromisoformat(text)
    else:
        raise ValueError(f"not a timestamp: {value!r}")
    if dt.replace(tzinfo=None) in (datetime.min, datetime.max):
        raise ValueError(f"not a finite timestamp: {value!r}")
    try:
        if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
            return dt.replace(tzinfo=UTC)
        return dt.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError(f"timestamp out of range: {value!r}") from exc


def older(value: object, when: datetime, *, missing: bool | None = None) -> bool | None:
    """``value < when`` as instants: True, False, or None when the stored value cannot be read.

    Callers treat None as "keep it and report it". A missing value (None) gives
    ``missing``: unreadable by default; the orphan sweeps pass True, since a
    record with no write time has no grace period to honour.
    """
    if value is None:
        return missing
    try:
        return parse_timestamp(value) < when
    except (TypeError, ValueError):
        return None


def parse_iso_datetime(text: str, name: str) -> datetime:
    """A user-supplied ISO-8601 datetime with an offset (see :func:`workflow_retention.values.iso_datetime`)."""
    return values.iso_datetime(text, name)


def parse_duration(text: object, name: str) -> timedelta:
    """``30s``, ``15m``, ``1h``, ``7d`` or ``2w`` (see :func:`workflow_retention.values.duration`)."""
    return values.duration(text, name)


def utcnow() -> datetime:
    return datetime.now(UTC)
