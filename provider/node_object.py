"""The Node object warmlet registers: pure builders for metadata, spec and status.

Conditions follow kubelet's wording (KubeletReady / KubeletNotReady, KubeletHasSufficient*)
and keep their lastTransitionTime while their status does not change.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from typing import Any

from provider import __version__
from provider.config import NodeConfig
from provider.timefmt import rfc3339
from sandbox.backend import BackendHealth

JSON = dict[str, Any]

_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
}


def arch() -> str:
    return _ARCH.get(platform.machine(), platform.machine())


# This node honours warmlet.io/start-at (provider/pods/hold.py): a held pod's required node affinity
# names this label, so a node that would start such a pod early can never get one.
HOLDS_START_LABEL = "warmlet.io/holds-start"


def node_labels(cfg: NodeConfig) -> dict[str, str]:
    a = arch()
    labels = {
        "type": "virtual-kubelet",
        "kubernetes.io/role": "agent",
        "kubernetes.io/hostname": cfg.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": a,
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": a,
        "node.kubernetes.io/exclude-from-external-load-balancers": "true",
        HOLDS_START_LABEL: "true",
    }
    labels.update(cfg.labels)
    return labels


_NODE_ALLOWED = {
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
}


def node_restriction_safe(labels: dict[str, str]) -> dict[str, str]:
    """Drop labels NodeRestriction forbids a node identity to set (e.g. kubernetes.io/role)."""
    out = {}
    for k, v in labels.items():
        prefix = k.split("/", 1)[0] if "/" in k else ""
        restricted = prefix.endswith(("kubernetes.io", "k8s.io")) and not prefix.endswith(
            ("kubelet.kubernetes.io", "node.kubernetes.io")
        )
        if not restricted or k in _NODE_ALLOWED:
            out[k] = v
    return out


def node_taints(cfg: NodeConfig) -> list[JSON]:
    if not cfg.taint:
        return []
    return [{"key": cfg.taint_key, "value": cfg.provider, "effect": cfg.taint_effect}]


def capacity(cfg: NodeConfig) -> dict[str, str]:
    cap = {"cpu": cfg.cpu, "memory": cfg.memory, "pods": cfg.pods, "ephemeral-storage": cfg.ephemeral_storage}
    cap.update(cfg.extended_resources)
    return cap


STOPPED_REASON = "WarmletStopped"


def node_conditions(
    health: BackendHealth, now: float, old: Sequence[Mapping[str, Any]] = (), stopped: str = ""
) -> list[JSON]:
    """Kubelet's conditions; ``stopped`` (a message) marks a node whose warmlet shut down on purpose."""
    if stopped:
        ready = ("False", STOPPED_REASON, stopped)
    elif health.ok:
        ready = ("True", "KubeletReady", "kubelet is posting ready status")
    else:
        detail = ": ".join(x for x in (health.reason, health.message) if x) or "backend is not healthy"
        ready = ("False", "KubeletNotReady", f"container runtime is not ready: {detail}")
    wanted = [
        ("Ready", *ready),
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("NetworkUnavailable", "False", "RouteCreated", "RouteController created a route"),
    ]
    prev = {c.get("type"): c for c in old}
    out = []
    for ctype, status, reason, message in wanted:
        p = prev.get(ctype) or {}
        transition = (
            p.get("lastTransitionTime") if p.get("status") == status and p.get("lastTransitionTime") else None
        )
        out.append(
            {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": rfc3339(now),
                "lastTransitionTime": transition or rfc3339(now),
            }
        )
    return out


def node_addresses(cfg: NodeConfig) -> list[tuple[str, str]]:
    """The Node's (type, address) pairs, as kubelet reports them (also the serving cert's SANs)."""
    return [("InternalIP", cfg.internal_ip), ("Hostname", cfg.name)]


def node_status(
    cfg: NodeConfig,
    health: BackendHealth,
    now: float,
    kubelet_port: int,
    old: Mapping[str, Any] | None = None,
    stopped: str = "",
) -> JSON:
    cap = capacity(cfg)
    runtime = f"{health.runtime_name or 'warmlet'}://{health.runtime_version or __version__}"
    return {
        "capacity": cap,
        "allocatable": dict(cap),
        "conditions": node_conditions(health, now, (old or {}).get("conditions") or [], stopped),
        "addresses": [{"type": t, "address": a} for t, a in node_addresses(cfg)],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": {
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
            "kernelVersion": platform.release(),
            "osImage": f"warmlet {__version__}",
            "containerRuntimeVersion": runtime,
            "kubeletVersion": cfg.kubelet_version,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": arch(),
        },
    }


def node_object(cfg: NodeConfig, health: BackendHealth, now: float, kubelet_port: int) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": cfg.name, "labels": node_labels(cfg)},
        "spec": {"taints": node_taints(cfg)},
        "status": node_status(cfg, health, now, kubelet_port),
    }


def foreign_owner(node: Mapping[str, Any]) -> str | None:
    """Why an existing Node of our name belongs to another kubelet or provider; None: ours to take.

    A Node a kubelet or another virtual-kubelet provider reports carries its nodeInfo; warmlet's
    says ``warmlet <version>`` in osImage. A pre-created Node without status, or one a warmlet
    wrote (a restart, another replica of this node), is taken over; another's is never touched.
    """
    info = (node.get("status") or {}).get("nodeInfo") or {}
    os_image, kubelet = str(info.get("osImage") or ""), str(info.get("kubeletVersion") or "")
    if (not os_image and not kubelet) or os_image.startswith("warmlet"):
        return None
    return f"osImage={os_image!r} kubeletVersion={kubelet!r}"


def conditions_summary(conditions: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """What counts as a change worth an immediate status update (heartbeats aside)."""
    return sorted((str(c.get("type")), str(c.get("status")), str(c.get("reason"))) for c in conditions)


def overwritten_by_others(node: Mapping[str, Any], last_written: Sequence[tuple[str, str, str]]) -> bool:
    """True if the Node's conditions are no longer what warmlet last wrote: someone else (the
    node-lifecycle controller marking it Unknown after an outage) changed them, so warmlet should
    report its own view now instead of at the next periodic update."""
    if not last_written:
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    return conditions_summary(conditions) != list(last_written)


def node_ready(node: Mapping[str, Any]) -> bool:
    """Whether a Node's Ready condition is True: the node lifecycle controller's verdict on whether
    its warmlet is alive (Unknown once the Lease has not been renewed for the grace period)."""
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
