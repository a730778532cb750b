"""Errors raised by the ``upgrader`` package.

One root (``UpgraderError``) so callers (the CLI, the dashboard, services) can catch everything the
domain raises, and subclasses named after the condition. Messages are one line: the problem and the fix.
This module must stay importable without torch (the server side imports it).
"""

from __future__ import annotations


class UpgraderError(Exception):
    """Root of every error the ``upgrader`` package raises on purpose.

    Args:
        message: the problem and the remedy, in the domain's words (no CLI flags: the package is
            used by the dashboard, the HTTP server and Python callers too).
        subject: which input or state the remedy is about (e.g. ``"num_classes"``, ``"workspace"``),
            so a front end can name its own control for it (the CLI adds the flag or the command).
    """

    def __init__(self, message: str = "", *, subject: str | None = None) -> None:
        super().__init__(message)
        self.subject = subject


class DataError(UpgraderError):
    """Input data is missing, corrupt, empty or inconsistent (images vs labels, unknown classes)."""


class ModelError(UpgraderError):
    """An architecture name or model configuration that cannot be built."""


class CheckpointError(UpgraderError):
    """A checkpoint file is missing, corrupt, or does not match what the caller needs."""


class TrainingError(UpgraderError):
    """A training request that cannot run (bad config, mismatched anchor, empty data)."""


class TrainingCancelled(UpgraderError):
    """Training was stopped through its cancel event; nothing was written."""


class ExportError(UpgraderError):
    """ONNX export failed or produced an artifact that did not match PyTorch; nothing was written."""


class ArtifactError(UpgraderError):
    """An ONNX artifact is missing, corrupt, lacks metadata, or was given images of the wrong shape."""


# ---- services: workspaces, the gate, promotion ------------------------------------------------


class WorkspaceError(UpgraderError):
    """No workspace where one was expected, one already where a new one was asked for, or a bad one."""


class InterfaceMismatch(UpgraderError):
    """A generation or artifact built for another K / embedding dim than the workspace's interface."""


class NoProduction(UpgraderError):
    """An operation needs a production generation and there is none yet."""


class GateRefused(UpgraderError):
    """The compatibility gate refused a promotion or rollback (the CLI exits with code 3).

    Attributes:
        report_id: the stored gate report that explains the refusal.
    """

    def __init__(self, message: str, report_id: int | None = None) -> None:
        super().__init__(message, subject="gate")
        self.report_id = report_id


class InvalidRequest(UpgraderError):
    """Arguments that contradict each other or the workspace (a usage error: CLI exit code 2)."""


class RequestRefused(InvalidRequest):
    """A request refused by one named check, with the values its message quotes.

    ``reason`` names the check (the training plan's ``epochs``, ``initial-with-parent``,
    ``finetune-arch``, ``replacement-arch``, ``init-weights``, ``name-taken``; removal's
    ``has-gallery-items``) and ``details`` holds the values the message quotes, so a UI can say the same
    in its own words; ``subject`` is the input at fault.
    """

    def __init__(self, message: str, reason: str, *, subject: str, **details: str) -> None:
        super().__init__(message, subject=subject)
        self.reason = reason
        self.details = details
