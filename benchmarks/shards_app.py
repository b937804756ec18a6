"""The Celery app ``benchmarks.shards`` starts its workers with: ``celery -A benchmarks.shards_app worker``.

Broker and result backend: ``BENCH_SHARDS_REDIS`` (a Redis URL; ``benchmarks.shards`` gives it a database of
its own); every task goes to the queue ``BENCH_SHARDS_QUEUE``. The retention task, the shard tasks and their
callback are registered by ``workflow_retention.celery.install(app)``; the store, the retention days and the
fan-out come from the worker's environment (``PYWORKFLOW_RETENTION_STORAGE_URL``,
``PYWORKFLOW_DATA_RETENTION_DAYS``, ``PYWORKFLOW_RETENTION_SHARDS``), set by ``benchmarks.shards`` per purge.
"""

from __future__ import annotations

import os

from celery import Celery

from workflow_retention.celery import install

REDIS = os.environ.get("BENCH_SHARDS_REDIS", "redis://127.0.0.1:6379/13")
QUEUE = os.environ.get("BENCH_SHARDS_QUEUE", "bench-shards")

app = Celery("bench_shards", broker=REDIS, backend=REDIS)
app.conf.update(task_default_queue=QUEUE, worker_prefetch_multiplier=1, result_expires=6 * 3600,
                broker_connection_retry_on_startup=True)
install(app, queue=QUEUE)
