"""The Celery task with an archive (issue 20): every batch archived before it is deleted, fail-closed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.celery.test_task import env, expired, seeded  # noqa: F401 - the fixture
from workflow_retention import config
from workflow_retention.archive import open_archive
from workflow_retention.archiving import purges
from workflow_retention.celery import install, run_retention
from workflow_retention.exceptions import ArchiveError, ConfigurationError


def test_the_task_archives_every_run_it_deletes(env: dict[str, str], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                tmp_path: Path) -> None:
    total = seeded(env[config.STORAGE_URL])
    monkeypatch.setenv(config.ARCHIVE_URL, f"file://{tmp_path}")
    result = run_retention(broker_url=None)
    assert result["status"] == "purged" and result["counts"]["runs"] == total > 0
    assert result["archive"]["runs"] == total
    [purge] = purges(open_archive(f"file://{tmp_path}"))
    assert purge["outcome"] == "ok" and purge["runs"] == total


def test_an_unreachable_archive_fails_the_task_and_deletes_nothing(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # noqa: F811
    total = seeded(env[config.STORAGE_URL])
    with pytest.raises(ArchiveError, match="does not exist"):
        run_retention(broker_url=None, archive=f"file://{tmp_path}/missing")
    assert expired(env[config.STORAGE_URL]) == total


def test_an_archive_with_shards_is_refused_before_anything_is_read(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # noqa: F811
    total = seeded(env[config.STORAGE_URL])
    monkeypatch.setenv(config.SHARDS, "4")
    with pytest.raises(ConfigurationError, match="not supported"):
        run_retention(broker_url=None, archive=f"file://{tmp_path}")
    assert expired(env[config.STORAGE_URL]) == total


def test_install_validates_the_archive_url(env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    from celery import Celery

    from workflow_retention.celery import ENTRY_NAME

    app: Any = Celery("t", broker="redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigurationError, match=r"install\(archive=...\)"):
        install(app, archive="ftp://nowhere")
    install(app, archive=f"file://{tmp_path}")
    assert app.conf.beat_schedule[ENTRY_NAME]["kwargs"]["archive"] == f"file://{tmp_path}"
