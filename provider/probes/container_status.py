"""A container's ``started`` and ``ready`` from its probe results (kubelet's UpdatePodStatus), pure.

``started``: the startup probe's result for this container when there is one; otherwise true when
the previous status already said so (e.g. before a warmlet restart) or when it has no startup
probe. ``ready`` (only once started): the readiness result is Success, or it has no readiness
probe. After a warmlet restart, a container that was running before it (started more than
``RESTART_GRACE_SECONDS`` before the manager) and has no readiness result yet keeps the pod's
previous readiness instead of flapping to unready: kubelet's behaviour with the (default-off)
ChangeContainerStatusOnKubeletRestart gate.
"""

from __future__ import annotations

from dataclasses import dataclass

from provider.probes.state import Result

RESTART_GRACE_SECONDS = 10.0  # kubelet's kubeletRestartGracePeriod


@dataclass(frozen=True)
class Known:
    """What is known of one container when its status is computed."""

    running: bool
    has_startup: bool = False
    startup: Result | None = None  # the startup result for this container ID (None: none yet)
    has_readiness: bool = False
    readiness: Result | None = None
    was_started: bool = False  # the previous status of this same container said started
    pod_was_ready: bool = False  # the pod's Ready condition was True
    predates_manager: bool = False  # running since before the probe manager started (a restart)


def started_ready(k: Known) -> tuple[bool, bool]:
    if not k.running:
        return False, False
    if k.startup is not None:
        started = k.startup == Result.SUCCESS
    elif k.was_started:
        started = True
    else:
        started = not k.has_startup
    if not started:
        return False, False
    if k.readiness == Result.SUCCESS:
        return True, True
    ready = not k.has_readiness
    if k.predates_manager:
        if not ready and k.readiness is None:
            ready = True
        if k.has_readiness and not k.pod_was_ready:
            ready = False
    return True, ready
