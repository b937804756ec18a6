"""``celery -A tests.celery.testapp``: the test app, configured by the test through the environment.

Only worker processes import this module: it registers the test-only
``faulty+<url>`` backend (see :mod:`tests.celery.faulty`) in their registry.
"""

import os

from tests.celery.appfactory import make_app
from tests.celery.faulty import TARGET
from workflow_retention.backends import BACKENDS

BACKENDS["faulty"] = TARGET

app = make_app(os.environ["TEST_CELERY_BROKER"], os.environ["TEST_CELERY_PREFIX"], os.environ["TEST_CELERY_QUEUE"])
