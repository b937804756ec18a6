"""Retention policies (issue 21) on every backend: per status, per workflow glob, keep_last and pins.

The store is written by pyworkflow-engine's own classes and inspected raw; the policy is decided per run by
the shared planning code (:class:`workflow_retention.planning.Expiry`), the candidates paged by each backend
with the policy's widest bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from tests.conformance.checks import assert_no_orphans, run_ids, snapshot
from tests.harness.base import Harness
from tests.scenario import NOW, add_run, newest_written_at_an_offset
from workflow_retention.planning import Expiry
from workflow_retention.policy import Policy, parse_policy
from workflow_retention.report import Kind

POLICY = {"retention": {
    "default": "30d", "min": "1d", "keep_last": 2,
    "status": {"failed": "90d"},
    "workflow": {"billing.*": "730d", "healthcheck": {"default": "1d", "keep_last": 0}},
}}
PINNED_RUNS = frozenset({"orders_pinned"})
PINNED_WORKFLOWS = ("audit.*",)
DAY = timedelta(days=1)


@dataclass
class PolicyScenario:
    deleted: set[str] = field(default_factory=set)
    kept: set[str] = field(default_factory=set)
    held: set[str] = field(default_factory=set)


async def build(pw) -> PolicyScenario:
    sc = PolicyScenario()

    async def run(run_id: str, workflow: str, status: str, age: timedelta, fate: set[str], **kw) -> None:
        await add_run(pw, run_id, status, NOW - age, workflow=workflow, **kw)
        fate.add(run_id)

    # orders: the default 30d, failed 90d, keep_last 2 (the two newest are recent anyway)
    await run("orders_new1", "orders", "completed", timedelta(hours=12), sc.kept)
    await run("orders_new2", "orders", "completed", 2 * DAY, sc.kept)
    await run("orders_old_completed", "orders", "completed", 40 * DAY, sc.deleted)
    await run("orders_old_cancelled", "orders", "cancelled", 35 * DAY, sc.deleted)
    await run("orders_old_failed", "orders", "failed", 40 * DAY, sc.kept)  # failed: 90d
    await run("orders_older_failed", "orders", "failed", 100 * DAY, sc.deleted)
    await run("orders_live", "orders", "running", 200 * DAY, sc.kept)
    # a parent held by a child the failed rule keeps
    await run("orders_parent", "orders", "completed", 50 * DAY, sc.held)
    await run("orders_child_failed", "orders", "failed", 50 * DAY, sc.kept, parent="orders_parent", depth=1)
    # a pinned run, and its parent held by it
    await run("orders_pin_parent", "orders", "completed", 60 * DAY, sc.held)
    await run("orders_pinned", "orders", "completed", 55 * DAY, sc.kept, parent="orders_pin_parent", depth=1)
    # billing.*: 730d; keep_last keeps the two newest terminal runs whatever their age
    await run("billing_old", "billing.invoice", "completed", 400 * DAY, sc.kept)
    await run("billing_ancient", "billing.invoice", "completed", 800 * DAY, sc.kept)  # keep_last
    await run("billing_ancient2", "billing.invoice", "failed", 900 * DAY, sc.deleted)
    # healthcheck: 1d, keep_last 0; a whole tree goes
    await run("hc_recent", "healthcheck", "completed", timedelta(hours=1), sc.kept)
    await run("hc_1", "healthcheck", "completed", 2 * DAY, sc.deleted)
    await run("hc_2", "healthcheck", "failed", 3 * DAY, sc.deleted)
    await run("hc_tree_parent", "healthcheck", "completed", 5 * DAY, sc.deleted)
    await run("hc_tree_child", "healthcheck", "completed", 5 * DAY, sc.deleted, parent="hc_tree_parent", depth=1)
    # reports: only old runs; keep_last keeps the two created last, however the updates fell
    await run("reports_a", "reports", "completed", 70 * DAY, sc.kept, created=NOW - 50 * DAY)
    await run("reports_b", "reports", "completed", 60 * DAY, sc.kept, created=NOW - 60 * DAY - timedelta(hours=1))
    await run("reports_c", "reports", "completed", 65 * DAY, sc.deleted, created=NOW - 65 * DAY)
    await run("reports_live", "reports", "running", 10 * DAY, sc.kept, created=NOW - 10 * DAY)  # not terminal
    # a workflow pin (glob)
    await run("audit_old", "audit.trail", "completed", 100 * DAY, sc.kept)
    return sc


def expiry(policy: Policy | None = None) -> Expiry:
    return Expiry(policy or parse_policy(POLICY), NOW, pinned_runs=PINNED_RUNS, pinned_workflows=PINNED_WORKFLOWS)


@pytest.fixture
def scenario(backend: Harness) -> PolicyScenario:
    return backend.run(build(backend.pyworkflow()))


def test_the_policy_deletes_exactly_the_expected_runs(backend: Harness, scenario: PolicyScenario) -> None:
    before = snapshot(backend.inventory())
    dry = backend.retention(batch_size=3).delete_old_runs(expiry(), dry_run=True)
    assert snapshot(backend.inventory()) == before, "a dry run changed the store"

    report = backend.retention(batch_size=3).delete_old_runs(expiry())
    items = backend.inventory()
    assert run_ids(items) == scenario.kept | scenario.held
    assert report.runs == len(scenario.deleted)
    assert report.held == len(scenario.held)
    assert report.skipped == 0 and report.changed == 0, report.warnings
    assert_no_orphans(items)
    assert report.counts[Kind.CHECKPOINTS] == 2 * len(scenario.deleted)

    assert (dry.runs, dry.held, dry.skipped) == (report.runs, report.held, report.skipped)
    assert {k: v for k, v in dry.counts.items() if v} == {k: v for k, v in report.counts.items() if v}

    after = snapshot(items)
    again = backend.retention().delete_old_runs(expiry())
    assert again.runs == 0 and sum(again.counts.values()) == 0
    assert snapshot(backend.inventory()) == after


BY_RULE = {"default = 30d": 3, "status.failed = 90d": 1, "workflow.'billing.*'.default = 730d": 1,
           "workflow.'healthcheck'.default = 1d": 4}


def test_the_dry_run_and_the_purge_say_what_each_rule_deletes(backend: Harness, scenario: PolicyScenario) -> None:
    from workflow_retention import rules

    for dry_run in (True, False):
        cutoff = expiry()
        report = backend.retention(batch_size=3).delete_old_runs(cutoff, dry_run=dry_run,
                                                                 on_batch=rules.by_rule(cutoff, None))
        assert rules.rule_counts(cutoff) == BY_RULE, dry_run
        assert sum(BY_RULE.values()) == report.runs == len(scenario.deleted)


def test_without_keep_last_and_pins_the_rules_alone_decide(backend: Harness, scenario: PolicyScenario) -> None:
    policy = parse_policy({"retention": {**POLICY["retention"], "keep_last": 0}})
    report = backend.retention().delete_old_runs(Expiry(policy, NOW))
    gone = {"reports_a", "reports_b", "billing_ancient", "orders_pinned", "orders_pin_parent", "audit_old"}
    assert run_ids(backend.inventory()) == (scenario.kept | scenario.held) - gone
    assert report.runs == len(scenario.deleted | gone)
    assert_no_orphans(backend.inventory())


def test_a_sharded_policy_purge_deletes_exactly_what_one_purge_deletes(backend: Harness,
                                                                       scenario: PolicyScenario) -> None:
    """Shards (4 where the backend splits) get the policy and the pins as text (policy.cutoff_text), as a
    process pool or a Celery message would, and decide every run as one purge does."""
    from workflow_retention.shards import purge_sharded

    one = backend.retention().delete_old_runs(expiry(), dry_run=True)
    result = purge_sharded(backend.retention, expiry(), 4, workers=4)
    assert not result.failed, result.failure_text()
    items = backend.inventory()
    assert run_ids(items) == scenario.kept | scenario.held
    assert (result.report.runs, result.report.held) == (one.runs, one.held) == \
        (len(scenario.deleted), len(scenario.held))
    assert result.report.rules == BY_RULE  # counted in each shard and the final pass, merged
    assert_no_orphans(items)


def test_explain_agrees_with_the_policy_purge_and_names_the_reason(backend: Harness,
                                                                   scenario: PolicyScenario) -> None:
    store = backend.retention()
    answers = {run_id: store.explain(run_id, expiry()) for run_id in sorted(scenario.deleted | scenario.kept
                                                                            | scenario.held)}
    assert {r for r, a in answers.items() if a.deleted} == scenario.deleted
    assert any("it is pinned" in r for r in answers["orders_pinned"].reasons)
    assert any("keep_last" in r for r in answers["billing_ancient"].reasons)
    assert any("status.failed = 90d" in r for r in answers["orders_old_failed"].reasons)
    assert any("audit.*" in r or "pinned" in r for r in answers["audit_old"].reasons)


# -- review of issue 21: a 1-day default beside a 730-day workflow rule, with the engine writing during the purge --

SHORT = {"retention": {"default": "1d", "min": "1h", "keep_last": 2, "status": {"failed": "90d"},
                       "workflow": {"billing.*": "730d"}}}


async def build_short(pw) -> dict[str, set[str]]:
    """Runs of a policy whose shortest rule (1d) is far below its longest (730d); returns kept/deleted/held ids."""
    fate: dict[str, set[str]] = {"kept": set(), "deleted": set(), "held": set()}

    async def run(run_id: str, workflow: str, status: str, age: timedelta, to: str, **kw) -> None:
        await add_run(pw, run_id, status, NOW - age, workflow=workflow, **kw)
        fate[to].add(run_id)

    await run("bill_a", "billing.invoice", "completed", 400 * DAY, "kept")     # its rule: 730d
    await run("bill_b", "billing.invoice", "completed", 800 * DAY, "kept")     # expired by 730d; keep_last 2
    await run("bill_c", "billing.invoice", "failed", 900 * DAY, "deleted")     # the workflow rule beats failed 90d
    await run("bill_d", "billing.ledger", "completed", 700 * DAY, "kept")
    await run("bill_e", "billing.ledger", "completed", 710 * DAY, "kept")
    await run("bill_f", "billing.ledger", "completed", 720 * DAY, "kept")      # third newest, but within 730d
    for i, age in enumerate((2, 3, 4, 5, 6, 7), start=1):                      # o1, o2: keep_last
        await run(f"ord_{i}", "orders", "completed", age * DAY, "kept" if i <= 4 else "deleted")
    await run("ord_failed", "orders", "failed", 40 * DAY, "kept")              # failed: 90d
    await run("misc_a", "misc", "completed", 2 * DAY, "kept")
    await run("misc_b", "misc", "completed", 3 * DAY, "kept")
    await run("misc_parent", "misc", "completed", 30 * DAY, "held")            # its pinned child holds it
    await run("misc_pinned", "misc", "completed", 10 * DAY, "kept", parent="misc_parent", depth=1)
    await run("misc_old", "misc", "completed", 20 * DAY, "deleted")
    await run("hc_1", "healthcheck", "completed", timedelta(hours=36), "kept")
    await run("hc_2", "healthcheck", "completed", timedelta(hours=38), "kept")
    await run("hc_parent", "healthcheck", "completed", 3 * DAY, "deleted")
    await run("hc_child", "healthcheck", "completed", 3 * DAY, "deleted", parent="hc_parent", depth=1)
    return fate


def test_a_short_default_beside_a_long_workflow_rule_with_the_engine_writing(backend: Harness) -> None:
    """Every backend, its raw store read before and after: no run is deleted by the shortest rule (1d) when its own
    rule (730d, failed 90d), keep_last or a pin keeps it, also at the delete-time re-check while the engine revives
    a planned run (ord_3) and rewrites one's status to one with a longer rule (ord_4, failed: 90d, updated_at as
    it was) between the plan and the delete of their batch, and finishes a newer run of a keep_last workflow
    (ord_new) at the first batch boundary. (A child started under a parent that is not running is no engine
    write; Cassandra and DynamoDB do not re-read children at the commit: see the review's report.)"""
    from pyworkflow.storage.schemas import RunStatus

    fate = backend.run(build_short(backend.pyworkflow()))
    before = backend.inventory()
    cutoff = Expiry(parse_policy(SHORT), NOW, pinned_runs={"misc_pinned"})
    dry = backend.retention(batch_size=2).delete_old_runs(cutoff, dry_run=True)
    assert dry.runs == len(fate["deleted"]) + 2, dry.warnings  # ord_3, ord_4 would go without the engine

    calls: list[int] = []
    pw = backend.pyworkflow()
    changes = {"ord_3": lambda: backend.run(pw.update_run_status("ord_3", RunStatus.RUNNING)),
               "ord_4": lambda: backend.set_status("ord_4", "failed")}

    def engine(info) -> None:  # between the plan and the delete of the batch that holds each run
        calls.append(info.index)
        if len(calls) == 1:
            backend.run(add_run(pw, "ord_new", "completed", NOW, workflow="orders", created=NOW))
        for run_id in set(info.run_ids) & set(changes):
            changes.pop(run_id)()

    cutoff = Expiry(parse_policy(SHORT), NOW, pinned_runs={"misc_pinned"})
    report = backend.retention(batch_size=2).delete_old_runs(cutoff, on_batch=engine)
    assert calls, "no batch"
    after = backend.inventory()
    kept = fate["kept"] | fate["held"] | {"ord_new"}
    # ord_2 was among the 2 newest orders runs until ord_new finished: a store that ranks once before the first
    # batch keeps it this time, DynamoDB (which ranks a workflow when it first meets it) may rank after ord_new
    late = {"ord_2"} - run_ids(after)
    assert run_ids(after) | late == kept, (sorted(run_ids(after) - kept), sorted(kept - run_ids(after)))
    assert not late or backend.name == "dynamodb", late
    assert not changes, f"never in a batch: {sorted(changes)}"
    assert report.runs == len(fate["deleted"] | late) and report.skipped == 0, report.warnings
    assert report.changed == 2, report  # ord_3, ord_4: found changed at the re-check
    assert_no_orphans(after)
    # every run kept lost nothing it had (beyond status index entries its status change rewrote)
    lost = {(i.run_id, i.kind) for i in before if i.run_id in kept - late} - {(i.run_id, i.kind) for i in after}
    assert not {x for x in lost if x[1] not in backend.status_index_kinds}, sorted(lost)
    # ord_new now takes a keep_last place: ord_2 (3 days, the 1-day rule) goes at the next purge, nothing else
    again = backend.retention().delete_old_runs(Expiry(parse_policy(SHORT), NOW, pinned_runs={"misc_pinned"}))
    assert run_ids(backend.inventory()) == kept - {"ord_2"} and again.runs == 1 - len(late), again.warnings
    assert_no_orphans(backend.inventory())


def test_keep_last_ranks_by_instant_whatever_the_offset_created_at_was_written_with(backend: Harness) -> None:
    """Review of issue 21: the newest run of a workflow, its created_at written at UTC-10 (its text sorts below
    runs created hours before it in UTC), keeps its keep_last place on every backend."""
    backend.run(newest_written_at_an_offset(backend.pyworkflow(), 3, NOW - 10 * DAY))
    policy = parse_policy({"retention": {"default": "1d", "keep_last": 1}})
    report = backend.retention().delete_old_runs(Expiry(policy, NOW))
    assert run_ids(backend.inventory()) == {"run_newest"}, report.warnings
