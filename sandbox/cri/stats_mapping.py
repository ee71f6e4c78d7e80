"""Pure mapping of usage figures: CRI ContainerStats to the seam's ContainerUsage, and the /proc
files the node's and pods' stats are read from (the way kubelet's cAdvisor reads them).

Split from :mod:`sandbox.cri.mapping` (configs, labels, status) by concern; no I/O, unit tested in
tests/unit/test_cri_mapping.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from proto import cri_pb2 as pb
from sandbox.backend import ContainerUsage
from sandbox.cri.mapping import K8S_CONTAINER_NAME


def container_usage_from_stats(
    s: pb.ContainerStats, start_time: float = 0.0, log_bytes: int = 0
) -> ContainerUsage | None:
    """None for stats without cpu/memory (an exited container): kubelet leaves those out."""
    if not s.HasField("cpu") and not s.HasField("memory"):
        return None
    ts = max(s.cpu.timestamp, s.memory.timestamp)
    return ContainerUsage(
        name=s.attributes.metadata.name or s.attributes.labels.get(K8S_CONTAINER_NAME, ""),
        container_id=s.attributes.id,
        start_time=start_time,
        timestamp=ts / 1e9 if ts else 0.0,
        cpu_usage_core_nanoseconds=s.cpu.usage_core_nano_seconds.value,
        cpu_usage_nano_cores=s.cpu.usage_nano_cores.value,
        memory_working_set_bytes=s.memory.working_set_bytes.value,
        memory_usage_bytes=s.memory.usage_bytes.value,
        memory_rss_bytes=s.memory.rss_bytes.value,
        rootfs_used_bytes=s.writable_layer.used_bytes.value,
        logs_used_bytes=log_bytes,
    )


@dataclass(frozen=True)
class NetDev:
    rx_bytes: int
    tx_bytes: int


def parse_net_dev(text: str) -> NetDev:
    """Sum rx/tx bytes of /proc/<pid>/net/dev, loopback excluded (cAdvisor's pod network stats)."""
    rx = tx = 0
    for line in text.splitlines()[2:]:
        if ":" not in line:
            continue
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            continue
        cols = rest.split()
        if len(cols) >= 9:
            rx += int(cols[0])
            tx += int(cols[8])
    return NetDev(rx, tx)


@dataclass(frozen=True)
class ProcCpu:
    total_jiffies: int
    btime: float


def parse_proc_stat(text: str) -> ProcCpu:
    """Busy cpu time of the node (user+nice+system+irq+softirq+steal) and boot time."""
    busy = 0
    btime = 0.0
    for line in text.splitlines():
        if line.startswith("cpu "):
            f = [int(x) for x in line.split()[1:]]
            f += [0] * (8 - len(f))
            busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7]
        elif line.startswith("btime "):
            btime = float(line.split()[1])
    return ProcCpu(busy, btime)


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        parts = v.split()
        if parts:
            n = int(parts[0])
            out[k.strip()] = n * 1024 if len(parts) > 1 and parts[1] == "kB" else n
    return out
