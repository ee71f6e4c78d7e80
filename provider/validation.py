"""Admission on a virtual node: host namespaces, hostPath, hostPort and volume types without a
driver here (PVC, CSI, iSCSI, NFS, ...) cannot be honoured.

Pure: returns what is wrong; the pod worker turns it into a Failed status and an Event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

REJECT_REASON = "UnsupportedOnVirtualNode"
OS_REASON = "PodOSNotSupported"  # kubelet lifecycle.PodOSNotSupported
SYSCTL_REASON = "SysctlForbidden"  # kubelet sysctl.ForbiddenReason
NODE_OS = "linux"

# kubelet's safe sysctls (pkg/kubelet/sysctl/safe_sysctls.go), all namespaced by the kernel; the
# node has no --allowed-unsafe-sysctls, so any other sysctl is forbidden at admission.
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
    }
)


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


def normalize_sysctl(name: str) -> str:
    """kubelet's NormalizeName: a name whose first separator is '/' uses '/' for '.' and back."""
    dot, slash = name.find("."), name.find("/")
    if slash < 0 or (0 <= dot < slash):
        return name
    return name.translate(str.maketrans("./", "/."))


def kubelet_admission(pod: Mapping[str, Any]) -> Rejection | None:
    """kubelet's own admission checks that hold on any node: the pod's OS and its sysctls."""
    spec = pod.get("spec") or {}
    os_name = (spec.get("os") or {}).get("name")
    if os_name and os_name != NODE_OS:
        return Rejection(OS_REASON, "Failed to admit pod as the OS field doesn't match node OS")
    for sysctl in (spec.get("securityContext") or {}).get("sysctls") or []:
        name = normalize_sysctl(str(sysctl.get("name", "")))
        if name not in SAFE_SYSCTLS:
            return Rejection(SYSCTL_REASON, f'forbidden sysctl: "{name}" not allowlisted')
    return None


def validate_pod(pod: Mapping[str, Any], policy: str = "reject") -> Rejection | None:
    """A Rejection when the pod must be failed on this node under ``policy`` ("reject"/"ignore").

    kubelet's own admission (OS, sysctls) applies under either policy: it is not a limit of a
    virtual node, a real kubelet rejects the same pods.
    """
    kubelet = kubelet_admission(pod)
    if kubelet is not None:
        return kubelet
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
