"""The README's "Add to an existing Celery deployment" code, pasted into a fresh app as a new user would."""

from __future__ import annotations

import re
import shelve
import textwrap
from pathlib import Path

import pytest

from tests.celery.conftest import ROOT, CeleryEnv, expired_runs, seed_store, wait_until
from workflow_retention.backends import by_url
from workflow_retention.celery import ENTRY_NAME, PYWORKFLOW_ENTRY
from workflow_retention.config import lock_key_for

pytestmark = pytest.mark.slow

#: Where the section lives.
SOURCE = ROOT / "README.md"
HEADING = "## Add to an existing Celery deployment"

APPS = {
    "plain-celery-app": """
        import os
        from celery import Celery

        app = Celery("freshapp", broker=os.environ["FRESH_BROKER"])
        app.conf.update(task_default_queue=os.environ["FRESH_QUEUE"],
                        broker_transport_options={"global_keyprefix": os.environ["FRESH_PREFIX"]})
    """,
    "pyworkflow-engine-app": """
        import os
        from pyworkflow.celery.app import create_celery_app

        app = create_celery_app(broker_url=os.environ["FRESH_BROKER"])
        app.conf.broker_transport_options = {**app.conf.broker_transport_options,
                                             "global_keyprefix": os.environ["FRESH_PREFIX"]}
    """,
}


def readme_snippet() -> str:
    text = SOURCE.read_text()
    section = text[text.index(HEADING):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_snippet_is_short() -> None:
    code = [line for line in readme_snippet().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(code) <= 3, code


@pytest.mark.parametrize("kind", sorted(APPS))
def test_the_readme_snippet_works_in_a_fresh_app(celery_env: CeleryEnv, tmp_path: Path, kind: str) -> None:
    url = f"sqlite://{tmp_path / 'pyworkflow.db'}"
    total = seed_store(url)
    (tmp_path / "freshapp.py").write_text(textwrap.dedent(APPS[kind]) + "\n" + readme_snippet())
    queue = "pyworkflow.default" if kind.startswith("pyworkflow") else celery_env.queue
    env = celery_env.env(url, PYTHONPATH=f"{tmp_path}:{ROOT}", FRESH_BROKER=celery_env.redis_url,
                         FRESH_QUEUE=queue, FRESH_PREFIX=celery_env.prefix, PYWORKFLOW_RETENTION_SCHEDULE="2s")
    for name in ("PYWORKFLOW_RETENTION_LOCK_KEY", "PYWORKFLOW_RETENTION_BATCH_SIZE"):
        env.pop(name)  # as a user would run it: the defaults (lock in the broker's Redis)
    worker = celery_env.worker(env, app="freshapp", queue=queue, beat=True)
    worker.wait_for(rf'workflow-retention summary status="purged" .* runs={total} ')
    backend = by_url(url)
    with backend:
        assert expired_runs(backend) == 0
    key = lock_key_for(url)
    lock = celery_env.redis()
    wait_until(lambda: lock.exists(f"{key}:done"), 10, "the completion marker")
    worker.stop()
    lock.delete(f"{key}:done")
    with shelve.open(str(tmp_path / f"{worker.name}-schedule"), flag="r") as schedule:
        assert ENTRY_NAME in schedule["entries"]
        assert PYWORKFLOW_ENTRY not in schedule["entries"]
