"""Cassandra backend settings and errors: URL forms, masking, clear failures (the real server where one is needed)."""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from tests.harness.cassandra import CassandraHarness, CassandraServer
from tests.scenario import CUTOFF
from workflow_retention.backends import by_url
from workflow_retention.backends.cassandra import CassandraBackend
from workflow_retention.backends.cassandra.backend import parse_url
from workflow_retention.backends.cassandra.runs import date_buckets, hour_buckets
from workflow_retention.exceptions import BackendUnavailableError, ConfigurationError, StorageError


def test_url_forms() -> None:
    s = parse_url("cassandra://app:s3cr%2Ft@db1,db2:9142/retention?local_dc=eu-west&read_consistency=one"
                  "&write_consistency=QUORUM&protocol_version=4&concurrency=8&request_timeout=12.5")
    assert s.contact_points == ("db1", "db2") and s.port == 9142 and s.keyspace == "retention"
    assert (s.username, s.password, s.local_dc) == ("app", "s3cr/t", "eu-west")
    assert (s.read_consistency, s.write_consistency, s.protocol_version) == ("ONE", "QUORUM", 4)
    assert (s.concurrency, s.request_timeout) == (8, 12.5)
    default = parse_url("cassandra://localhost")
    assert (default.port, default.keyspace, default.protocol_version) == (9042, "pyworkflow", None)
    assert default.read_consistency == default.write_consistency == "LOCAL_QUORUM"
    assert parse_url("cassandra://h1:9043,h2:9043/ks").port == 9043
    assert parse_url("cassandra://[::1]:9042/ks").contact_points == ("::1",)


@pytest.mark.parametrize(("url", "names"), [
    ("cassandra://h/ks?read_consistency=MOST", "read_consistency"),
    ("cassandra://h/ks?serial_consistency=QUORUM", "serial_consistency"),
    ("cassandra://h/ks?protocol_version=2", "protocol_version"),
    ("cassandra://h/ks?protocol_version=v4", "protocol_version"),
    ("cassandra://h/ks?concurrency=0", "concurrency"),
    ("cassandra://h/ks?concurrency=513", "concurrency"),
    ("cassandra://h/ks?request_timeout=0", "request_timeout"),
    ("cassandra://h/ks?connect_timeout=2h", "connect_timeout"),
    ("cassandra://h/ks?colour=blue", "allowed: concurrency"),
    ("cassandra://h/bad-keyspace", "keyspace"),
    ("cassandra://h1:9042,h2:9043/ks", "same port"),
    ("cassandra:///ks", "names no host"),
])
def test_bad_settings_are_named(url: str, names: str) -> None:
    with pytest.raises(ConfigurationError, match=names):
        parse_url(url)


def test_constructor_options_are_validated_like_the_url(caplog: pytest.LogCaptureFixture) -> None:
    from workflow_retention.backends.cassandra import backend as backend_module

    b = CassandraBackend(contact_points="db1", concurrency="8", connect_timeout="90s", protocol_version=4)
    assert b.settings.contact_points == ("db1",)
    assert (b.settings.concurrency, b.settings.connect_timeout, b.settings.protocol_version) == (8, 90.0, 4)
    assert b.url == "cassandra://db1:9042/pyworkflow"
    with pytest.raises(ConfigurationError, match="concurrency"):
        CassandraBackend(concurrency=True)
    with pytest.raises(TypeError, match="colour"):
        CassandraBackend(colour="blue")
    # serial_consistency: accepted (old URLs carry it), ignored, a WARNING once per process
    backend_module._warn_serial_consistency.cache_clear()
    with caplog.at_level(logging.WARNING, logger="workflow_retention.cassandra"):
        for _ in range(2):
            old = by_url("cassandra://h/ks?serial_consistency=local_serial")
    assert isinstance(old, CassandraBackend) and old.settings.serial_consistency == "LOCAL_SERIAL"
    assert len([r for r in caplog.records if "serial_consistency is ignored" in r.getMessage()]) == 1


def test_password_is_masked_everywhere(caplog: pytest.LogCaptureFixture) -> None:
    url = "cassandra://app:hunter2@127.0.0.1:1/ks?connect_timeout=1"
    backend = by_url(url)
    assert isinstance(backend, CassandraBackend)
    assert "hunter2" not in repr(backend) and "hunter2" not in backend.url and "***" in backend.url
    assert "hunter2" not in repr(backend.settings)
    with caplog.at_level(logging.DEBUG), pytest.raises(StorageError) as failure:
        backend.delete_old_runs(datetime.now(UTC))
    assert "hunter2" not in str(failure.value) and "hunter2" not in caplog.text
    assert failure.value.__cause__ is not None  # the driver's NoHostAvailable, chained
    with pytest.raises(ConfigurationError) as bad:
        parse_url("cassandra://app:hunter2@h/ks?x=1")
    assert "hunter2" not in str(bad.value)


def test_a_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cassandra", None)  # ``import cassandra`` now raises ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install '\.\[cassandra\]' in a checkout"):
        by_url("cassandra://localhost/ks")
    # The package imports without the driver: only client.driver() imports it.
    code = ("import sys; sys.modules['cassandra'] = None; "
            "from workflow_retention.backends.cassandra import CassandraBackend; print(CassandraBackend.name)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "cassandra", done.stderr


def test_buckets_cover_every_offset() -> None:
    noon = datetime(2025, 3, 10, 11, 0)
    assert date_buckets(noon) == ["2025-03-09", "2025-03-10", "2025-03-11"]
    assert date_buckets(datetime(2025, 3, 10, 3, 0)) == ["2025-03-09", "2025-03-10"]
    assert date_buckets(datetime(2025, 3, 10, 13, 0)) == ["2025-03-10", "2025-03-11"]
    hours = hour_buckets(datetime(2025, 3, 10, 8, 30))
    assert hours[0] == "2025-03-09-20" and hours[-1] == "2025-03-10-22" and len(hours) == 27


def test_a_missing_keyspace_fails_clearly(cassandra_service: CassandraServer) -> None:
    backend = CassandraBackend.from_url(cassandra_service.url("no_such_keyspace"))
    try:
        with pytest.raises(StorageError, match="no_such_keyspace"):
            backend.delete_old_runs(CUTOFF)
        with pytest.raises(StorageError, match="no_such_keyspace"):
            backend.check()
    finally:
        backend.close()


def test_check_reports_the_cluster_and_rejects_a_foreign_keyspace(cassandra_harness: CassandraHarness) -> None:
    cassandra_harness.pyworkflow()
    facts = cassandra_harness.retention().check()
    assert facts["keyspace"] == cassandra_harness.keyspace and facts["release_version"]
    cassandra_harness.execute("DROP TABLE {ks}.hooks_by_token")
    try:
        with pytest.raises(StorageError, match="layout"):
            cassandra_harness.retention().check()
    finally:
        cassandra_harness.execute('CREATE TABLE {ks}.hooks_by_token ("token" TEXT PRIMARY KEY, run_id TEXT, '
                                  "hook_id TEXT)")


def test_statement_counts_are_kept(cassandra_harness: CassandraHarness) -> None:
    from tests.scenario import OLD, add_run

    cassandra_harness.run(add_run(cassandra_harness.pyworkflow(), "run_one", "completed", OLD))
    backend = cassandra_harness.retention()
    backend.delete_old_runs(CUTOFF - timedelta(0))
    # one commit; its one status row, read and deleted (not blind deletes under all eight statuses)
    assert backend.statements["delete_run"] == 1 and backend.statements["delete_status_row"] == 1
    backend.close()
    assert backend.statements["delete_run"] == 1  # kept across close()
