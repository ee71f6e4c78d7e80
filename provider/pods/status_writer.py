"""Writing a pod's status and start annotations to the API (kubelet's status manager, small).

Computes the status from the runtime's containers (provider.status, pure) and patches it when
it changed, the start level, start instant and deletion cost in the same request as the status
that first shows the pod running (one write per pod start); writes go out through the per-pod
coalescing, rate-limited ``status_queue``; tells a ``PodLifecycleAware`` backend once a
terminal status is in the API.
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
from provider.pods.status_queue import StatusQueue, StatusWrite
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
        self.queue = StatusQueue(self._send, pods.status_qps, pods.status_burst, clock)

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

    async def patch(
        self, pod: JSON, st: PodState, status: JSON, annotations: Mapping[str, str] | None = None
    ) -> None:
        """Write ``status`` (and the start ``annotations``, in the same request) when it changed.

        One request per write: a status patch may carry metadata.annotations (the pods/status
        strategy keeps spec, ownerReferences and deletionTimestamp; NodeRestriction forbids only
        labels there), so the start annotations never cost a request of their own. Sent at once,
        or queued under ``pods.status_qps`` (``status_queue``); the bookkeeping follows the send."""
        anns = dict(annotations or {})
        if not needs_write(pod.get("status"), st.last_status, status, bool(anns)):
            return
        meta = pod["metadata"]
        uid = meta["uid"]

        async def written() -> None:
            # merged over what the API showed when it was sent if the last one was let go (settle)
            last = st.last_status if st.last_status is not None else pod.get("status")
            st.last_status = {**(last or {}), **status}
            if anns:
                st.annotated = True
            if status.get("phase") in TERMINAL_PHASES:
                await self.final_status_written(uid)

        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        await self.queue.submit(StatusWrite(uid, path, status_patch_body(uid, status, anns), [written]))

    @staticmethod
    def settle(pod: JSON, st: PodState) -> None:
        """Let the last written status go once the API's copy (the informer's) shows all of it:
        that copy, kept anyway, then answers everything the written one did (``needs_write``, the
        deadline's start time, unreported exits; each reads ``st.last_status or`` the API's).
        A simulated node of 10,000 pods keeps one status per pod instead of two."""
        if st.last_status is not None and not status_changed(pod.get("status"), st.last_status):
            st.last_status = None

    async def _send(self, w: StatusWrite) -> None:
        """One status patch; its bookkeeping once the API took it. A pod gone or replaced (404,
        409) is the watch's to tell; start annotations refused (403 under some admission) are
        dropped once and the status sent without them (the start still counts)."""
        body = w.body
        try:
            try:
                await self.client.patch(w.path, body, content_type=STRATEGIC_MERGE_PATCH)
            except ApiError as e:
                if e.status != 403 or not (body.get("metadata") or {}).get("annotations"):
                    raise
                self._annotations_forbidden(e)
                body = {**body, "metadata": {"uid": body["metadata"].get("uid")}}
                await self.client.patch(w.path, body, content_type=STRATEGIC_MERGE_PATCH)
        except ApiError as e:
            if e.not_found or e.conflict:
                return  # the pod is gone or was replaced: the watch will tell
            raise
        STATUS_PATCHES.inc()
        for after in w.after:
            await after()

    async def final_status_written(self, uid: str) -> None:
        """Tell the backend the terminal status is in the API (it may forget persisted final states)."""
        if isinstance(self.backend, PodLifecycleAware):
            await self.backend.final_status_written(uid)

    def start_annotations(
        self, pod: JSON, st: PodState, runtime: list[ContainerRuntimeState]
    ) -> dict[str, str]:
        """Start level, deletion cost and the precise start (``warmlet.io/started-at``: the first
        app container's start as the runtime reports it, to the millisecond) that the pod does not
        carry yet, for the status write that first shows it running; the start latency histogram,
        and for a pod with a start instant its lateness, once per pod (even when the write fails
        and the next sync asks again)."""
        assert st.sandbox is not None
        first = not st.start_observed
        st.start_observed = True
        level = start_level(st.precreated, st.pulled_any, st.sandbox.from_pool)
        meta = pod["metadata"]
        anns = meta.get("annotations") or {}
        created = parse_rfc3339(meta.get("creationTimestamp"))
        if first and START_LEVEL_ANNOTATION not in anns:
            POD_STARTS.labels(level=level.value).inc()
            if created is not None:
                POD_START_LATENCY.labels(level=level.value).observe(max(0.0, self.clock.time() - created))
        started = hold.first_start(runtime, hold.app_names(pod))
        if started is not None and anns.get(hold.STARTED_AT_ANNOTATION) is None:
            at = hold.start_at(pod)
            if first and at is not None and at.instant is not None:
                START_LATENESS.observe(started - at.instant)
        st.annotations = missing_start_annotations(anns, level, started, self.deletion_cost)
        return st.annotations

    def _annotations_forbidden(self, e: ApiError) -> None:
        if not self._annotations_forbidden_logged:
            self._annotations_forbidden_logged = True
            log.warning(
                "pod annotations forbidden; start level and deletion cost not recorded "
                "on pods (grant the warmlet ClusterRole, kind-config/rbac.yaml) error=%s",
                e.message,
            )


# ---------------------------------------------------------------------------------------- pure


def start_level(precreated: bool, pulled_any: bool, from_pool: bool) -> StartLevel:
    if precreated:
        return StartLevel.PRECREATED
    if pulled_any:
        return StartLevel.COLD
    if from_pool:
        return StartLevel.WARM
    return StartLevel.IMAGE_CACHED


def missing_start_annotations(
    present: Mapping[str, str], level: StartLevel, started: float | None, deletion_cost: int | None
) -> dict[str, str]:
    """The start annotations a pod does not carry yet (an annotation already there is kept: a
    restarted warmlet never rewrites the level the pod started with)."""
    out: dict[str, str] = {}
    if present.get(START_LEVEL_ANNOTATION) is None:
        out[START_LEVEL_ANNOTATION] = level.value
    if started is not None and present.get(hold.STARTED_AT_ANNOTATION) is None:
        out[hold.STARTED_AT_ANNOTATION] = hold.format_millis(started)
    if deletion_cost is not None and present.get(DELETION_COST_ANNOTATION) != str(deletion_cost):
        out[DELETION_COST_ANNOTATION] = str(deletion_cost)
    return out


def needs_write(api_status: JSON | None, last_written: JSON | None, status: JSON, annotations: bool) -> bool:
    """Whether a status write is due: start annotations to write, or a status that differs from
    the API's copy and from the last one written (the watch may not have caught up yet)."""
    if annotations:
        return True
    if not status_changed(api_status, status):
        return False
    return last_written is None or status_changed(last_written, status)


def status_patch_body(uid: str, status: JSON, annotations: Mapping[str, str]) -> JSON:
    """The strategic merge patch of pods/status: the uid precondition, the annotations if any."""
    meta: JSON = {"uid": uid}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"metadata": meta, "status": patch_body(status)}


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
