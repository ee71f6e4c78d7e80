"""Resident memory and CPU time of a process, from /proc (the node process of a benchmark).

``VmRSS``/``VmHWM`` of /proc/<pid>/status (kB; VmHWM is the peak resident set since the process
started) and ``utime + stime`` of /proc/<pid>/stat. :class:`PeakTracker` keeps the highest RSS seen
while sampling, next to the kernel's own high-water mark.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcSample:
    """One reading of a process's memory and CPU time."""

    at: float
    rss_kb: int
    hwm_kb: int
    cpu_seconds: float


def parse_status_kb(text: str, field_name: str = "VmRSS") -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM, ...); 0 when absent."""
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            parts = line.split()
            return int(parts[1]) if len(parts) >= 2 else 0
    return 0


def parse_stat_cpu_seconds(text: str, ticks_per_second: int = 100) -> float:
    """utime + stime of /proc/<pid>/stat in seconds (the comm field may contain spaces)."""
    rest = text[text.rindex(")") + 2 :].split()
    # after "pid (comm) ": state is field 3, so utime (field 14) is rest[11] and stime rest[12]
    return (int(rest[11]) + int(rest[12])) / ticks_per_second


def sample(pid: int) -> ProcSample:
    ticks = os.sysconf("SC_CLK_TCK")
    status = Path(f"/proc/{pid}/status").read_text()
    stat = Path(f"/proc/{pid}/stat").read_text()
    return ProcSample(
        at=time.monotonic(),
        rss_kb=parse_status_kb(status, "VmRSS"),
        hwm_kb=parse_status_kb(status, "VmHWM"),
        cpu_seconds=parse_stat_cpu_seconds(stat, ticks),
    )


@dataclass
class PeakTracker:
    """The first sample and the highest resident set seen since, of one process."""

    pid: int
    first: ProcSample
    peak_rss_kb: int = 0

    @classmethod
    def start(cls, pid: int) -> PeakTracker:
        s = sample(pid)
        return cls(pid, s, s.rss_kb)

    def poll(self) -> ProcSample:
        s = sample(self.pid)
        self.peak_rss_kb = max(self.peak_rss_kb, s.rss_kb)
        return s

    def peak_kb(self, last: ProcSample) -> int:
        """The peak resident set: the kernel's high-water mark or the highest sample, whichever is higher."""
        return max(last.hwm_kb, self.peak_rss_kb, last.rss_kb)
