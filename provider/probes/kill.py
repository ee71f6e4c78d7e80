"""What kubelet does when a liveness or startup probe fails: the kill's grace period and message.

kuberuntime's computePodActions kills the container ("Container <name> failed liveness probe")
and restarts it unless restartPolicy is Never (", will be restarted"); setTerminationGracePeriod
takes the pod's deletion grace period when deleting, else the probe-level
terminationGracePeriodSeconds when set, else the pod's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from provider.podspec import termination_grace_seconds
from provider.probes.spec import SPEC_FIELDS, ProbeKind


@dataclass(frozen=True)
class Kill:
    container: str
    container_id: str
    kind: ProbeKind
    grace_seconds: float
    message: str
    restart: bool


def kill_for_probe(
    pod: Mapping[str, Any], container: Mapping[str, Any], container_id: str, kind: ProbeKind
) -> Kill:
    spec = pod.get("spec") or {}
    restart = spec.get("restartPolicy", "Always") != "Never" or container.get("restartPolicy") == "Always"
    name = container.get("name", "")
    message = f"Container {name} failed {kind.value} probe"
    if restart:
        message += ", will be restarted"
    probe = container.get(SPEC_FIELDS[kind]) or {}
    grace = termination_grace_seconds(pod, probe.get("terminationGracePeriodSeconds"))
    return Kill(name, container_id, kind, grace, message, restart)
