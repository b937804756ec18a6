"""DynamoDB: pyworkflow-engine 0.4.0's single table, purged with boto3.

Options and errors: :class:`DynamoDBBackend`. The design: ``docs/backends/dynamodb.md``.
"""

from .backend import DynamoDBBackend

__all__ = ["DynamoDBBackend"]
