"""Writing a pod's status and start annotations to the API (kubelet's status manager, small).

Computes the status from the runtime's containers (provider.status, pure) and patches it when
it changed; records the start level and deletion cost once the pod first runs; tells a
``PodLifecycleAware`` backend once a terminal status is in the API.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from common.clock import SYSTEM, Clock
from provider.config import PodConfig
from provider.kubeclient import STRATEGIC_MERGE_PATCH, ApiError, KubeClient
from provider.metrics import POD_START_LATENCY, POD_STARTS, START_LATENESS, STATUS_PATCHES
from provider.pods import hold
from provider.pods.state import JSON, PodState
from provider.status import TERMINAL_PHASES, Waiting, compute_status, status_changed
from provider.timefmt import parse_rfc3339
from sandbox.backend import Backend, ContainerRuntimeState, PodLifecycleAware, SandboxInfo, StartLevel

log = logging.getLogger(__name__)

START_LEVEL_ANNOTATION = "warmlet.io/start-level"
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"


class StatusWriter:
    def __init__(
        self, pods: PodConfig, client: KubeClient, backend: Backend, host_ip: str, clock: Clock = SYSTEM
    ) -> None:
        self.client = client
        self.backend = backend
        self.host_ip = host_ip
        self.deletion_cost = pods.deletion_cost
        self.clock = clock
        self._annotations_forbidden_logged = False

    @property
    def scheme(self) -> str:
        """Asked each time: a CRI backend learns its runtime's name when it connects."""
        return self.backend.container_id_scheme

    def compute(
        self,
        pod: JSON,
        runtime: list[ContainerRuntimeState],
        waiting: dict[str, Waiting],
        *,
        sandbox_ready: bool,
        pod_ip: str = "",
        probes: Mapping[str, tuple[bool, bool]] | None = None,
        terminal: bool = False,
    ) -> JSON:
        return compute_status(
            pod,
            runtime,
            waiting,
            self.clock.time(),
            sandbox_ready=sandbox_ready,
            pod_ip=pod_ip,
            host_ip=self.host_ip,
            scheme=self.scheme,
            probes=probes,
            terminal=terminal,
        )

    async def write(
        self,
        pod: JSON,
        st: PodState,
        runtime: list[ContainerRuntimeState],
        waiting: dict[str, Waiting],
        *,
        sandbox_ready: bool,
        sandbox: SandboxInfo | None = None,
    ) -> JSON:
        status = self.compute(
            pod, runtime, waiting, sandbox_ready=sandbox_ready, pod_ip=sandbox.pod_ip if sandbox else ""
        )
        await self.patch(pod, st, status)
        return status

    async def patch(self, pod: JSON, st: PodState, status: JSON) -> None:
        if not status_changed(pod.get("status"), status):
            return
        if st.last_status is not None and not status_changed(st.last_status, status):
            return  # already written; the watch has not caught up yet
        meta = pod["metadata"]
        try:
            await self.client.patch(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                {"metadata": {"uid": meta["uid"]}, "status": patch_body(status)},
                content_type=STRATEGIC_MERGE_PATCH,
            )
            STATUS_PATCHES.inc()
            st.last_status = {**(st.last_status or {}), **status}
            if status.get("phase") in TERMINAL_PHASES:
                await self.final_status_written(meta["uid"])
        except ApiError as e:
            if e.not_found or e.conflict:
                return  # the pod is gone or was replaced: the watch will tell
            raise

    async def final_status_written(self, uid: str) -> None:
        """Tell the backend the terminal status is in the API (it may forget persisted final states)."""
        if isinstance(self.backend, PodLifecycleAware):
            await self.backend.final_status_written(uid)

    async def annotate_started(self, pod: JSON, st: PodState, runtime: list[ContainerRuntimeState]) -> None:
        """Start level, deletion cost and the precise start (``warmlet.io/started-at``: the first
        app container's start as the runtime reports it, to the millisecond), once per pod; the
        start latency histogram, and for a pod with a start instant its lateness. Done once the
        patch is in: a failed one (the API server unreachable) is retried by the next sync."""
        assert st.sandbox is not None
        first = not st.start_observed
        st.start_observed = True
        if st.precreated:
            level = StartLevel.PRECREATED
        elif st.pulled_any:
            level = StartLevel.COLD
        elif st.sandbox.from_pool:
            level = StartLevel.WARM
        else:
            level = StartLevel.IMAGE_CACHED
        meta = pod["metadata"]
        anns = meta.get("annotations") or {}
        created = parse_rfc3339(meta.get("creationTimestamp"))
        if first and START_LEVEL_ANNOTATION not in anns:
            POD_STARTS.labels(level=level.value).inc()
            if created is not None:
                POD_START_LATENCY.labels(level=level.value).observe(max(0.0, self.clock.time() - created))
        patch: dict[str, str] = {}
        if anns.get(START_LEVEL_ANNOTATION) is None:
            patch[START_LEVEL_ANNOTATION] = level.value
        started = hold.first_start(runtime, hold.app_names(pod))
        if started is not None and anns.get(hold.STARTED_AT_ANNOTATION) is None:
            patch[hold.STARTED_AT_ANNOTATION] = hold.format_millis(started)
            at = hold.start_at(pod)
            if first and at is not None and at.instant is not None:
                START_LATENESS.observe(started - at.instant)
        cost = self.deletion_cost
        if cost is not None and anns.get(DELETION_COST_ANNOTATION) != str(cost):
            patch[DELETION_COST_ANNOTATION] = str(cost)
        if patch:
            await self._patch_annotations(meta, patch)
        st.annotated = True

    async def _patch_annotations(self, meta: JSON, patch: dict[str, str]) -> None:
        try:
            await self.client.patch(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {"metadata": {"annotations": patch}},
            )
        except ApiError as e:
            if e.status == 403:
                # A node identity (system:node:*) may not change pod metadata under
                # NodeRestriction; the start still counts, the annotations are best effort.
                if not self._annotations_forbidden_logged:
                    self._annotations_forbidden_logged = True
                    log.warning(
                        "pod annotations forbidden; start level and deletion cost not recorded "
                        "on pods (grant the warmlet ClusterRole, kind-config/rbac.yaml) error=%s",
                        e.message,
                    )
            elif not (e.not_found or e.conflict):
                raise


def patch_body(status: JSON) -> JSON:
    """The ``status`` of the strategic merge patch that makes the API hold exactly ``status``."""
    return clear_absent_condition_fields(replace_ip_lists(status))


def clear_absent_condition_fields(status: JSON) -> JSON:
    """Strategic merge MERGES each condition (merge key ``type``) with the old one: a condition
    that turns True without a reason would keep the old ``ContainersNotReady`` reason and its
    message. A ``null`` deletes them, as in the two-way patch kubelet's status manager sends."""
    if "conditions" not in status:
        return status
    conds = [{"reason": None, "message": None, **c} for c in status["conditions"]]
    return {**status, "conditions": conds}


def replace_ip_lists(status: JSON) -> JSON:
    """Strategic merge would MERGE podIPs/hostIPs (merge key ``ip``) with the old ones; a pod
    whose sandbox was recreated (e.g. after a restart lost the runtime) must REPLACE them."""
    out = dict(status)
    for key in ("podIPs", "hostIPs"):
        if key in out:
            out[key] = [*out[key], {"$patch": "replace"}]
    return out
