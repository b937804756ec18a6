"""The per-run decision of a retention policy (planning.Expiry) and the keep_last ranking helper."""

from __future__ import annotations

import copy
import pickle
from datetime import UTC, datetime, timedelta

import pytest

from workflow_retention.planning import Expiry, Plan, RunRef, newest_terminal, plan_deletion, screen
from workflow_retention.policy import Policy, parse_policy

NOW = datetime(2026, 6, 1, tzinfo=UTC)
POLICY = parse_policy({"retention": {"default": "30d", "min": "1d", "keep_last": 1, "status": {"failed": "90d"},
                                     "workflow": {"billing.*": "730d", "hc": "1d"}}})


class Report:
    skipped = 0

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def ref(run_id: str, name: str | None, status: str, age: timedelta, parent: str | None = None) -> RunRef:
    return RunRef.parse(run_id, status, NOW - age, parent, workflow_name=name)


def bound(**kw) -> Expiry:
    return Expiry(POLICY, NOW, **kw).bound_to(lambda names, n: {"orders": ["newest"]}, whole_store=True)


def test_the_bound_is_the_widest_cutoff_and_each_run_has_its_own_rule() -> None:
    e = bound()
    assert e == NOW - timedelta(days=1)  # the shortest rule (hc, 1d) bounds every candidate query
    assert ref("a", "orders", "completed", timedelta(days=31)).is_expired(e)
    assert not ref("b", "orders", "failed", timedelta(days=31)).is_expired(e)
    assert ref("c", "orders", "failed", timedelta(days=91)).is_expired(e)
    assert not ref("d", "billing.x", "completed", timedelta(days=400)).is_expired(e)
    assert ref("e", "hc", "completed", timedelta(days=2)).is_expired(e)
    assert not ref("f", "orders", "running", timedelta(days=400)).is_expired(e)


def test_keep_last_and_pins_keep_a_run_and_say_why() -> None:
    e = bound(pinned_runs={"pinned"}, pinned_workflows=("audit.*",))
    old = timedelta(days=100)
    assert not ref("newest", "orders", "completed", old).is_expired(e)
    assert "keep_last" in (e.why_kept(ref("newest", "orders", "completed", old)) or "")
    assert e.why_kept(ref("pinned", "orders", "completed", old)) == "it is pinned"
    assert "pinned" in (e.why_kept(ref("x", "audit.log", "completed", old)) or "")
    assert ref("other", "orders", "completed", old).is_expired(e)
    assert ref("lonely", "reports", "completed", old).is_expired(Expiry(Policy(default=timedelta(days=30)), NOW))


def test_a_run_kept_by_policy_holds_its_ancestors() -> None:
    e = bound(pinned_runs={"child"})
    parent = ref("parent", "orders", "completed", timedelta(days=100))
    child = ref("child", "orders", "completed", timedelta(days=100), parent="parent")
    plan = plan_deletion([parent], lambda ids: {"parent": [child]} if "parent" in ids else {}, e)
    deletable, held = plan.order()
    assert deletable == [] and [h.run_id for h in held] == ["parent"]
    assert isinstance(plan, Plan)


def test_a_missing_workflow_name_is_a_defect_when_the_policy_decides_by_name() -> None:
    report = Report()
    nameless = ref("n", None, "completed", timedelta(days=100))
    assert screen([nameless], bound(), report) == [] and report.skipped == 1
    assert "workflow_name" in report.warnings[0]
    plain = Expiry(parse_policy({"retention": {"default": "30d"}}), NOW)
    assert not plain.needs_name and nameless.is_expired(plain)


def test_derived_values_are_plain_datetimes_and_an_expiry_is_never_pickled() -> None:
    e = bound()
    for derived in (e + timedelta(hours=1), e - timedelta(hours=1), e.replace(microsecond=0),
                    e.astimezone(UTC), e.bound):
        assert type(derived) is datetime
    assert copy.deepcopy(e) is e
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(e)
    assert e.sweep_cutoff == NOW - timedelta(days=30)  # sweeps follow the default rule, not the shortest


def test_keep_last_without_a_store_to_ask_refuses_rather_than_guess() -> None:
    with pytest.raises(RuntimeError, match="bound_to"):
        ref("a", "orders", "completed", timedelta(days=100)).is_expired(Expiry(POLICY, NOW))


