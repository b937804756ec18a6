"""The Celery app the process tests run: an app of "the user's", plus ``install(app)``.

Each test gets its own broker key prefix and queue, so concurrent test runs on
one Redis never see each other's messages.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from workflow_retention.celery import install


def make_app(broker: str, prefix: str, queue: str) -> Any:
    app = Celery("wr_test")
    app.conf.update(
        broker_url=broker,
        result_backend=broker,
        broker_transport_options={"global_keyprefix": prefix},
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=1,
        result_expires=600,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
    )
    install(app)
    return app
