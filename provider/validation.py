"""Admission on a virtual node: host namespaces, hostPath, hostPort and volume types without a
driver here (PVC, CSI, iSCSI, NFS, ...) cannot be honoured.

Pure: returns what is wrong; the pod worker turns it into a Failed status and an Event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

REJECT_REASON = "UnsupportedOnVirtualNode"


@dataclass(frozen=True)
class Rejection:
    reason: str
    message: str


# Volume types materialized by provider.resolve_volumes (hostPath is reported on its own).
SUPPORTED_VOLUMES = frozenset({"emptyDir", "configMap", "secret", "downwardAPI", "projected"})
SUPPORTED_PROJECTIONS = frozenset({"configMap", "secret", "downwardAPI", "serviceAccountToken"})


def _volume_problem(v: Mapping[str, Any]) -> str:
    """Why a volume cannot be provided ('' if it can): PVC, CSI, iSCSI, NFS, ... have no driver on a
    virtual node, and running without them would silently write the data to the container layer."""
    name = v.get("name")
    kinds = [k for k in v if k != "name"]
    kind = kinds[0] if kinds else "unknown"
    if kind not in SUPPORTED_VOLUMES:
        return f"{kind} volume {name!r}"
    if kind == "emptyDir" and ((v.get("emptyDir") or {}).get("medium") or "") not in ("", "Memory"):
        return f"emptyDir volume {name!r} with medium {(v.get('emptyDir') or {}).get('medium')}"
    if kind == "projected":
        for src in (v.get("projected") or {}).get("sources") or []:
            for k in src:
                if k not in SUPPORTED_PROJECTIONS:
                    return f"projected volume {name!r} source {k}"
    return ""


def unsupported_features(pod: Mapping[str, Any]) -> list[str]:
    """Human-readable list of the host-level features the pod asks for."""
    spec = pod.get("spec") or {}
    problems: list[str] = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"{field}: true")
    for v in spec.get("volumes") or []:
        hp = v.get("hostPath")
        if hp is not None:
            problems.append(f"hostPath volume {v.get('name')!r} ({hp.get('path', '')})")
            continue
        problem = _volume_problem(v)
        if problem:
            problems.append(problem)
    containers = [
        *(spec.get("initContainers") or []),
        *(spec.get("containers") or []),
        *(spec.get("ephemeralContainers") or []),
    ]
    for c in containers:
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                problems.append(f"hostPort {p['hostPort']} on container {c.get('name')!r}")
    return problems


def validate_pod(pod: Mapping[str, Any], policy: str = "reject") -> Rejection | None:
    """A Rejection when the pod must be failed on this node under ``policy`` ("reject"/"ignore")."""
    if policy == "ignore":
        return None
    problems = unsupported_features(pod)
    if not problems:
        return None
    return Rejection(
        REJECT_REASON,
        "Pod was rejected: a virtual node cannot provide "
        + "; ".join(problems)
        + " (set pods.unsupported_policy=ignore to run it without them)",
    )
