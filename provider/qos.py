"""A pod's QoS class, computed the way kubelet's GetPodQOS does (cpu and memory only)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from provider.quantity import cpu_milli, to_int

_SUPPORTED = ("cpu", "memory")


def _amount(resource: str, value: Any) -> int:
    return cpu_milli(value) if resource == "cpu" else to_int(value)


def qos_class(pod: Mapping[str, Any]) -> str:
    """Guaranteed, Burstable or BestEffort; requests default to limits like the apiserver."""
    spec = pod.get("spec") or {}
    requests: dict[str, int] = {}
    limits: dict[str, int] = {}
    guaranteed = True
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        res = c.get("resources") or {}
        c_limits = {k: _amount(k, v) for k, v in (res.get("limits") or {}).items() if k in _SUPPORTED}
        c_requests = {k: _amount(k, v) for k, v in (res.get("requests") or {}).items() if k in _SUPPORTED}
        for k, v in c_limits.items():
            c_requests.setdefault(k, v)
        for k, v in c_requests.items():
            if v > 0:
                requests[k] = requests.get(k, 0) + v
        for k, v in c_limits.items():
            if v > 0:
                limits[k] = limits.get(k, 0) + v
        complete = all(c_limits.get(k, 0) > 0 for k in _SUPPORTED)
        if not complete or any(c_requests.get(k) != c_limits.get(k) for k in _SUPPORTED):
            guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    if guaranteed and requests == limits:
        return "Guaranteed"
    return "Burstable"
