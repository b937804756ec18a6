"""The shard contract's shared parts: shards and their validation, hash ranges, merging, cursors, settings."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from workflow_retention import config
from workflow_retention.backends.memory import MemoryBackend, MemoryStore
from workflow_retention.base import MAX_SHARDS, Shard
from workflow_retention.exceptions import ConfigurationError, PurgeStopped
from workflow_retention.report import PurgeReport
from workflow_retention.seed import generate
from workflow_retention.shards import hash_shards, in_hash_shard, merge_reports, report_from_dict

NOW = datetime.now(UTC).replace(microsecond=0)
CUTOFF = NOW - timedelta(days=30)


def test_hash_shards_are_disjoint_cover_every_id_and_are_balanced() -> None:
    plan = hash_shards(4)
    ids = [f"run_{i:06x}" for i in range(4000)] + ["sched_x:nightly_1", "a", "run_\u00e9"]
    owners = Counter(sum(1 for s in plan if in_hash_shard(s, run_id)) for run_id in ids)
    assert owners == {1: len(ids)}
    sizes = Counter(next(s.index for s in plan if in_hash_shard(s, r)) for r in ids)
    assert min(sizes.values()) > 0.8 * len(ids) / 4
    assert plan[0].spec["from"] == 0 and plan[-1].spec["to"] == 1 << 32


@pytest.mark.parametrize("bad", [{"index": 4, "count": 4}, {"index": 0, "count": 0}, {"count": 2}, "0/4",
                                 {"index": 0, "count": MAX_SHARDS + 1}, {"index": 0, "count": 2, "spec": []}])
def test_a_malformed_shard_is_a_configuration_error(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="a shard must be"):
        Shard.from_dict(bad)


@pytest.mark.parametrize("n", [0, -1, MAX_SHARDS + 1, "four", True])
def test_shards_n_is_validated(n: object) -> None:
    with pytest.raises(ConfigurationError, match="must be an integer from 1 to 1024"):
        MemoryBackend(MemoryStore()).shards(n)  # type: ignore[arg-type]


def test_a_backend_without_the_capability_is_one_shard_and_refuses_a_part() -> None:
    backend = MemoryBackend(MemoryStore())
    assert backend.shards(8) == [Shard.whole()]
    with pytest.raises(ConfigurationError, match="cannot be sharded"):
        backend.delete_old_runs(CUTOFF, shard=Shard(1, 4, {}))
    with pytest.raises(ConfigurationError, match="resume_after must be a cursor string"):
        backend.delete_old_runs(CUTOFF, resume_after=7)  # type: ignore[arg-type]


def test_memory_reports_its_cursor_and_resumes_after_it_without_redoing_a_batch() -> None:
    store = MemoryStore()
    backend = MemoryBackend(store, batch_size=10)
    backend.seed(generate(200, now=NOW, seed=5, child_share=0.0))
    total = backend.delete_old_runs(CUTOFF, dry_run=True).runs
    cursors: list[tuple[str, int]] = []
    first: list[str] = []

    def stop(info) -> None:
        if info.index > 3:
            raise PurgeStopped("injected")
        first.extend(info.run_ids)

    stopped = backend.delete_old_runs(CUTOFF, on_batch=stop,
                                      on_cursor=lambda cursor, report: cursors.append((cursor, report.runs)))
    assert stopped.stopped and cursors and cursors[-1][1] == stopped.runs
    later: list[str] = []
    rest = backend.delete_old_runs(CUTOFF, resume_after=cursors[-1][0], on_batch=lambda i: later.extend(i.run_ids))
    assert not set(first) & set(later)
    assert stopped.runs + rest.runs == total
    assert all(run_id > cursors[-1][0] for run_id in later)


def part(runs: int, held: int, skipped: int = 0, **counts: int) -> PurgeReport:
    report = PurgeReport(backend="file:///s", dry_run=False, cutoff=CUTOFF, counts=Counter(runs=runs, **counts),
                         held=held, skipped=skipped, batches=2, changed=1, duration_s=1.5)
    for i in range(skipped):
        report.warn(f"record {i} left alone")
    return report


def test_merge_adds_counts_and_takes_holds_and_skips_from_the_final_pass() -> None:
    parts = [part(3, 1, 1, events=9), part(2, 0, 1, events=6)]
    final = part(1, 2, 1, events=3)
    merged = merge_reports(parts, final, backend="file:///s", cutoff=CUTOFF, duration_s=2.0)
    assert dict(merged.counts) == {"runs": 6, "events": 18}
    assert (merged.held, merged.skipped, merged.changed, merged.batches) == (2, 1, 3, 6)
    assert merged.warnings == ["record 0 left alone"] and merged.duration_s == 2.0
    alone = merge_reports(parts, None, backend="file:///s", cutoff=CUTOFF)
    assert (alone.held, alone.skipped, alone.duration_s) == (1, 2, 1.5)


def test_a_report_survives_its_json_form() -> None:
    import json

    original = part(4, 1, 2, events=12)
    original.started_at = NOW
    back = report_from_dict(json.loads(original.to_json()))
    assert back.to_dict() == original.to_dict()


def test_the_shards_setting_is_validated_and_named() -> None:
    base = {config.STORAGE_URL: "memory://"}
    assert config.load_settings(base).shards == 1
    assert config.load_settings({**base, config.SHARDS: "8"}).shards == 8
    with pytest.raises(ConfigurationError, match="PYWORKFLOW_RETENTION_SHARDS must be an integer from 1 to 1024"):
        config.load_settings({**base, config.SHARDS: "0"})
    lenient = config.load_settings({**base, config.SHARDS: "many"}, strict=False)
    assert lenient.shards == 1 and any(config.SHARDS in p for p in lenient.problems)


def test_install_validates_shards_and_puts_them_on_the_beat_entry() -> None:
    from celery import Celery

    from workflow_retention.celery import ENTRY_NAME, FINISH_TASK_NAME, SHARD_TASK_NAME, install

    app = Celery("wr_unit_shards", set_as_current=False)
    with pytest.raises(ConfigurationError, match=r"install\(shards=...\) must be an integer"):
        install(app, shards=0)
    install(app, shards=4)
    entry = app.conf.beat_schedule[ENTRY_NAME]
    assert entry["kwargs"]["shards"] == 4
    assert {SHARD_TASK_NAME, FINISH_TASK_NAME} <= set(app.tasks)
    assert app.tasks[SHARD_TASK_NAME].acks_late and app.tasks[SHARD_TASK_NAME].reject_on_worker_lost
