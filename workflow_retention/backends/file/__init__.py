"""The file backend (pyworkflow-engine's FileStorageBackend layout); see :mod:`.backend`."""

from workflow_retention.backends.file.backend import FileBackend

__all__ = ["FileBackend"]
