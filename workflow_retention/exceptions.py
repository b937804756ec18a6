"""The errors workflow-retention raises.

Every error is a :class:`RetentionError`. Driver errors are translated into
:class:`StorageError` and chained with ``from exc`` so the original traceback
is kept.
"""

from __future__ import annotations

from typing import ClassVar


class RetentionError(Exception):
    """Base class of every error raised by workflow-retention."""


class ConfigurationError(RetentionError, ValueError):
    """A setting, URL or argument is invalid.

    The message names the setting and the expected form.
    """


class BackendUnavailableError(RetentionError, ImportError):
    """The driver a backend needs is not installed."""

    def __init__(self, backend: str, extra: str, exc: BaseException | None = None) -> None:
        # The package is on no index: the extra is installed from a checkout or from a wheel built from one.
        super().__init__(
            f"the {backend} backend needs its driver (the '{extra}' extra): pip install '.[{extra}]' in a checkout "
            f"of workflow-retention, or pip install 'workflow_retention-<version>-py3-none-any.whl[{extra}]' from a "
            "built wheel (README, Command line)"
            + (f" ({exc})" if exc else "")
        )


class StorageError(RetentionError):
    """The store failed or rejected an operation (the driver error is chained)."""


class PurgeStopped(RetentionError):
    """A purge stopped at a batch boundary on purpose.

    Raised from an ``on_batch`` callback (for example when the singleton lock's
    lease is lost). ``delete_old_runs`` catches it, records the reason and
    :attr:`outcome` in the report and returns the partial report; everything
    deleted so far is complete, and the next run resumes.
    """

    #: The outcome the run history and the metrics record for a run stopped this way (``failures_total{outcome}``).
    outcome: ClassVar[str] = "stopped"


class LeaseLostError(PurgeStopped):
    """The singleton lock was lost, so this worker must stop deleting."""

    outcome: ClassVar[str] = "lease-lost"


class PinAdded(PurgeStopped):
    """A pin (a legal hold) was added while the purge ran: it stopped before its next batch, so that the next purge
    honours the pin."""

    outcome: ClassVar[str] = "pin-added"


class LockHeldError(RetentionError):
    """Another purge holds the singleton lock."""


class ArchiveError(RetentionError):
    """The archive could not be written, read or verified: nothing of the batch concerned is deleted."""


class MaxRunsReached(RetentionError):
    """A purge stopped at a batch boundary because it would delete more runs than ``PYWORKFLOW_RETENTION_MAX_RUNS``."""
