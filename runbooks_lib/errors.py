"""The exceptions of pg-runbooks.

Every message is safe to show as it is: it never holds a password (targets are masked
before they are formatted in) and it says what to do next.
"""

from __future__ import annotations


class RunbookError(Exception):
    """Base class: a problem the runbook explains instead of a traceback."""


class TargetError(RunbookError):
    """The target could not be resolved (missing variable, malformed DSN)."""


class ConnectError(RunbookError):
    """The server could not be reached; `cause` classifies why."""

    def __init__(self, message: str, cause: str = "unknown", sqlstate: str | None = None):
        super().__init__(message)
        self.cause = cause
        self.sqlstate = sqlstate


class ProbeError(RunbookError):
    """A diagnostic query failed in a way that is not a missing privilege or extension."""


class SkipStep(RunbookError):
    """A step cannot run here (no connection, missing privilege or extension): say why."""


class ActionRefused(RunbookError):
    """A changing action was not allowed (allow_actions is off or confirmation missing)."""


class DrillError(RunbookError):
    """A restore drill step failed."""


class SandboxError(RunbookError):
    """The embedded PostgreSQL server could not be started, stopped or found."""
