"""Retention policies: the file in the issue works as written; every mistake is named before anything runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from workflow_retention.exceptions import ConfigurationError
from workflow_retention.policy import Policy, load_policy, parse_policy

ISSUE_EXAMPLE = """
[retention]
default = "30d"
min = "1d"
keep_last = 3

[retention.status]
failed = "90d"

[retention.workflow]
"billing.*" = "730d"
"""

NOW = datetime(2026, 12, 6, tzinfo=UTC)
DAY = timedelta(days=1)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def test_the_issue_example_works_as_written(tmp_path: Path) -> None:
    policy = load_policy(_write(tmp_path, ISSUE_EXAMPLE))
    assert policy.retention("orders.create", "completed") == 30 * DAY
    assert policy.retention("orders.create", "failed") == 90 * DAY
    assert policy.retention("billing.invoice", "completed") == 730 * DAY
    assert policy.retention("billing.invoice", "failed") == 730 * DAY  # the workflow rule wins over the status
    assert policy.retention(None, "cancelled") == 30 * DAY
    assert policy.keep_last_for("anything") == 3
    assert policy.cutoff(NOW, "billing.x", "completed") == NOW - 730 * DAY
    assert policy.shortest() == 30 * DAY


def test_an_exact_name_beats_a_glob_and_globs_apply_in_file_order() -> None:
    policy = parse_policy({"retention": {"default": "30d", "workflow": {
        "health*": "2d", "healthcheck": {"default": "1d", "failed": "7d", "keep_last": 10}, "h*": "5d"}}})
    assert policy.retention("healthcheck", "completed") == DAY
    assert policy.retention("healthcheck", "failed") == 7 * DAY
    assert policy.keep_last_for("healthcheck") == 10
    assert policy.retention("healthz", "completed") == 2 * DAY  # first glob in file order
    assert policy.retention("hello", "completed") == 5 * DAY
    assert policy.retention("Healthcheck", "completed") == 30 * DAY  # case-sensitive, as pyworkflow's names
    assert policy.keep_last_for("healthz") == 0


def test_a_workflow_table_without_default_falls_back_to_the_status_rule() -> None:
    policy = parse_policy({"retention": {"default": "30d", "status": {"failed": "90d"},
                                         "workflow": {"etl.*": {"completed": "3d"}}}})
    assert policy.retention("etl.load", "completed") == 3 * DAY
    assert policy.retention("etl.load", "failed") == 90 * DAY
    assert policy.retention("etl.load", "cancelled") == 30 * DAY


def test_the_plain_days_setting_is_the_default_rule() -> None:
    policy = Policy.days(30)
    for status in ("completed", "failed", "cancelled", "continued_as_new", "interrupted"):
        assert policy.retention("any", status) == 30 * DAY
    assert policy.keep_last_for("any") == 0


@pytest.mark.parametrize(("section", "names"), [
    ({"default": "0d"}, "retention.default"),
    ({"default": "30d", "min": "2d", "status": {"failed": "1d"}}, "retention.status.failed"),
    ({"default": "30d", "workflow": {"billing.*": "12h"}}, "retention.workflow.'billing.*'"),
    ({"default": "30d", "workflow": {"x": {"failed": "1h"}}}, "retention.workflow.'x'.failed"),
    ({"default": "30d", "status": {"running": "1d"}}, "unknown key 'running'"),
    ({"default": "30d", "status": {"COMPLETED": "1d"}}, "unknown key 'COMPLETED'"),
    ({"default": "30d", "keep_lats": 3}, "unknown key 'keep_lats'"),
    ({"default": "30d", "keep_last": -1}, "retention.keep_last"),
    ({"default": "30"}, "retention.default"),
    ({"default": 30}, "retention.default"),
    ({"default": "30d", "workflow": {"x": {"deafult": "3d"}}}, "unknown key 'deafult'"),
    ({"default": "30d", "workflow": {" ": "3d"}}, "cannot be empty"),
    ({"min": "1d"}, "retention.default is required"),
])
def test_a_policy_that_contradicts_itself_or_cannot_be_read_names_the_key(section: dict, names: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_policy({"retention": section})
    assert names in str(caught.value)


def test_an_unreadable_file_is_named_with_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="PYWORKFLOW_RETENTION_POLICY.*not valid TOML"):
        load_policy(_write(tmp_path, "[retention\ndefault = 3"))
    with pytest.raises(ConfigurationError, match="PYWORKFLOW_RETENTION_POLICY: cannot read"):
        load_policy(tmp_path / "missing.toml")
    with pytest.raises(ConfigurationError, match="unknown key 'default'; expected one of retention"):
        load_policy(_write(tmp_path, "default = '30d'\n"))
    with pytest.raises(ConfigurationError, match=r"a \[retention\] table is required"):
        load_policy(_write(tmp_path, "retention = 3\n"))


def test_shrinking_is_detected_rule_by_rule() -> None:
    before = parse_policy({"retention": {"default": "30d", "keep_last": 3, "status": {"failed": "90d"}}})
    same = parse_policy({"retention": {"default": "30d", "keep_last": 3, "status": {"failed": "90d"}}})
    longer = parse_policy({"retention": {"default": "60d", "keep_last": 5, "status": {"failed": "90d"}}})
    shorter = parse_policy({"retention": {"default": "30d", "keep_last": 3, "status": {"failed": "90d"},
                                          "workflow": {"billing.*": "7d"}}})
    fewer = parse_policy({"retention": {"default": "30d", "keep_last": 1, "status": {"failed": "90d"}}})
    assert same.shrinks(before) == [] and longer.shrinks(before) == []
    assert "workflow 'billing.*', completed: 30d -> 7d" in shorter.shrinks(before)
    assert "workflow 'billing.*', failed: 90d -> 7d" in shorter.shrinks(before)
    assert fewer.shrinks(before) == ["the default, keep_last: 3 -> 1"]


def test_the_policy_round_trips_through_its_dict_form() -> None:
    policy = parse_policy({"retention": {"default": "30d", "keep_last": 2, "status": {"failed": "90d"},
                                         "workflow": {"a.*": "10d", "b": {"failed": "5d", "keep_last": 1}}}})
    assert parse_policy({"retention": policy.to_dict()}) == policy


def test_the_guard_sees_a_shorter_rule_hidden_behind_a_glob_that_does_not_match_itself() -> None:
    """Review of issue 21: names were probed with the patterns themselves, and ``billing.[it]*`` does not match the
    text ``billing.[it]*``: a rule cutting billing.invoice from 730 days to 1 passed the guard unconfirmed."""
    before = parse_policy({"retention": {"default": "30d", "workflow": {"billing.*": "730d"}}})
    for pattern in ("billing.[it]*", "billing.[!x]nvoice", "billing.inv?ice"):
        after = parse_policy({"retention": {"default": "30d", "workflow": {pattern: "1d", "billing.*": "730d"}}})
        assert any("730d -> 1d" in line for line in after.shrinks(before)), pattern
    same = parse_policy({"retention": {"default": "30d", "workflow": {"billing.[it]*": "730d", "billing.*": "730d"}}})
    assert same.shrinks(before) == []


def test_the_guard_holds_back_a_shorter_emergency_rule() -> None:
    """Review of issue 21: the guard compared the rules only: a disk-pressure rule cut from 30 days to 7 (or added
    where there was none) deleted sooner under pressure without an operator's confirmation."""
    body = {"default": "60d", "status": {"failed": "90d"}}
    before = parse_policy({"retention": {**body, "pressure": {"default": "30d", "free_below": "10%"}}})
    cut = parse_policy({"retention": {**body, "pressure": {"default": "7d", "free_below": "10%"}}})
    assert any("disk pressure" in line and "30d -> 7d" in line for line in cut.shrinks(before)), cut.shrinks(before)
    plain = parse_policy({"retention": body})
    assert any("disk pressure" in line and "60d -> 7d" in line for line in cut.shrinks(plain))
    assert before.shrinks(before) == [] and before.shrinks(cut) == [] and plain.shrinks(before) == []


def test_a_policy_answers_each_name_and_status_once() -> None:
    """A purge asks the policy for every run, several times (issue 21's 1.2x of a days purge): the answers
    are remembered per name and status, and remembering never changes them or the policy's value."""
    from datetime import timedelta

    from workflow_retention.policy import parse_policy

    policy = parse_policy({"retention": {"default": "30d", "status": {"failed": "90d"},
                                         "workflow": {"billing.*": "730d", "health": "1d"}}})
    twin = parse_policy({"retention": {"default": "30d", "status": {"failed": "90d"},
                                       "workflow": {"billing.*": "730d", "health": "1d"}}})
    for _ in range(3):
        assert policy.retention("billing.invoice", "completed") == timedelta(days=730)
        assert policy.retention("health", "failed") == timedelta(days=1)
        assert policy.retention("orders", "failed") == timedelta(days=90)
        assert policy.retention(None, "completed") == timedelta(days=30)
    assert policy == twin and repr(policy) == repr(twin)
