"""A ready-made Celery app for deployments without one of their own.

    PYWORKFLOW_CELERY_BROKER=redis://localhost:6379/0 \\
    PYWORKFLOW_DATA_RETENTION_DAYS=30 PYWORKFLOW_RETENTION_STORAGE_URL=sqlite:///var/lib/app/pyworkflow.db \\
    celery -A workflow_retention.worker worker -B

Only the broker, result backend and queue are read at import; the purge
settings are read by the task each time it runs, so a bad value fails that run
loudly instead of stopping the worker from starting.
"""

from __future__ import annotations

from celery import Celery

from workflow_retention.celery import install
from workflow_retention.config import worker_app_config

app = Celery("workflow_retention")
app.conf.update(worker_app_config(), broker_connection_retry_on_startup=True, timezone="UTC", enable_utc=True,
                task_serializer="json", result_serializer="json", accept_content=["json"])
retention_task = install(app)
