"""The kubelet-like sync of one pod: admit, resolve, sandbox, images, containers, status.

One call of ``sync(uid)`` moves the pod one step towards its desired state and writes its
status when it changed; the work queue guarantees one sync per pod at a time. Decisions
are pure (provider.sync, provider.status); the I/O they ask for is split by concern like
kubelet's kuberuntime manager: this module is the sync itself and the sandbox path;
``containers`` starts/resumes containers (with ``container_config`` and ``images``),
``termination`` stops and releases, ``status_writer`` writes the status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path

from common.clock import SYSTEM, Clock
from provider import deadline
from provider.backoff import Backoff
from provider.config import PodConfig
from provider.ephemeral import (
    POD_NOT_RUNNING,
    compute_ephemeral_actions,
    ephemeral_specs,
    finished_pod_statuses,
    live_ephemeral,
    not_running_message,
)
from provider.events import NORMAL, WARNING, EventRecorder
from provider.kubeclient import KubeClient
from provider.metrics import EPHEMERAL_CONTAINERS
from provider.pods import hold
from provider.pods.container_config import ContainerConfigResolver
from provider.pods.containers import ContainerStarter, StartOutcome
from provider.pods.images import PERSISTENT_IMAGE_ERRORS, ImagePuller
from provider.pods.precreate import Precreator
from provider.pods.state import JSON, PodState
from provider.pods.status_writer import (
    DELETION_COST_ANNOTATION,
    START_LEVEL_ANNOTATION,
    StatusWriter,
    replace_ip_lists,
)
from provider.pods.termination import PodTerminator
from provider.podspec import sandbox_spec, termination_grace_seconds
from provider.probes.manager import ProbeManager
from provider.resolve_source import ObjectSource
from provider.resolve_volumes import scratch_dirs
from provider.status import FAILED, RUNNING, TERMINAL_PHASES, Waiting, rejected_status
from provider.status_before import reported_waiting, terminal_pending, unreported_exits
from provider.sync import PodActions, apply_backoff, compute_pod_actions, is_finished
from provider.validation import validate_pod
from provider.workload import OwnerResolver, single_use
from sandbox.backend import Backend, BackendError, ContainerRuntimeState, ContainerState

__all__ = [
    "CONFIG_RETRY_MAX_SECONDS",
    "CONFIG_RETRY_SECONDS",
    "DELETION_COST_ANNOTATION",
    "PERSISTENT_IMAGE_ERRORS",
    "START_LEVEL_ANNOTATION",
    "PodState",
    "PodWorker",
    "replace_ip_lists",
]

CONFIG_RETRY_SECONDS = 2.0
# A container that cannot be configured (missing Secret/ConfigMap, bad subPath, failed mount) is
# retried with back-off doubling from CONFIG_RETRY_SECONDS up to this: never a hot loop.
CONFIG_RETRY_MAX_SECONDS = 30.0
SANDBOX_BACKOFF_KEY = "__sandbox__"


class PodWorker:
    def __init__(
        self,
        pods: PodConfig,
        host_ip: str,
        client: KubeClient,
        backend: Backend,
        get_pod: Callable[[str], JSON | None],
        recorder: EventRecorder,
        owners: OwnerResolver,
        source: ObjectSource,
        node_allocatable: Mapping[str, str],
        clock: Clock = SYSTEM,
        on_probe_change: Callable[[str], None] | None = None,
    ) -> None:
        self.pods_cfg = pods
        self.host_ip = host_ip
        self.client = client
        self.backend = backend
        self.get_pod = get_pod
        self.events = recorder
        self.owners = owners
        self.source = source
        self.allocatable = dict(node_allocatable)
        self.clock = clock
        self.restarts = Backoff(10.0, 300.0)
        self.pulls = Backoff(10.0, 300.0)
        self.config_retries = Backoff(CONFIG_RETRY_SECONDS, CONFIG_RETRY_MAX_SECONDS)
        self.states: dict[str, PodState] = {}
        self.volumes_dir = Path(pods.volumes_dir)
        self.memory_dir = pods.memory_volumes_dir  # None: <volumes_dir>-memory (tmpfs mounts)
        self.status = StatusWriter(pods, client, backend, host_ip, clock)
        # A probe result that changes asks for a sync of its pod (the controller's work queue).
        self.probes = ProbeManager(backend, recorder, on_probe_change or (lambda uid: None), clock)
        self.terminator = PodTerminator(pods, client, backend, recorder, self.states, self._forget, clock)
        self.containers = ContainerStarter(
            backend,
            recorder,
            ContainerConfigResolver(
                pods, backend.capabilities, source, recorder, host_ip, node_allocatable, clock
            ),
            ImagePuller(backend, recorder, self.pulls, clock, source=source),
            self.restarts,
            self.config_retries,
            self.terminator,
            get_pod,
        )
        # Pods held until their warmlet.io/start-at instant, started together by one start wave.
        self.holds = Precreator(
            backend,
            recorder,
            self.containers,
            self.status,
            self.states,
            get_pod,
            on_probe_change or (lambda uid: None),
            pods.start_wave_concurrency or backend.capabilities.start_concurrency,
            clock,
            adaptive=pods.start_wave_adaptive,  # the width found by the wave (wave_width.py)
        )

    # -- entry point ---------------------------------------------------------------------------

    async def sync(self, uid: str) -> float | None:
        pod = self.get_pod(uid)
        if pod is None:
            await self.cleanup(uid)
            return None
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            self.holds.forget(uid)  # a held pod being deleted never starts
            await self.terminator.terminate(pod, self._write_stopped)
            return None
        st = self.states.setdefault(uid, PodState())
        self.status.settle(pod, st)
        if (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
            await self.terminator.release(pod, st)
            await self._ephemeral_after_finish(pod, st)
            await self.status.final_status_written(uid)
            return None
        if st.released:
            if st.final_status is not None:  # e.g. the first write failed
                await self.status.patch(pod, st, st.final_status, None if st.annotated else st.annotations)
            return None
        rejection = validate_pod(pod, self.pods_cfg.unsupported_policy)
        if rejection is not None:
            if not st.rejected:
                st.rejected = True
                self.events.record(pod, WARNING, rejection.reason, rejection.message)
                await self.status.patch(
                    pod, st, rejected_status(pod, rejection.reason, rejection.message, self.clock.time())
                )
            return None
        return await self._run(pod, st)

    async def _write_stopped(self, pod: JSON, runtime: list[ContainerRuntimeState]) -> None:
        """A deleted pod's containers stopped: its status says so (terminal phase, terminated
        states) before the object goes, as kubelet's status manager writes it."""
        if not runtime:
            return
        st = self.states.setdefault(pod["metadata"]["uid"], PodState())
        await self.status.patch(
            pod, st, self.status.compute(pod, runtime, {}, sandbox_ready=False, terminal=True)
        )

    async def cleanup(self, uid: str) -> None:
        """The pod object is gone: make sure nothing of it is left (also used for orphans)."""
        await self.terminator.cleanup(uid)

    # -- running ---------------------------------------------------------------------------------

    async def _run(self, pod: JSON, st: PodState) -> float | None:
        uid = pod["metadata"]["uid"]
        none_yet = False  # see _sandbox_for
        if st.sandbox is None:
            # the API reads of its volumes (the TokenRequest above all) overlap the runtime's
            # answers and the sandbox's acquisition; both are done before the containers resolve
            prefetch = asyncio.create_task(self.containers.config.prefetch(pod), name=f"prefetch-{uid}")
            try:
                stop, delay, none_yet = await self._sandbox_for(pod, st)
            except BaseException:
                prefetch.cancel()
                await asyncio.wait([prefetch])  # never left running
                raise
            if stop:
                prefetch.cancel()
                await asyncio.wait([prefetch])
                return delay
            await prefetch  # returns errors to no one: the resolution reports them
        assert st.spec is not None and st.sandbox is not None
        left = deadline.left(pod, st.last_status, self.clock.time())
        if left is not None and left <= 0:
            await self._deadline_exceeded(pod, st)
            return None
        at = hold.start_at(pod)
        if at is not None and not st.hold_over:
            handled, retry = await self.holds.sync(pod, st, at)
            if handled:
                return retry
        sandbox = st.sandbox
        out = StartOutcome()
        runtime = before = [] if none_yet and at is None else await self.backend.pod_containers(uid)
        killed = await self._kill_failed_probes(pod, runtime)
        if st.post_start_due:  # the start wave started it; its hook runs before the next starts
            await self.containers.post_start_due(pod, st, runtime, out)
        if killed or out.waiting:
            runtime = await self.backend.pod_containers(uid)
        now = self.clock.time()
        actions = compute_pod_actions(pod, runtime, self.restarts, now, killed)
        eph = compute_ephemeral_actions(
            pod, runtime, runs_processes=self.backend.capabilities.runs_processes, backend=self.backend.name
        )
        st.debugged = st.debugged or bool(ephemeral_specs(pod))
        await self._report_exits(pod, st, before, actions)
        apply_backoff(actions, self.restarts, now)
        # a start's own events wait until its runtime calls are done (events.py), then go out
        # beside the status write that shows it
        with self.events.status_first(bool(actions.start or eph.start)):
            await self.containers.kill_unknown(pod, runtime, actions.kill)
            await self.containers.resume(pod, st, runtime, eph.resume + actions.resume, out)
            # like kubelet: ephemeral containers first (they may debug a pod stuck initializing)
            await self.containers.start(pod, st, eph.start + actions.start, now, out)
        self._ephemeral_waiting(pod, st, eph.waiting, out)
        for name, (left, w) in actions.backoff.items():
            out.waiting[name] = w
            out.retry_in(left)
            if w.reason == "CrashLoopBackOff":
                self.events.record(pod, WARNING, "BackOff", "Back-off restarting failed container " + name)

        if out.started_any or actions.resume or eph.resume:
            runtime = await self.backend.pod_containers(uid)
            runtime = await self.containers.gc(runtime)
        finished = is_finished(pod, runtime)
        if finished and live_ephemeral(pod, runtime):
            # The pod is done: its debug containers end with it (kubelet's killPod), and its final
            # status shows them terminated.
            await self.terminator.stop_all(None, uid, 0)
            runtime = await self.backend.pod_containers(uid)
        if not finished:  # configMap/secret/downwardAPI/projected volumes follow their sources
            await self.containers.config.refresh_volumes(pod, st)
        self.probes.update(pod, runtime, sandbox.pod_ip, terminal=finished)
        status = self.status.compute(
            pod,
            runtime,
            out.waiting,
            sandbox_ready=not finished,
            pod_ip=sandbox.pod_ip,
            probes=self.probes.status(uid),
        )
        # A short container may already have exited at its first status: record its start too.
        annotations: dict[str, str] = {}
        if not st.annotated and (
            status.get("phase") == RUNNING
            or (finished and any(c.state in (ContainerState.RUNNING, ContainerState.EXITED) for c in runtime))
        ):
            # in the same request as the status (the first Running one, or the terminal one)
            annotations = self.status.start_annotations(pod, st, runtime)
            st.annotated = not annotations  # all there already (e.g. after a restart)
        if finished:
            self.probes.remove_pod(uid)
            # Back to the pool BEFORE the terminal status is visible: the workload's next pod
            # (created by its controller when it sees this one finish) finds the sandbox idle.
            st.final_status = status
            await self.terminator.release(pod, st)
        await self.status.patch(pod, st, status, annotations)
        if out.started_any and any(s.is_init for s in actions.start):
            out.retry_in(0.0)  # the next init step may already be possible
        if not finished:
            left = deadline.left(pod, st.last_status, self.clock.time())
            if left is not None:
                out.retry_in(max(0.0, left))  # fire at the deadline, no polling
        return out.retry

    async def _report_exits(
        self, pod: JSON, st: PodState, before: list[ContainerRuntimeState], actions: PodActions
    ) -> None:
        """kubelet reports a container's exit (``terminated``) before the sync that restarts it:
        write that step first when this sync restarts or backs off an exit no status showed yet
        (``provider.status_before``). Never an extra write otherwise."""
        last = st.last_status or pod.get("status")
        scheme = self.status.scheme
        acting_on = [s.name for s in actions.start if s.attempt > 0] + list(actions.backoff)
        if not unreported_exits(last, before, acting_on, scheme):
            return
        assert st.sandbox is not None
        uid = pod["metadata"]["uid"]
        status = self.status.compute(
            pod,
            before,
            reported_waiting(last, before, scheme),
            sandbox_ready=True,
            pod_ip=st.sandbox.pod_ip,
            probes=self.probes.status(uid),
        )
        await self.status.patch(pod, st, status)

    # -- ephemeral containers that cannot run ----------------------------------------------------

    def _ephemeral_waiting(
        self, pod: JSON, st: PodState, waiting: dict[str, Waiting], out: StartOutcome
    ) -> None:
        """Ephemeral containers that cannot start: their status says why, a Warning event says it
        once per reason (never silence)."""
        for name, w in waiting.items():
            out.waiting[name] = w
            if (name, w.reason) not in st.ephemeral_warned:
                st.ephemeral_warned |= {(name, w.reason)}
                self.events.record(pod, WARNING, "Failed", f"Error: {w.message}")
                EPHEMERAL_CONTAINERS.labels(result=w.reason).inc()

    async def _ephemeral_after_finish(self, pod: JSON, st: PodState) -> None:
        """Ephemeral containers added to a pod that has finished never run: a waiting status and a
        Warning event say so (kubelet says nothing at all)."""
        if not ephemeral_specs(pod):
            return
        statuses, new = finished_pod_statuses(pod)
        if not new:
            return
        for name in new:
            if (name, POD_NOT_RUNNING) not in st.ephemeral_warned:
                st.ephemeral_warned |= {(name, POD_NOT_RUNNING)}
                phase = (pod.get("status") or {}).get("phase", "")
                self.events.record(pod, WARNING, "Failed", f"Error: {not_running_message(name, phase)}")
                EPHEMERAL_CONTAINERS.labels(result=POD_NOT_RUNNING).inc()
        await self.status.patch(pod, st, {"ephemeralContainerStatuses": statuses})

    # -- activeDeadlineSeconds (kubelet's activeDeadlineHandler + killPod) ------------------------

    async def _deadline_exceeded(self, pod: JSON, st: PodState) -> None:
        """Past its deadline: kill the containers with the pod's grace period, then report the pod
        Failed/DeadlineExceeded (never terminal while a container may still run) and release it."""
        uid = pod["metadata"]["uid"]
        # compute the container statuses and conditions as for a pod already Failed
        failed = {**pod, "status": {**(pod.get("status") or {}), "phase": FAILED}}
        # Like kubelet: unready (PodFailed) at once, out of its Services during the grace period;
        # the phase stays until the containers are stopped.
        assert st.sandbox is not None
        running = await self.backend.pod_containers(uid)
        before = self.status.compute(
            failed, running, {}, sandbox_ready=True, pod_ip=st.sandbox.pod_ip, probes=self.probes.status(uid)
        )
        await self.status.patch(pod, st, terminal_pending(before, st.last_status or pod.get("status")))
        self.probes.remove_pod(uid)
        self.events.record(pod, NORMAL, deadline.REASON, deadline.MESSAGE)
        await self.terminator.stop_all(pod, uid, termination_grace_seconds(pod))
        runtime = await self.backend.pod_containers(uid)
        status = self.status.compute(failed, runtime, {}, sandbox_ready=False)
        status.update(reason=deadline.REASON, message=deadline.MESSAGE)
        st.final_status = status
        await self.terminator.release(pod, st)
        await self.status.patch(pod, st, status)

    async def _kill_failed_probes(self, pod: JSON, runtime: list[ContainerRuntimeState]) -> frozenset[str]:
        """Kill the running containers whose liveness or startup probe failed (kubelet's
        computePodActions); ``compute_pod_actions`` then restarts them (unless restartPolicy is
        Never) with the usual back-off. The names of the containers killed."""
        kills = self.probes.kills(pod, runtime)
        by_id = {c.container_id: c for c in runtime}
        for k in kills:
            await self.terminator.kill_container(pod, by_id[k.container_id], k.grace_seconds, k.message)
        return frozenset(k.container for k in kills)

    async def _finished_before_restart(
        self, pod: JSON, st: PodState, before: list[ContainerRuntimeState]
    ) -> bool:
        """After a restart: a pod whose containers finished and were scrubbed away (the backend
        kept their final states, ``before``) gets its terminal status, never a second run."""
        uid = pod["metadata"]["uid"]
        if (
            before
            and is_finished(pod, before)
            and not any(s.pod_uid == uid for s in await self.backend.list_sandboxes())
        ):
            status = self.status.compute(pod, before, {}, sandbox_ready=False)
            st.final_status = status
            st.released = True
            await self.status.patch(pod, st, status)
            return True
        return False

    async def _sandbox_for(self, pod: JSON, st: PodState) -> tuple[bool, float | None, bool]:
        """A sandbox for a pod that has none: (stop the sync, retry delay, none of its containers
        exist yet). Its first sync asks the runtime for the pod's containers first (a pod that
        finished before a restart is not run again); found none, it has none after getting its
        sandbox too (nothing but this serialized sync creates them): the caller need not ask."""
        found: list[ContainerRuntimeState] | None = None
        if not st.checked_finished:
            st.checked_finished = True
            found = await self.backend.pod_containers(pod["metadata"]["uid"])
            if await self._finished_before_restart(pod, st, found):
                return True, None, False
        delay = await self._acquire_sandbox(pod, st)
        if delay is not None:
            return True, delay, False
        return False, None, found == []

    async def _acquire_sandbox(self, pod: JSON, st: PodState) -> float | None:
        """A sandbox for the pod (warm from the pool when one is idle); the retry delay on failure."""
        uid = pod["metadata"]["uid"]
        key = await self.owners.key(pod)
        st.spec = sandbox_spec(pod, key, self.pods_cfg.cluster_dns, self.pods_cfg.cluster_domain)
        st.spec.scratch_dirs = scratch_dirs(pod, self.volumes_dir, self.memory_dir)
        st.spec.single_use = single_use(key)
        try:
            st.sandbox = await self.backend.acquire_sandbox(st.spec)
            st.released = False
        except BackendError as e:
            self.events.record(
                pod, WARNING, "FailedCreatePodSandBox", f"Failed to create pod sandbox: {e.message}"
            )
            await self.status.write(pod, st, [], {}, sandbox_ready=False)
            return self.restarts.next(f"{uid}/{SANDBOX_BACKOFF_KEY}", self.clock.time())
        return None

    def _forget(self, uid: str) -> None:
        self.states.pop(uid, None)
        self.holds.forget(uid)
        self.probes.remove_pod(uid)
        self.restarts.forget_prefix(uid + "/")
        self.pulls.forget_prefix(uid + "/")
        self.config_retries.forget_prefix(uid + "/")
