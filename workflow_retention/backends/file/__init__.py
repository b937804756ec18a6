"""The file backend: pyworkflow-engine 0.4.0's ``FileStorageBackend`` directory, purged in place.

Options and errors: :class:`FileBackend`. The design: ``docs/backends/file.md``.
"""

from workflow_retention.backends.file.backend import FileBackend

__all__ = ["FileBackend"]
