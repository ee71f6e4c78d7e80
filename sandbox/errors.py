"""The seam's typed errors: a runtime failure with a kubelet-style reason.

Part of the seam (``sandbox/backend.py`` re-exports every one of them: the provider imports them
from there); the provider tells them apart by type, never by their text.
"""

from __future__ import annotations


class BackendError(Exception):
    """A runtime failure with a kubelet-style reason (e.g. ErrImagePull)."""

    reason: str = "RuntimeError"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.message = message


class ImagePullError(BackendError):
    reason = "ErrImagePull"


class ImageNeverPullError(BackendError):
    reason = "ErrImageNeverPull"


class InvalidImageNameError(BackendError):
    reason = "InvalidImageName"


class CreateContainerError(BackendError):
    reason = "CreateContainerError"


class RunSandboxError(BackendError):
    reason = "FailedCreatePodSandBox"


class RuntimeUnavailableError(BackendError):
    reason = "ContainerRuntimeUnavailable"


class ContainerStartInProgressError(BackendError):
    """A StartContainer issued earlier (e.g. by a warmlet that was killed mid-call) is still being
    carried out by the runtime: the container must be neither removed nor started again; ask
    again shortly for its outcome (running, or exited)."""

    reason = "ContainerStarting"


class ExecTimeoutError(BackendError):
    """A command run in a container (probe, hook) did not finish within its timeout."""

    reason = "ExecTimeout"


class ContainerNotRunningError(BackendError):
    """The container a command was meant for is not running (or no longer exists)."""

    reason = "ContainerNotRunning"
