"""``/stats/summary``: the kubelet Summary API (stats/v1alpha1) built from backend usage."""

from __future__ import annotations

from typing import Any

from provider.timefmt import rfc3339
from sandbox.backend import ContainerUsage, NodeUsage, PodUsage

JSON = dict[str, Any]


def _cpu(t: str, nano_cores: int, core_ns: int) -> JSON:
    return {"time": t, "usageNanoCores": nano_cores, "usageCoreNanoSeconds": core_ns}


def _memory(t: str, working_set: int, usage: int, rss: int, available: int | None = None) -> JSON:
    m: JSON = {"time": t}
    if available is not None:
        m["availableBytes"] = available
    m.update(usageBytes=usage, workingSetBytes=working_set, rssBytes=rss, pageFaults=0, majorPageFaults=0)
    return m


def _fs(t: str, used: int, capacity: int | None = None, available: int | None = None) -> JSON:
    fs: JSON = {"time": t}
    if capacity is not None:
        fs["availableBytes"] = available if available is not None else max(0, capacity - used)
        fs["capacityBytes"] = capacity
    fs["usedBytes"] = used
    return fs


def _container(c: ContainerUsage) -> JSON:
    t = rfc3339(c.timestamp)
    return {
        "name": c.name,
        "startTime": rfc3339(c.start_time),
        "cpu": _cpu(t, c.cpu_usage_nano_cores, c.cpu_usage_core_nanoseconds),
        "memory": _memory(t, c.memory_working_set_bytes, c.memory_usage_bytes, c.memory_rss_bytes),
        "rootfs": _fs(t, c.rootfs_used_bytes),
        "logs": _fs(t, c.logs_used_bytes),
    }


def _pod(p: PodUsage) -> JSON:
    t = rfc3339(p.timestamp)
    cs = p.containers
    ws = sum(c.memory_working_set_bytes for c in cs)
    used = sum(c.rootfs_used_bytes + c.logs_used_bytes for c in cs)
    return {
        "podRef": {"name": p.name, "namespace": p.namespace, "uid": p.uid},
        "startTime": rfc3339(p.start_time),
        "containers": [_container(c) for c in cs],
        "cpu": _cpu(
            t, sum(c.cpu_usage_nano_cores for c in cs), sum(c.cpu_usage_core_nanoseconds for c in cs)
        ),
        "memory": _memory(t, ws, sum(c.memory_usage_bytes for c in cs), sum(c.memory_rss_bytes for c in cs)),
        "network": {
            "time": t,
            "name": "eth0",
            "rxBytes": p.network_rx_bytes,
            "rxErrors": 0,
            "txBytes": p.network_tx_bytes,
            "txErrors": 0,
            "interfaces": [
                {
                    "name": "eth0",
                    "rxBytes": p.network_rx_bytes,
                    "rxErrors": 0,
                    "txBytes": p.network_tx_bytes,
                    "txErrors": 0,
                }
            ],
        },
        "volume": [],
        "ephemeral-storage": _fs(t, used),
        "process_stats": {"process_count": len(cs)},
    }


def build_summary(node_name: str, usage: NodeUsage, only_cpu_and_memory: bool = False) -> JSON:
    """The Summary JSON; ``only_cpu_and_memory`` mirrors ``?only_cpu_and_memory=true``."""
    t = rfc3339(usage.timestamp)
    node: JSON = {
        "nodeName": node_name,
        "systemContainers": [],
        "startTime": rfc3339(usage.start_time),
        "cpu": _cpu(t, usage.cpu_usage_nano_cores, usage.cpu_usage_core_nanoseconds),
        "memory": _memory(
            t,
            usage.memory_working_set_bytes,
            usage.memory_usage_bytes,
            usage.memory_rss_bytes,
            available=usage.memory_available_bytes,
        ),
    }
    pods = [_pod(p) for p in usage.pods]
    if only_cpu_and_memory:
        keep = {"podRef", "startTime", "containers", "cpu", "memory"}
        ckeep = {"name", "startTime", "cpu", "memory"}
        for p in pods:
            for k in list(p):
                if k not in keep:
                    del p[k]
            p["containers"] = [{k: v for k, v in c.items() if k in ckeep} for c in p["containers"]]
        return {"node": node, "pods": pods}
    fs = _fs(t, usage.fs_used_bytes, usage.fs_capacity_bytes, usage.fs_available_bytes)
    fs.update(inodesFree=10_000_000, inodes=10_000_000 + len(usage.pods), inodesUsed=len(usage.pods))
    node["network"] = {
        "time": t,
        "name": "eth0",
        "rxBytes": 0,
        "rxErrors": 0,
        "txBytes": 0,
        "txErrors": 0,
        "interfaces": [],
    }
    node["fs"] = fs
    node["runtime"] = {"imageFs": dict(fs), "containerFs": dict(fs)}
    node["rlimit"] = {"time": t, "maxpid": 4_194_304, "curproc": sum(len(p.containers) for p in usage.pods)}
    return {"node": node, "pods": pods}
