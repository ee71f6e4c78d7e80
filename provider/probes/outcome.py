"""What one run of a probe handler found (kubelet's probe.Result, output, error)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

MAX_OUTPUT = 10 * 1024  # kubelet keeps at most 10 KiB of an exec output or an HTTP body


class ProbeResult(Enum):
    SUCCESS = "success"
    WARNING = "warning"  # success, with a Warning event (e.g. redirect to another host)
    FAILURE = "failure"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Outcome:
    result: ProbeResult
    output: str = ""
    error: str = ""  # set: the probe errored (kubelet: err != nil), its result does not change

    @property
    def errored(self) -> bool:
        return bool(self.error)


def go_duration(seconds: float) -> str:
    """Go's time.Duration String() for whole or fractional seconds below an hour: 1s, 1m30s."""
    if seconds < 60:
        return f"{seconds:g}s"
    m, s = divmod(seconds, 60)
    return f"{int(m)}m{s:g}s"
