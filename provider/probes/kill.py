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

from provider.probes.spec import SPEC_FIELDS, ProbeKind

MINIMUM_GRACE_SECONDS = 2  # kubelet's minimumGracePeriodInSeconds
DEFAULT_POD_GRACE_SECONDS = 30


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
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    restart = spec.get("restartPolicy", "Always") != "Never" or container.get("restartPolicy") == "Always"
    name = container.get("name", "")
    message = f"Container {name} failed {kind.value} probe"
    if restart:
        message += ", will be restarted"
    grace: int
    if meta.get("deletionGracePeriodSeconds") is not None:
        grace = int(meta["deletionGracePeriodSeconds"])
    else:
        probe = container.get(SPEC_FIELDS[kind]) or {}
        if probe.get("terminationGracePeriodSeconds") is not None:
            grace = int(probe["terminationGracePeriodSeconds"])
        else:
            grace = int(spec.get("terminationGracePeriodSeconds", DEFAULT_POD_GRACE_SECONDS))
    return Kill(name, container_id, kind, float(grace), message, restart)
