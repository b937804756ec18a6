"""A bad archive setting is refused before the store is opened, even when the policy must measure the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from workflow_retention import cli, config


def test_a_bad_archive_url_is_refused_before_a_pressure_policy_opens_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PYWORKFLOW_RETENTION_STORAGE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    monkeypatch.delenv("PYWORKFLOW_RETENTION_ARCHIVE_URL", raising=False)
    assert cli.main(["seed", "--runs", "5"]) == 0
    policy = tmp_path / "policy.toml"
    policy.write_text('[retention]\ndefault = "60d"\n[retention.pressure]\ndefault = "35d"\nsize_above = "1B"\n')
    monkeypatch.setenv(config.POLICY, str(policy))

    def opened(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the store was opened before the archive setting was checked")

    monkeypatch.setattr(cli, "_backend", opened)
    assert cli.main(["purge", "--archive", "file://relative/dir"]) == 2
    assert "--archive" in caplog.text


def test_an_archive_with_shards_is_refused_before_a_pressure_policy_opens_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PYWORKFLOW_RETENTION_STORAGE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    policy = tmp_path / "policy.toml"
    policy.write_text('[retention]\ndefault = "60d"\n[retention.pressure]\ndefault = "35d"\nsize_above = "1B"\n')
    monkeypatch.setenv(config.POLICY, str(policy))
    (tmp_path / "archive").mkdir()

    def opened(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the store was opened before the archive and --shards were checked")

    monkeypatch.setattr(cli, "_backend", opened)
    assert cli.main(["purge", "--shards", "2", "--archive", f"file://{tmp_path / 'archive'}"]) == 2
    assert "--shards" in caplog.text
