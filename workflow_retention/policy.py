"""Retention policies: how long each terminal run is kept, by status and by workflow name.

A policy is read from a TOML file (``PYWORKFLOW_RETENTION_POLICY``, standard
library ``tomllib``) or given as the same keys in a mapping::

    [retention]
    default = "30d"          # every terminal run not matched below
    min = "1d"               # no rule may be shorter (a guard against "0d" typos); default 1d
    keep_last = 3            # the 3 most recent terminal runs of each workflow are always kept

    [retention.status]       # by terminal status
    failed = "90d"

    [retention.workflow]     # by workflow name: exact, or a glob (fnmatch, case-sensitive)
    "billing.*" = "730d"
    "healthcheck" = { default = "1d", failed = "7d", keep_last = 10 }

How one run's retention is chosen (first that applies):

1. the workflow rule for its name: an exact name first, else the first glob
   that matches, in the file's order; within it, its value for the run's
   status, else its ``default``;
2. ``retention.status`` for the run's status;
3. ``retention.default`` (``PYWORKFLOW_DATA_RETENTION_DAYS`` when the policy
   is only that number: :meth:`Policy.days`).

``keep_last`` is the workflow rule's, else the top-level one (0: none).
Everything is checked when the policy is read: an unknown key, a status that
is not terminal, a duration in the wrong form, a rule shorter than ``min``,
or a negative ``keep_last`` is a :class:`ConfigurationError` naming the key,
before any store is opened.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from workflow_retention import values
from workflow_retention.exceptions import ConfigurationError
from workflow_retention.planning import TERMINAL_STATUSES, Expiry
from workflow_retention.timeutil import parse_timestamp

#: ``min`` when the policy does not set it.
DEFAULT_MIN = timedelta(days=1)
#: The largest ``keep_last`` accepted.
MAX_KEEP_LAST = 100_000
#: The largest policy file read (a policy is a few lines; a larger file is a wrong path).
MAX_POLICY_BYTES = 1024 * 1024
_GLOB = frozenset("*?[")
#: Patterns known to hold no glob character (``WorkflowRule.exact``, asked for every run a purge decides).
_EXACT: set[str] = set()


def _exact(pattern: str) -> bool:
    if _GLOB.intersection(pattern):
        return False
    _EXACT.add(pattern)
    return True


@dataclass(frozen=True)
class WorkflowRule:
    """The rule for the workflow names ``pattern`` matches (exact when it holds no ``*``, ``?`` or ``[``)."""

    pattern: str
    default: timedelta | None = None
    status: Mapping[str, timedelta] = field(default_factory=dict)
    keep_last: int | None = None

    @property
    def exact(self) -> bool:
        return self.pattern in _EXACT or _exact(self.pattern)

    def matches(self, workflow_name: str) -> bool:
        return workflow_name == self.pattern if self.exact else fnmatchcase(workflow_name, self.pattern)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?B)\s*$", re.I)
_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


@dataclass(frozen=True)
class Pressure:
    """``[retention.pressure]``: when the store is short of room, an emergency rule caps every retention.

    ``free_below``: file and SQLite stores, the share of their filesystem still free (0 to 1) below which the
    store is under pressure; ``size_above``: any store, its size in bytes (as ``audit`` measures it) above
    which it is. ``default``: the emergency retention (never below ``min``): every rule is cut to at most it.
    """

    default: timedelta
    free_below: float | None = None
    size_above: int | None = None


@dataclass(frozen=True)
class Policy:
    """A validated retention policy; see the module docstring for the file format and precedence."""

    default: timedelta
    minimum: timedelta = DEFAULT_MIN
    keep_last: int = 0
    status: Mapping[str, timedelta] = field(default_factory=dict)
    workflows: tuple[WorkflowRule, ...] = ()
    #: The disk-pressure rule (None: off).
    pressure: Pressure | None = None
    #: Answers already given by :meth:`rule_for` and :meth:`retention` (a purge asks once per run and more;
    #: the names and statuses are few). Not part of the policy's value.
    _memo: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def days(cls, days: int) -> Policy:
        """The plain ``PYWORKFLOW_DATA_RETENTION_DAYS`` rule: every terminal run, ``days`` days."""
        return cls(default=timedelta(days=days), minimum=min(DEFAULT_MIN, timedelta(days=days)))

    def rule_for(self, workflow_name: str | None) -> WorkflowRule | None:
        """The workflow rule that applies to ``workflow_name`` (an exact name first, else the first glob)."""
        if workflow_name is None:
            return None
        key = ("rule", workflow_name)
        if key not in self._memo:
            exact = next((w for w in self.workflows if w.exact and w.pattern == workflow_name), None)
            self._memo[key] = exact or next((w for w in self.workflows
                                             if not w.exact and w.matches(workflow_name)), None)
        return self._memo[key]

    def retention(self, workflow_name: str | None, status: str) -> timedelta:
        """How long a terminal run of ``workflow_name`` in ``status`` is kept after its last update."""
        key = ("retention", workflow_name, status)
        if key not in self._memo:
            self._memo[key] = self._retention(workflow_name, status)
        return self._memo[key]

    def _retention(self, workflow_name: str | None, status: str) -> timedelta:
        rule = self.rule_for(workflow_name)
        if rule is not None:
            if status in rule.status:
                return rule.status[status]
            if rule.default is not None:
                return rule.default
        return self.status.get(status, self.default)

    def cutoff(self, now: datetime, workflow_name: str | None, status: str) -> datetime:
        """The instant before which such a run's ``updated_at`` must lie for it to go."""
        return now - self.retention(workflow_name, status)

    def keep_last_for(self, workflow_name: str | None) -> int:
        """How many of the most recent terminal runs of ``workflow_name`` are always kept."""
        rule = self.rule_for(workflow_name)
        return rule.keep_last if rule is not None and rule.keep_last is not None else self.keep_last

    def emergency(self) -> Policy:
        """This policy under disk pressure: every retention cut to at most ``pressure.default`` (which is never
        below ``min``); ``keep_last`` and the rest unchanged."""
        if self.pressure is None:
            return self
        cap = self.pressure.default

        def cut(d: timedelta | None) -> timedelta | None:
            return min(d, cap) if d is not None else None

        return Policy(default=min(self.default, cap), minimum=self.minimum, keep_last=self.keep_last,
                      status={s: min(d, cap) for s, d in self.status.items()},
                      workflows=tuple(WorkflowRule(w.pattern, cut(w.default),
                                                   {s: min(d, cap) for s, d in w.status.items()}, w.keep_last)
                                      for w in self.workflows))

    def max_keep_last(self) -> int:
        """The largest ``keep_last`` of any rule: how many recent runs per workflow a purge asks the store for."""
        return max([self.keep_last, *(w.keep_last for w in self.workflows if w.keep_last is not None)])

    def rule_label(self, workflow_name: str | None, status: str) -> str:
        """The rule :meth:`retention` applies, named as in the file (``workflow."billing.*".failed``)."""
        rule = self.rule_for(workflow_name)
        if rule is not None and (status in rule.status or rule.default is not None):
            part = status if status in rule.status else "default"
            return f"workflow.{rule.pattern!r}.{part} = {values.human(self.retention(workflow_name, status))}"
        if status in self.status:
            return f"status.{status} = {values.human(self.status[status])}"
        return f"default = {values.human(self.default)}"

    def shortest(self) -> timedelta:
        """The shortest retention any rule gives: ``now - shortest()`` bounds every candidate."""
        return min(self.retentions())

    def retentions(self) -> Iterable[timedelta]:
        yield self.default
        yield from self.status.values()
        for rule in self.workflows:
            if rule.default is not None:
                yield rule.default
            yield from rule.status.values()

    def shrinks(self, previous: Policy) -> list[str]:
        """What this policy deletes sooner than ``previous`` (empty: nothing), one line per rule.

        Compared for the default, each status and each workflow pattern either
        policy names, and for ``keep_last``: the guard that holds a shortened
        policy back until an operator accepts it.
        """
        out = self._shrinks(previous)
        if self.pressure is not None:  # its emergency rule against the previous one's (or its rules, if none)
            out += [f"under disk pressure: {line}" for line in self.emergency()._shrinks(previous.emergency())]
        return out

    def _shrinks(self, previous: Policy) -> list[str]:
        """:meth:`shrinks` by the rules alone (not the emergency rule)."""
        patterns = [r.pattern for r in (*previous.workflows, *self.workflows)]
        names: list[str | None] = [None, *dict.fromkeys(n for p in patterns for n in (p, *_samples(p)))]
        out: list[str] = []
        for name in names:
            for status in sorted(TERMINAL_STATUSES):
                now, before = self.retention(name, status), previous.retention(name, status)
                if now < before:
                    who = f"workflow {name!r}" if name is not None else "the default"
                    out.append(f"{who}, {status}: {values.human(before)} -> {values.human(now)}")
            if self.keep_last_for(name) < previous.keep_last_for(name):
                who = f"workflow {name!r}" if name is not None else "the default"
                out.append(f"{who}, keep_last: {previous.keep_last_for(name)} -> {self.keep_last_for(name)}")
        return out

    def to_dict(self) -> dict[str, Any]:
        """The policy in the file's own shape (durations as ``30d``), for reports and run history."""
        def rule(w: WorkflowRule) -> Any:
            body: dict[str, Any] = {s: values.human(d) for s, d in w.status.items()}
            if w.default is not None:
                body["default"] = values.human(w.default)
            if w.keep_last is not None:
                body["keep_last"] = w.keep_last
            return body
        out: dict[str, Any] = {
            "default": values.human(self.default), "min": values.human(self.minimum), "keep_last": self.keep_last,
            "status": {s: values.human(d) for s, d in self.status.items()},
            "workflow": {w.pattern: rule(w) for w in self.workflows}}
        if self.pressure is not None:
            p = self.pressure
            out["pressure"] = {"default": values.human(p.default),
                               **({"free_below": _percent(p.free_below)} if p.free_below is not None else {}),
                               **({"size_above": f"{p.size_above}B"} if p.size_above is not None else {})}
        return out


def _percent(share: float) -> str:
    """``share`` (0 to 1) as the percentage text ``free_below`` is read from, never in exponent form."""
    return f"{share * 100:.12f}".rstrip("0").rstrip(".") + "%"


def _samples(pattern: str) -> list[str]:
    """Workflow names ``pattern`` matches, for the guard's comparison (:meth:`Policy.shrinks`): a glob with ``[...]``
    or ``?`` need not match its own text, so the rule it gives would otherwise never be compared. ``*`` as nothing
    and as one character, ``?`` as one, a class as a character it admits."""
    if not _GLOB.intersection(pattern):
        return []
    out: list[str] = []
    for star in ("", "x"):
        text, i = [], 0
        while i < len(pattern):
            c = pattern[i]
            if c == "*":
                text.append(star)
            elif c == "?":
                text.append("x")
            elif c == "[":
                j = i + 1
                negated = j < len(pattern) and pattern[j] == "!"
                j += 1 if negated else 0
                end = pattern.find("]", j + 1)  # a ']' first in the class is one of its characters
                if end < 0:
                    text.append("[")
                else:
                    chars = pattern[j:end]
                    allowed = [ch for ch in "xa0_Z.-" + chars if fnmatchcase(ch, pattern[i:end + 1])]
                    text.append(allowed[0] if allowed else "x")
                    i = end
            else:
                text.append(c)
            i += 1
        sample = "".join(text)
        if fnmatchcase(sample, pattern):
            out.append(sample)
    return out


def load_policy(path: str | Path, name: str = "PYWORKFLOW_RETENTION_POLICY") -> Policy:
    """Read and validate the policy file at ``path`` (``name`` is the setting that gave it, for errors).

    Only a regular file of at most :data:`MAX_POLICY_BYTES` in UTF-8 is read: the open never blocks (a FIFO,
    a device), and anything else is a :class:`ConfigurationError` naming ``name``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigurationError(f"{name}: {str(path)!r} is not a regular file: give the path of a TOML "
                                         "policy file")
            with os.fdopen(fd, "rb", closefd=False) as handle:
                raw = handle.read(MAX_POLICY_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigurationError(f"{name}: cannot read the policy file {str(path)!r}: "
                                 f"{exc.strerror or type(exc).__name__}") from exc
    if len(raw) > MAX_POLICY_BYTES:
        raise ConfigurationError(f"{name}: {str(path)!r} is larger than {MAX_POLICY_BYTES:,} bytes: not a "
                                 "retention policy")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{name}: {str(path)!r} is not UTF-8 text (byte {exc.start}): TOML files are "
                                 "UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{name}: {str(path)!r} is not valid TOML: {exc}") from exc
    return parse_policy(data, source=name)


def parse_policy(data: Mapping[str, Any], source: str = "policy") -> Policy:
    """Validate a policy given as a mapping (a parsed file, or ``install(app, policy=...)``)."""
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"{source}: expected a table with a [retention] section")
    _only(data, {"retention"}, source)
    section = data.get("retention")
    if not isinstance(section, Mapping):
        raise ConfigurationError(f"{source}: a [retention] table is required")
    where = f"{source}: retention"
    _only(section, {"default", "min", "keep_last", "status", "workflow", "pressure"}, where)
    if "default" not in section:
        raise ConfigurationError(f"{where}.default is required (e.g. default = \"30d\")")
    minimum = _duration(section.get("min", DEFAULT_MIN), f"{where}.min", timedelta(0))
    default = _duration(section["default"], f"{where}.default", minimum)
    keep_last = _keep_last(section.get("keep_last", 0), f"{where}.keep_last")
    status = _statuses(section.get("status", {}), f"{where}.status", minimum)
    workflows = section.get("workflow", {})
    if not isinstance(workflows, Mapping):
        raise ConfigurationError(f"{where}.workflow must be a table of workflow name (or glob) = duration")
    rules = []
    for pattern, value in workflows.items():
        key = f"{where}.workflow.{pattern!r}"
        if not isinstance(pattern, str):
            raise ConfigurationError(f"{key}: a workflow name or glob must be a string")
        if not pattern.strip():
            raise ConfigurationError(f"{key}: a workflow name or glob cannot be empty")
        if isinstance(value, Mapping):
            _only(value, {"default", "keep_last", *TERMINAL_STATUSES}, key, statuses=True)
            rules.append(WorkflowRule(
                pattern,
                default=_duration(value["default"], f"{key}.default", minimum) if "default" in value else None,
                status=_statuses({s: d for s, d in value.items() if s in TERMINAL_STATUSES}, key, minimum),
                keep_last=_keep_last(value["keep_last"], f"{key}.keep_last") if "keep_last" in value else None))
        else:
            rules.append(WorkflowRule(pattern, default=_duration(value, key, minimum)))
    pressure = _pressure(section["pressure"], f"{where}.pressure", minimum) if "pressure" in section else None
    return Policy(default=default, minimum=minimum, keep_last=keep_last, status=status, workflows=tuple(rules),
                  pressure=pressure)


def _pressure(table: Any, key: str, minimum: timedelta) -> Pressure:
    if not isinstance(table, Mapping):
        raise ConfigurationError(f"{key} must be a table: default = \"7d\" and free_below = \"10%\" and/or "
                                 "size_above = \"50GB\"")
    _only(table, {"default", "free_below", "size_above"}, key)
    if "default" not in table:
        raise ConfigurationError(f"{key}.default is required: the emergency retention, e.g. default = \"7d\"")
    if "free_below" not in table and "size_above" not in table:
        raise ConfigurationError(f"{key}: give free_below (e.g. \"10%\") and/or size_above (e.g. \"50GB\")")
    free = None
    if "free_below" in table:
        match = _PERCENT.match(table["free_below"]) if isinstance(table["free_below"], str) else None
        free = float(match.group(1)) / 100 if match else None
        if free is None or not 0 < free <= 1:
            raise ConfigurationError(f"{key}.free_below must be a percentage from 0% to 100%, e.g. \"10%\"; "
                                     f"got {table['free_below']!r}")
    size = None
    if "size_above" in table:
        match = _SIZE.match(table["size_above"]) if isinstance(table["size_above"], str) else None
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]) if match else None
        if not size:
            raise ConfigurationError(f"{key}.size_above must be a size such as \"500MB\" or \"50GB\"; "
                                     f"got {table['size_above']!r}")
    return Pressure(_duration(table["default"], f"{key}.default", minimum), free, size)


def _only(table: Mapping[str, Any], allowed: set[str], where: str, statuses: bool = False) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        hint = " (statuses: " + ", ".join(sorted(TERMINAL_STATUSES)) + ")" if statuses else ""
        raise ConfigurationError(f"{where}: unknown key {unknown[0]!r}; expected one of "
                                 f"{', '.join(sorted(allowed))}{hint}")


def _duration(value: Any, key: str, minimum: timedelta) -> timedelta:
    result = values.duration(value, key)
    if result < minimum:
        raise ConfigurationError(f"{key} = {values.human(result)} is shorter than retention.min "
                                 f"({values.human(minimum)}): raise it, or lower min on purpose")
    return result


def _keep_last(value: Any, key: str) -> int:
    return values.integer(value, key, minimum=0, maximum=MAX_KEEP_LAST, example=3)


def _statuses(table: Any, key: str, minimum: timedelta) -> dict[str, timedelta]:
    if not isinstance(table, Mapping):
        raise ConfigurationError(f"{key} must be a table of terminal status = duration")
    _only(table, set(TERMINAL_STATUSES), key)
    return {status: _duration(value, f"{key}.{status}", minimum) for status, value in table.items()}


# -- a policy cutoff across a process boundary (shards: a process pool, a Celery message) --------------------


def cutoff_text(cutoff: datetime) -> str:
    """``cutoff`` as text for another process: an ISO instant, or a policy's :class:`Expiry` (its policy exactly,
    durations in seconds, its instant and its pins) as JSON. :func:`parse_cutoff` reads it back."""
    if not isinstance(cutoff, Expiry):
        return cutoff.isoformat()
    p = cutoff.policy
    body = {"default": p.default.total_seconds(), "minimum": p.minimum.total_seconds(), "keep_last": p.keep_last,
            "status": {s: d.total_seconds() for s, d in p.status.items()},
            "workflows": [[w.pattern, w.default.total_seconds() if w.default is not None else None,
                           {s: d.total_seconds() for s, d in w.status.items()}, w.keep_last] for w in p.workflows]}
    out = {"policy": body, "now": cutoff.instant.isoformat(), "pinned_runs": sorted(cutoff.pinned_runs),
           "pinned_workflows": list(cutoff.pinned_workflows)}
    if cutoff.applied != p or p.pressure is not None:  # the configured policy, pressure table and all (the text
        # above has none): what the final pass records as applied
        out["applied"] = cutoff.applied.to_dict()
    return json.dumps(out, sort_keys=True)


def parse_cutoff(text: str) -> datetime:
    """The cutoff :func:`cutoff_text` wrote (a :class:`ConfigurationError` for anything else)."""
    try:
        if not text.startswith("{"):
            return parse_timestamp(text)
        data = json.loads(text)
        body = data["policy"]

        def span(seconds: float) -> timedelta:
            return timedelta(seconds=seconds)

        policy = Policy(default=span(body["default"]), minimum=span(body["minimum"]), keep_last=int(body["keep_last"]),
                        status={s: span(v) for s, v in body["status"].items()},
                        workflows=tuple(WorkflowRule(pattern, span(d) if d is not None else None,
                                                     {s: span(v) for s, v in st.items()},
                                                     int(k) if k is not None else None)
                                        for pattern, d, st, k in body["workflows"]))
        applied = parse_policy({"retention": data["applied"]}, source="the cutoff's applied policy") \
            if "applied" in data else None
        return Expiry(policy, parse_timestamp(data["now"]), pinned_runs=data["pinned_runs"],
                      pinned_workflows=data["pinned_workflows"], applied=applied)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigurationError(f"not a purge cutoff: {text[:200]!r}") from exc