def test_newest_terminal_ranks_by_creation_then_id_and_skips_what_cannot_rank() -> None:
    t = NOW
    rows = [("w", "a", "completed", t), ("w", "b", "completed", t), ("w", "c", "failed", t - timedelta(1)),
            ("w", "d", "running", t + timedelta(1)), ("w", "e", "completed", "not a time"),
            (None, "f", "completed", t), ("v", "g", "cancelled", t.isoformat())]
    assert newest_terminal(rows, 2) == {"w": ["b", "a"], "v": ["g"]}
    assert newest_terminal(rows, 3, names={"w"}) == {"w": ["b", "a", "c"]}


def test_the_emergency_rule_caps_every_retention_and_keeps_keep_last() -> None:
    policy = parse_policy({"retention": {
        "default": "30d", "min": "2d", "keep_last": 2, "status": {"failed": "90d"},
        "workflow": {"billing.*": {"default": "730d", "cancelled": "3d"}},
        "pressure": {"default": "7d", "free_below": "10%", "size_above": "1.5GB"}}})
    assert policy.pressure is not None and policy.pressure.free_below == 0.1
    assert policy.pressure.size_above == 1_500_000_000
    e = policy.emergency()
    assert e.retention("orders", "completed") == timedelta(days=7)
    assert e.retention("orders", "failed") == timedelta(days=7)
    assert e.retention("billing.x", "failed") == timedelta(days=7)
    assert e.retention("billing.x", "cancelled") == timedelta(days=3)  # already shorter: unchanged
    assert e.keep_last == 2 and e.minimum == timedelta(days=2) and e.pressure is None
    assert parse_policy({"retention": policy.to_dict()}) == policy  # the dict form round-trips


def test_a_policy_cutoff_crosses_a_process_boundary_as_text_exactly() -> None:
    from workflow_retention.exceptions import ConfigurationError
    from workflow_retention.policy import cutoff_text, parse_cutoff

    e = Expiry(POLICY, NOW + timedelta(microseconds=7), pinned_runs={"a", "b"}, pinned_workflows=("x.*",))
    back = parse_cutoff(cutoff_text(e))
    assert isinstance(back, Expiry) and back == e and back.instant == e.instant
    assert back.policy == POLICY and back.pinned_runs == {"a", "b"} and back.pinned_workflows == ("x.*",)
    plain = NOW - timedelta(days=30)
    assert parse_cutoff(cutoff_text(plain)) == plain and type(parse_cutoff(cutoff_text(plain))) is datetime
    with pytest.raises(ConfigurationError, match="not a purge cutoff"):
        parse_cutoff('{"policy": 1}')


def test_the_policy_a_purge_applies_survives_disk_pressure_and_the_process_boundary(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of issue 21: a sharded Celery purge recorded ``cutoff.policy`` as the applied policy: under disk
    pressure the emergency rule, and after the text crossing (shards) a policy without its pressure table; the
    guard then compared the next policy with the wrong one. ``Expiry.applied`` is the configured policy."""
    from workflow_retention import rules
    from workflow_retention.backends.memory import MemoryBackend
    from workflow_retention.policy import cutoff_text, parse_cutoff

    policy = parse_policy({"retention": {"default": "60d", "status": {"failed": "90d"},
                                         "pressure": {"default": "35d", "size_above": "1B"}}})
    monkeypatch.setattr(rules, "pressure_of", lambda policy, backend: "the store is full")
    cutoff, why = rules.pressured(Expiry(policy, NOW), MemoryBackend(store_name="applied-under-pressure"))
    assert why and cutoff.policy != policy and cutoff.applied == policy
    back = parse_cutoff(cutoff_text(cutoff))
    assert isinstance(back, Expiry) and back.policy == cutoff.policy and back.applied == policy
    plain = parse_cutoff(cutoff_text(Expiry(policy, NOW)))
    assert isinstance(plain, Expiry) and plain.applied == policy
    tiny = parse_policy({"retention": {"default": "60d", "pressure": {"default": "35d", "free_below": "0.00001%"}}})
    assert parse_policy({"retention": tiny.to_dict()}) == tiny  # no exponent form the file cannot hold


def test_a_policy_cutoff_needs_an_aware_now_and_never_deletes_by_a_naive_one() -> None:
    """A naive "now" would shift every rule by the machine's UTC offset: refused before any store is read."""
    with pytest.raises(ValueError, match="timezone-aware"):
        Expiry(POLICY, NOW.replace(tzinfo=None))
