"""Unreadable timestamps never stop a purge, an orphan sweep or an audit: the item is kept and reported.

``9999-12-31T23:59:59-14:00`` and ``0001-01-01T00:00:00+14:00`` parse but have
no UTC instant (year 10000, year 0); ``garbage`` does not parse at all. A
missing time is different: an orphan with no write time has no grace period
to honour, but an orphan whose write time cannot be read might be young.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.conformance.checks import items_of, run_ids, snapshot
from tests.harness.dynamodb import DynamoDBHarness
from tests.scenario import CUTOFF, OLD, add_run
from workflow_retention.report import Kind

POISON = ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "garbage"]


def _set(h: DynamoDBHarness, pk: str, sk: str, **values: str) -> None:
    names = {f"#a{n}": name for n, name in enumerate(values)}
    h.client.update_item(TableName=h.table, Key={"PK": {"S": pk}, "SK": {"S": sk}},
                         UpdateExpression="SET " + ", ".join(f"{n} = :v{i}" for i, n in enumerate(names)),
                         ExpressionAttributeNames=names,
                         ExpressionAttributeValues={f":v{i}": {"S": v} for i, v in enumerate(values.values())})


def _poisoned_purge_store(h: DynamoDBHarness, bad: str) -> set[tuple[str, str]]:
    """An expired run, stream items and a soft-deleted schedule, all with an unreadable time; their keys."""
    from pyworkflow.storage.schemas import Schedule, ScheduleSpec

    pw = h.pyworkflow()
    h.run(add_run(pw, "run_ok", "completed", OLD))
    h.run(add_run(pw, "run_poison", "completed", OLD))
    _set(h, "RUN#run_poison", "#METADATA", updated_at=bad)
    old = OLD.isoformat()
    h.put(PK="STREAM_RUN#srun_p", SK="SIGNAL#00000001", signal_id="sig_p", published_at=bad)
    h.put(PK="STREAMSUB#stream_p", SK="STEP#sstep_p", status="completed", created_at=bad)
    h.put(PK="SIGACK#sig_p", SK="STEP#sstep_p", acknowledged_at=bad)
    h.put(PK="STREAM_RUN#srun_ok", SK="SIGNAL#00000001", signal_id="sig_ok", published_at=old)
    h.run(pw.create_schedule(Schedule(schedule_id="sched_p", workflow_name="w", spec=ScheduleSpec(cron="0 3 * * *"),
                                      created_at=OLD, updated_at=OLD)))
    with h.frozen(OLD):
        h.run(pw.delete_schedule("sched_p"))
    _set(h, "SCHEDULE#sched_p", "#METADATA", updated_at=bad)
    return {("RUN#run_poison", "#METADATA"), ("STREAM_RUN#srun_p", "SIGNAL#00000001"),
            ("STREAMSUB#stream_p", "STEP#sstep_p"), ("SIGACK#sig_p", "STEP#sstep_p"), ("SCHEDULE#sched_p", "#METADATA")}


def _keys(h: DynamoDBHarness) -> set[tuple[str, str]]:
    return {(i["PK"]["S"], i["SK"]["S"]) for i in h.scan()}


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry", "real"])
@pytest.mark.parametrize("bad", POISON)
def test_the_purge_keeps_and_reports_every_item_whose_time_it_cannot_read(
        dynamodb_harness: DynamoDBHarness, bad: str, dry_run: bool) -> None:
    h = dynamodb_harness
    poisoned = _poisoned_purge_store(h, bad)
    kept = items_of(h.inventory(), {"run_poison"})
    report = h.retention().delete_old_runs(CUTOFF, dry_run=dry_run)
    assert report.runs == 1 and report.counts[Kind.SIGNALS] == 1
    assert report.skipped == len(poisoned), report.warnings
    for pk, _ in poisoned:
        assert any(pk.split("#", 1)[1] in w for w in report.warnings), (pk, report.warnings)
    assert poisoned <= _keys(h)
    assert items_of(h.inventory(), {"run_poison"}) == kept
    if not dry_run:
        assert run_ids(h.inventory()) == {"run_poison"}


def _poisoned_orphans(h: DynamoDBHarness, bad: str) -> int:
    """Orphans (their runs do not exist) whose write time cannot be read; returns how many items."""
    from workflow_retention.backends.dynamodb.layout import marker_key

    h.put(PK="RUN#run_gone", SK="EVENT#00000", run_id="run_gone", timestamp=bad)
    h.put(PK="RUN#run_gone", SK="#EVENT_COUNTER", seq=1)  # follows the event: unreadable too
    h.put(PK="RUN#run_gone", SK="STEP#s1", run_id="run_gone", created_at=bad)
    h.put(PK="HOOK#run_gone#h1", SK="#METADATA", run_id="run_gone", token="run_gone:h1", created_at=bad)
    h.put(PK="TOKEN#run_gone:h1", SK="HOOK#run_gone#h1", run_id="run_gone")  # follows its hook
    h.put(PK="CANCEL#run_gone", SK="#FLAG", run_id="run_gone", created_at=bad)
    h.put(PK="CHECKPOINT#run_gone:step_1", SK="#DATA", created_at=OLD.isoformat(), updated_at=bad)
    marker = marker_key("run_gone")
    h.put(PK=marker["PK"]["S"], SK=marker["SK"]["S"], run_id="run_gone", created_at=bad)
    h.put(PK="HOOK#nobody#h2", SK="#METADATA", created_at=OLD.isoformat())  # no run_id: cannot tell whose
    return 9


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry", "real"])
@pytest.mark.parametrize("bad", POISON)
def test_the_orphan_sweep_keeps_and_reports_orphans_whose_time_it_cannot_read(
        dynamodb_harness: DynamoDBHarness, bad: str, dry_run: bool) -> None:
    h = dynamodb_harness
    pw = h.pyworkflow()
    h.run(add_run(pw, "run_alive", "completed", OLD))
    _set(h, "RUN#run_alive", "#METADATA", updated_at=bad)  # not an orphan: not reported by the sweep
    poisoned = _poisoned_orphans(h, bad)
    h.put(PK="RUN#run_gone_ok", SK="EVENT#00000", run_id="run_gone_ok", timestamp=OLD.isoformat())
    before = snapshot(h.inventory())
    report = h.retention().sweep_orphans(grace=timedelta(hours=1), dry_run=dry_run)
    assert dict(report.counts) == {Kind.EVENTS: 1}
    assert report.skipped == poisoned, report.warnings
    after = snapshot(h.inventory())
    assert {k: v for k, v in before.items() if "run_gone_ok" not in k[1]} == \
        {k: v for k, v in after.items() if "run_gone_ok" not in k[1]}


@pytest.mark.parametrize("bad", POISON)
def test_an_audit_of_a_poisoned_store_completes_and_reports(dynamodb_harness: DynamoDBHarness, bad: str) -> None:
    h = dynamodb_harness
    _poisoned_purge_store(h, bad)
    _poisoned_orphans(h, bad)
    before = snapshot(h.inventory())
    audit = h.retention().audit(older_than=CUTOFF, grace=timedelta(0))
    assert audit.census.runs_by_status["completed"] == 2
    assert audit.purge is not None and audit.purge.runs == 1 and audit.purge.skipped == 5
    assert audit.orphans.skipped == 9
    assert snapshot(h.inventory()) == before
