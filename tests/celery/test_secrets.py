"""No password in any output: every URL form, every scheme, every command, the Python API and a real worker.

The password holds the characters that defeat ``urlsplit`` (``#``, ``/``, ``?``);
each of its pieces is looked for too, since a parser error quotes what it read
up to the first of them (``Port could not be cast to integer value as 'Pg5'``).
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.celery.conftest import CeleryEnv, wait_until
from tests.services import clear_retention_env
from workflow_retention import cli
from workflow_retention.backends import by_url

PASSWORD = "Pg5#Zq9/Wx7?Vb3"
PIECES = [PASSWORD, "Pg5", "Zq9", "Wx7", "Vb3", "Zq9%2FWx7"]
P = PASSWORD
# Closed ports (1) so that the forms a parser accepts fail fast at connection time.
STORAGE_URLS = [
    f"postgresql://app:{P}@127.0.0.1:1/test",
    f"postgresql://app@127.0.0.1:1/test?password={P}",
    f"postgresql://app@127.0.0.1:1/test?sslpassword={P}",
    f"postgresql:/app:{P}@127.0.0.1:1/test",
    f"postgresql//app:{P}@127.0.0.1:1/test",
    f"mysql://app:{P}@127.0.0.1:1/test",
    f"mysql://app@127.0.0.1:1/test?password={P}",
    f"mysql:/app:{P}@127.0.0.1:1/test",
    f"mysql//app:{P}@127.0.0.1:1/test",
    f"cassandra://app:{P}@127.0.0.1:1/ks",
    f"cassandra://app@127.0.0.1:1/ks?password={P}",
    f"cassandra:/app:{P}@127.0.0.1:1/ks",
    f"sqlite://app:{P}@/tmp/wr-secret.db",
    f"sqlite:///tmp/wr-secret.db?password={P}",
    f"memory://app:{P}@name",
    f"memory://name?password={P}",
    f"file://app:{P}@/tmp/wr-secret",
    f"dynamodb://app:{P}@table",
    f"dynamodb://table?region=us-east-1&password={P}",
]
LOCK_URLS = [f"redis://:{P}@127.0.0.1:1/0", f"unix:///tmp/wr-secret.sock?db=0&password={P}",
             f"redis:/:{P}@127.0.0.1:1/0"]
COMMANDS = [["check"], ["purge", "--days", "30"], ["purge", "--days", "30", "--dry-run"],
            ["audit", "--days", "30"], ["orphans", "--dry-run"], ["seed", "--runs", "1"],
            ["metrics", "--days", "30"], ["status"], ["status", "--json"]]


def leaks(text: str) -> list[str]:
    return [piece for piece in PIECES if piece in text]


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_retention_env(monkeypatch)


@pytest.mark.parametrize("url", STORAGE_URLS)
def test_no_command_prints_the_password_of_a_storage_url(url: str, monkeypatch: pytest.MonkeyPatch,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    _clean_env(monkeypatch)
    for command in COMMANDS:
        for via_env in (False, True):
            if via_env:
                monkeypatch.setenv("PYWORKFLOW_RETENTION_STORAGE_URL", url)
                argv = ["-v", *command]
            else:
                monkeypatch.delenv("PYWORKFLOW_RETENTION_STORAGE_URL", raising=False)
                argv = ["-v", *command, "--storage", url]
            code = cli.main(argv)
            out, err = capfd.readouterr()
            assert not leaks(out + err), (argv, out, err)
            assert code in (1, 2), (argv, code, out, err)  # each of these URLs fails, loudly
            assert "ERROR" in err


@pytest.mark.parametrize("url", LOCK_URLS)
def test_check_never_prints_the_password_of_a_lock_or_broker_url(url: str, monkeypatch: pytest.MonkeyPatch,
                                                                 capfd: pytest.CaptureFixture[str]) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("PYWORKFLOW_RETENTION_LOCK_URL", url)
    monkeypatch.setenv("PYWORKFLOW_CELERY_BROKER", url.replace("/0", "/1"))
    monkeypatch.setenv("PYWORKFLOW_CELERY_RESULT_BACKEND", url.replace("/0", "/2"))
    cli.main(["-v", "check", "--storage", "memory://"])
    out, err = capfd.readouterr()
    assert not leaks(out + err), (out, err)


@pytest.mark.parametrize("url", LOCK_URLS)
@pytest.mark.parametrize("command", [["check"], ["status"], ["status", "--json"], ["purge", "--days", "30"],
                                     ["orphans"], ["metrics", "--days", "30"]])
def test_history_and_metrics_never_print_the_password_of_a_state_or_lock_url(
        url: str, command: list[str], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """The state store (history) and the lock are unreachable: the ERROR lines and the tables stay clean."""
    _clean_env(monkeypatch)
    monkeypatch.setenv("PYWORKFLOW_RETENTION_STATE_URL", url)
    monkeypatch.setenv("PYWORKFLOW_RETENTION_LOCK_URL", url.replace("/0", "/1"))
    monkeypatch.setenv("PYWORKFLOW_RETENTION_PUSHGATEWAY_URL", f"http://gw:{P.replace('#', '%23')}@127.0.0.1:1")
    code = cli.main(["-v", *command, "--storage", "memory://secrets"])
    out, err = capfd.readouterr()
    assert not leaks(out + err), (command, out, err)
    assert "ERROR" in err, (command, err)
    # status/metrics fail: unreachable (1) or malformed, named (2); a purge's own outcome stays its own (0)
    assert code in ((0, 1, 2) if command[0] in ("purge", "orphans") else (1, 2)), (command, code, err)
    if command == ["check"]:
        assert "run history: FAILED" in out or "configuration error" in err, (out, err)


@pytest.mark.parametrize("url", STORAGE_URLS)
def test_the_python_api_never_shows_the_password(url: str) -> None:
    try:
        backend = by_url(url)
    except Exception as exc:
        text = str(exc) + repr(exc) + "".join(traceback.format_exception(exc))
        assert not leaks(text), text
        return
    try:
        assert not leaks(repr(backend) + str(backend.url))
        with pytest.raises(Exception) as caught:
            backend.check()
        text = str(caught.value) + "".join(traceback.format_exception(caught.value))
        assert not leaks(text), text
    finally:
        backend.close()


@pytest.fixture
def redis_values(celery_env: CeleryEnv) -> Iterator[Any]:
    def dump() -> str:
        client = celery_env.redis()
        values = []
        for key in client.scan_iter(match="*celery-task-meta-*", count=1000):
            values.append(client.get(key).decode(errors="replace"))
        return "\n".join(values)

    yield dump


@pytest.mark.slow
def test_a_real_worker_never_shows_the_password(celery_env: CeleryEnv, redis_values: Any, tmp_path: Path) -> None:
    """The task fails on each secret-bearing setting; its log, result and traceback in Redis stay clean."""
    cases = [{"PYWORKFLOW_RETENTION_STORAGE_URL": url} for url in STORAGE_URLS[:13:3]]
    cases += [{"PYWORKFLOW_RETENTION_STORAGE_URL": "memory://", "PYWORKFLOW_RETENTION_LOCK_URL": url}
              for url in LOCK_URLS]
    client = celery_env.client()
    worker = None
    for n, case in enumerate(cases):
        env = celery_env.env(case["PYWORKFLOW_RETENTION_STORAGE_URL"], **case)
        if worker is not None:
            worker.stop()
        worker = celery_env.worker(env)
        worker.wait_for(r"ready\.", timeout=60)
        result = client.send_task("workflow_retention.run_retention", queue=celery_env.queue)
        wait_until(result.ready, 60, f"case {n} to finish")
        assert result.failed(), (case, result.result)
        meta = redis_values()
        assert meta, "the result backend stored nothing"
        assert not leaks(meta), (case, meta)
        assert not leaks(str(result.result) + str(result.traceback)), case
    assert worker is not None
    worker.stop()
    for proc in celery_env.procs:
        assert not leaks(proc.output()), proc.output()[-3000:]
