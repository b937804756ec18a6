"""Hold and ordering rules for parents and children, independent of any store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from workflow_retention.planning import (
    RunRef,
    is_safe_run_id,
    key_owner,
    key_owners,
    plan_deletion,
    screen,
    split_plan,
    split_roots,
)
from workflow_retention.timeutil import parse_timestamp

CUTOFF = datetime(2026, 6, 1, tzinfo=UTC)
OLD = CUTOFF - timedelta(days=1)


def ref(run_id, status="completed", when=OLD, parent=None):
    return RunRef.parse(run_id, status, when, parent)


def test_children_go_first_and_a_surviving_child_holds_its_ancestors() -> None:
    runs = {r.run_id: r for r in [ref("p"), ref("c", parent="p"), ref("g", parent="c"), ref("q"),
                                  ref("q_live", "running", parent="q"), ref("q_old", parent="q")]}

    def children_of(ids):
        return {i: [r for r in runs.values() if r.parent_run_id == i] for i in ids}

    expired = [r for r in runs.values() if r.is_expired(CUTOFF)]
    roots = split_roots(expired, runs, CUTOFF)
    assert {r.run_id for r in roots} == {"p", "q"}
    deletable, held = plan_deletion(roots, children_of, CUTOFF).order()
    assert [r.run_id for r in deletable if r.run_id in "pcg"] == ["g", "c", "p"]
    assert {r.run_id for r in deletable} == {"g", "c", "p", "q_old"}
    assert [r.run_id for r in held] == ["q"]


def test_a_changed_run_keeps_its_ancestors() -> None:
    runs = {"p": ref("p"), "c": ref("c", parent="p")}
    plan = plan_deletion([runs["p"]], lambda ids: {i: [r for r in runs.values() if r.parent_run_id == i]
                                                   for i in ids}, CUTOFF)
    deletable, held = plan.order(survivors={"c"})
    assert deletable == [] and held == [runs["p"]]


def test_cycles_never_delete() -> None:
    a, b = ref("a", parent="b"), ref("b", parent="a")
    plan = plan_deletion([a], lambda ids: {"a": [b], "b": [a]}, CUTOFF)
    deletable, _ = plan.order()
    assert deletable == []


def test_expiry_is_strict_and_offset_aware() -> None:
    assert not ref("x", when=CUTOFF).is_expired(CUTOFF)
    assert ref("x", when=(CUTOFF - timedelta(seconds=1)).astimezone(timezone(timedelta(hours=5)))).is_expired(CUTOFF)
    assert not ref("x", when=(CUTOFF + timedelta(hours=1)).astimezone(timezone(timedelta(hours=-7))).isoformat()
                   ).is_expired(CUTOFF)
    assert ref("x", when="2026-05-31T23:59:59Z").is_expired(CUTOFF)
    assert ref("x", when=datetime(2026, 5, 31, 23)).is_expired(CUTOFF)  # naive = UTC wall clock
    assert not ref("x", "running").is_expired(CUTOFF)
    corrupt = ref("x", when="yesterday")
    assert corrupt.corrupt and not corrupt.is_expired(CUTOFF)
    assert parse_timestamp("2026-01-01T00:00:00+05:00") == datetime(2025, 12, 31, 19, tzinfo=UTC)


def test_safe_run_ids() -> None:
    assert is_safe_run_id("run_0123456789abcdef") and is_safe_run_id("sched_daily-re_1a2b3c4d")
    # pyworkflow names schedule runs sched_<schedule_id[:8]>_<hex>, and users choose schedule ids.
    assert is_safe_run_id("sched_cron:nig_6d1a7a53")
    for bad in ("../etc", "a/b", "", ".", "..", "a\x00b", "run*", "run x", "x" * 300, None, 3, "a..b", ":x"):
        assert not is_safe_run_id(bad), bad


def test_a_derived_key_belongs_to_the_longest_existing_prefix() -> None:
    runs = {"sched_cron", "sched_cron:nig_6d1a7a53", "run:hostile"}
    assert key_owner("sched_cron:nig_6d1a7a53:step_1", runs.__contains__) == "sched_cron:nig_6d1a7a53"
    assert key_owner("sched_cron:step_1", runs.__contains__) == "sched_cron"
    assert key_owner("run:hostile:step_1", runs.__contains__) == "run:hostile"
    assert key_owner("gone:step_1", runs.__contains__) is None
    assert key_owner("stream_step_x", runs.__contains__) is None
    asked = []
    owners = key_owners(["sched_cron:nig_6d1a7a53:step_1", "gone:x"], lambda ids: asked.append(ids) or runs & ids)
    assert owners == {"sched_cron:nig_6d1a7a53:step_1": "sched_cron:nig_6d1a7a53", "gone:x": None}
    assert len(asked) == 1  # one existence lookup for the whole page


def test_one_status_rule_unknown_statuses_are_kept_and_reported() -> None:
    class Report:
        skipped = 0
        warnings: list = []

        def warn(self, message):
            self.warnings.append(message)

    report = Report()
    upper = ref("run_upper", "COMPLETED")
    assert not upper.is_expired(CUTOFF) and upper.unknown_status
    assert upper.candidate(CUTOFF) and "COMPLETED" in upper.defect(CUTOFF)
    assert not ref("run_recent", "COMPLETED", when=CUTOFF).candidate(CUTOFF)  # nothing to report yet
    assert screen([upper, ref("run_fine")], CUTOFF, report) == [ref("run_fine")]
    assert report.skipped == 1
    # As a child, an unknown status holds its parent like any survivor.
    runs = {"p": ref("p"), "c": ref("c", "COMPLETED", parent="p")}
    plan = plan_deletion([runs["p"]], lambda ids: {i: [r for r in runs.values() if r.parent_run_id == i]
                                                   for i in ids}, CUTOFF)
    assert plan.order() == ([], [runs["p"]])


def test_an_unsafe_child_holds_its_parent_and_an_unsafe_parent_frees_its_children() -> None:
    runs = {r.run_id: r for r in [ref("p"), ref("c*", parent="p"), ref("u*"), ref("k", parent="u*")]}

    def children_of(ids):
        return {i: [r for r in runs.values() if r.parent_run_id == i] for i in ids}

    roots = split_roots([r for r in runs.values() if r.eligible(CUTOFF)], runs, CUTOFF)
    assert {r.run_id for r in roots} == {"p", "k"}  # k's parent can never go, so k is a root
    deletable, held = plan_deletion(roots, children_of, CUTOFF).order()
    assert [r.run_id for r in deletable] == ["k"] and [r.run_id for r in held] == ["p"]


def test_timestamps_without_a_utc_form_are_unreadable_not_old() -> None:
    for poison in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", datetime.min, datetime.max):
        poisoned = ref("run_poison", when=poison)
        assert poisoned.updated_at is None and poisoned.corrupt and not poisoned.is_expired(CUTOFF)



def test_a_window_is_cut_into_batches_in_run_id_order_without_splitting_a_family() -> None:
    runs = {r.run_id: r for r in [ref("d"), ref("b"), ref("a"), ref("c"), ref("b1", parent="b"),
                                  ref("b2", parent="b1"), ref("e")]}
    roots = [runs[i] for i in ("d", "b", "a", "c", "e")]
    plan = plan_deletion(roots, lambda ids: {i: [r for r in runs.values() if r.parent_run_id == i]
                                             for i in ids}, CUTOFF)
    batches = list(split_plan(plan, 2))
    assert [b.roots for b in batches] == [["a", "b"], ["c", "d"], ["e"]]
    orders = [[r.run_id for r in b.order()[0]] for b in batches]
    assert orders == [["a", "b2", "b1", "b"], ["c", "d"], ["e"]]  # b's family stays whole, children first
    assert sorted(sum(orders, [])) == sorted(runs)
