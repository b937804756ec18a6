"""workflow-retention: a safe, batched purge of expired PyWorkflow runs on seven storage backends."""

from workflow_retention.backends import by_url
from workflow_retention.base import StorageBackend
from workflow_retention.exceptions import ConfigurationError, RetentionError, StorageError
from workflow_retention.report import AuditReport, OrphanReport, PurgeReport

__version__ = "0.1.0"

__all__ = [
    "AuditReport", "ConfigurationError", "OrphanReport", "PurgeReport", "RetentionError",
    "StorageBackend", "StorageError", "by_url",
]
