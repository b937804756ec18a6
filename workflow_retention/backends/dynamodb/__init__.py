"""DynamoDB: pyworkflow-engine 0.4.0's single table, purged with boto3.

URL: ``dynamodb://TABLE?region=us-east-1[&endpoint_url=http://host:port]
[&max_wcu_per_second=N][&retry_deadline=60s][&timeout=30s]``. Credentials come
from the standard AWS chain only; a URL carrying any is refused.

The design (discovery on GSI1 and its gaps, the purge marker and the
conditional delete that commits a run, the cascade, the one Scan for
checkpoints and stream data, concurrent purges, ghosts under a live engine,
retries and timeouts) is written once, in ``docs/backends/dynamodb.md``.
Modules: ``backend`` (settings, checks, seeding), ``purge`` (selection,
commit, cascade, markers), ``sweeps`` (the purge's Scan, schedules),
``orphans`` (orphan sweep, census), ``runs``, ``layout``, ``expr``, ``client``.
"""

from .backend import DynamoDBBackend

__all__ = ["DynamoDBBackend"]
