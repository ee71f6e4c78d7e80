"""Carrying out one pod's container actions (kubelet's kuberuntime_container, small).

Kills containers in the runtime's unknown state, resumes containers created but never started,
creates and starts the containers ``compute_pod_actions`` decided (config and image first), and
garbage-collects old exited instances.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from provider.backoff import Backoff
from provider.events import NORMAL, WARNING, EventRecorder
from provider.metrics import EPHEMERAL_CONTAINERS
from provider.pods.container_config import ContainerConfigResolver
from provider.pods.hooks import (
    POST_START,
    POST_START_TIMEOUT_SECONDS,
    container_spec,
    hook_handler,
    pod_deleting,
    run_unless,
)
from provider.pods.images import ImagePuller
from provider.pods.state import JSON, PodState, earliest, pod_name
from provider.pods.termination import PodTerminator
from provider.podspec import termination_grace_seconds
from provider.status import Waiting, instances_by_name
from provider.sync import Start, backoff_key
from sandbox.backend import (
    Backend,
    BackendError,
    ContainerRuntimeState,
    ContainerSpec,
    ContainerStartInProgressError,
    ContainerState,
    RuntimeUnavailableError,
)

log = logging.getLogger(__name__)

# A start still in progress in the runtime (a warmlet killed mid-call): ask again this soon.
START_IN_PROGRESS_RETRY_SECONDS = 1.0
# A running postStart hook is abandoned this soon after its pod is deleted.
POST_START_DELETION_CHECK_SECONDS = 1.0
# A half-made container was removed to be created again: retry this soon.
RECREATE_RETRY_SECONDS = 0.5


@dataclass
class StartOutcome:
    """What starting a pod's containers left to report and when to look again."""

    waiting: dict[str, Waiting] = field(default_factory=dict)
    retry: float | None = None
    started_any: bool = False

    def retry_in(self, seconds: float) -> None:
        self.retry = earliest(self.retry, seconds)


class ContainerStarter:
    def __init__(
        self,
        backend: Backend,
        events: EventRecorder,
        config: ContainerConfigResolver,
        images: ImagePuller,
        restarts: Backoff,
        config_retries: Backoff,
        terminator: PodTerminator,
        get_pod: Callable[[str], JSON | None] = lambda _: None,
    ) -> None:
        self.backend = backend
        self.terminator = terminator
        self.get_pod = get_pod
        self.events = events
        self.config = config
        self.images = images
        self.restarts = restarts
        self.config_retries = config_retries

    async def kill_unknown(self, pod: JSON, runtime: list[ContainerRuntimeState], cids: list[str]) -> None:
        for cid in cids:
            log.warning(
                "killing container in unknown state before restarting it pod=%s container=%s",
                pod_name(pod),
                cid[:12],
            )
            cname = next((c.name for c in runtime if c.container_id == cid), "")
            self.events.record(
                pod, NORMAL, "Killing", f'Container {cname} is in "unknown" state, killing it before restart'
            )
            await self.backend.stop_container(cid, 0)
            await self.backend.remove_container(cid)

    async def resume(
        self,
        pod: JSON,
        st: PodState,
        runtime: list[ContainerRuntimeState],
        cids: list[str],
        out: StartOutcome,
    ) -> None:
        """Start containers created but never started (created ahead for the start hold, or by a
        warmlet that died in between), each with its postStart hook before the next (kubelet)."""
        names = {c.container_id: c.name for c in runtime}
        for cid in cids:
            try:
                await self.backend.start_container(cid)
            except RuntimeUnavailableError:
                raise  # the runtime is away: retried with back-off, the container is kept
            except ContainerStartInProgressError:
                # The StartContainer of a warmlet killed mid-call is still running in the
                # runtime: removing the container now could kill a process that did start.
                # Wait for its outcome (running, or exited with "context canceled").
                log.info("resume: start still in progress pod=%s container=%s", pod_name(pod), cid[:12])
                out.retry_in(START_IN_PROGRESS_RETRY_SECONDS)
                continue
            except BackendError as e:
                # A start cut short by a runtime restart leaves a container that never starts
                # (task half made: ALREADY_EXISTS, "io pipe copy"): it never ran, so remove it and
                # create it again with the same attempt (no restart counted), as a fresh start.
                log.warning("resume failed, recreating pod=%s container=%s err=%s", pod_name(pod), cid, e)
                await self.backend.stop_container(cid, 0)
                await self.backend.remove_container(cid)
                out.retry_in(RECREATE_RETRY_SECONDS)
                continue
            out.started_any = True
            if cid in names:
                self.events.record(pod, NORMAL, "Started", f"Started container {names[cid]}")
                await self.post_start(pod, st, names[cid], cid, out)

    async def start(
        self, pod: JSON, st: PodState, starts: Sequence[Start], now: float, out: StartOutcome
    ) -> None:
        """Create and start the containers decided, in order; an init container stops the walk.
        An ephemeral container joins its target's process namespace (``Start.target_id``)."""
        uid = pod["metadata"]["uid"]
        assert st.sandbox is not None and st.spec is not None
        resolved: dict[str, ContainerSpec | Waiting] = {}
        if starts:
            resolved = await self.config.resolve(pod, st, [s.name for s in starts])
        for start in starts:
            spec_or_wait = resolved[start.name]
            if isinstance(spec_or_wait, Waiting):
                out.waiting[start.name] = spec_or_wait
                out.retry_in(self.config_retries.next(f"{uid}/config/{start.name}", now))
                if start.is_init:
                    break
                continue
            self.config_retries.reset(f"{uid}/config/{start.name}")
            cspec = spec_or_wait
            if start.is_ephemeral:
                cspec.target_container_id = start.target_id
            pull_wait = await self.images.ensure(pod, st, cspec)
            if isinstance(pull_wait, tuple):
                out.waiting[start.name], delay = pull_wait
                out.retry_in(delay)
                if start.is_init:
                    break
                continue
            try:
                cid = await self.backend.create_container(st.sandbox, st.spec, cspec, start.attempt)
                self.events.record(pod, NORMAL, "Created", f"Created container {cspec.name}")
                await self.backend.start_container(cid)
                self.events.record(pod, NORMAL, "Started", f"Started container {cspec.name}")
                out.started_any = True
                if start.is_ephemeral:
                    EPHEMERAL_CONTAINERS.labels(result="started").inc()
                await self.post_start(pod, st, cspec.name, cid, out)
            except BackendError as e:
                reason = e.reason if e.reason != "RuntimeError" else "CreateContainerError"
                out.waiting[start.name] = Waiting(reason, e.message)
                self.events.record(pod, WARNING, "Failed", f"Error: {e.message}")
                if start.is_ephemeral:
                    EPHEMERAL_CONTAINERS.labels(result=reason).inc()
                out.retry_in(self.restarts.next(backoff_key(uid, start.name), now))
            if start.is_init:
                break

    async def post_start_due(
        self, pod: JSON, st: PodState, runtime: list[ContainerRuntimeState], out: StartOutcome
    ) -> None:
        """The postStart hook of the container the start wave started last for this pod (the wave
        stops at a container with a hook: its pod's sync runs it before starting the next)."""
        name, st.post_start_due = st.post_start_due, ""
        running = [c for c in runtime if c.name == name and c.state == ContainerState.RUNNING]
        if running:
            await self.post_start(pod, st, name, running[-1].container_id, out)

    async def post_start(self, pod: JSON, st: PodState, name: str, cid: str, out: StartOutcome) -> None:
        """Run the container's postStart hook before anything reports it Running (the pod's status
        is written after this sync step). A failure: Warning ``FailedPostStartHook``, the container
        is killed (preStop included) and restarts per restartPolicy; its status says why."""
        spec = container_spec(pod, name)
        handler = hook_handler(spec, POST_START)
        if spec is None or handler is None:
            return
        uid = pod["metadata"]["uid"]
        pod_ip = st.sandbox.pod_ip if st.sandbox is not None else ""
        hooks = self.terminator.hooks
        hook = hooks.run(pod, spec, cid, POST_START, handler, pod_ip, POST_START_TIMEOUT_SECONDS)
        finished, failure = await run_unless(
            self.terminator.clock,
            hook,
            lambda: pod_deleting(self.get_pod(uid)),
            POST_START_DELETION_CHECK_SECONDS,
        )
        if finished and failure is None:
            return
        # kubelet keeps the hook's message out of the event (it may carry secrets)
        self.events.record(pod, WARNING, "FailedPostStartHook", "PostStartHook failed")
        if not finished:
            # The pod is being deleted (kubelet cancels the hook with the sync): the deletion's
            # own stop (preStop, grace period) follows in the next sync.
            log.info("postStart abandoned: pod deleted pod=%s container=%s", pod_name(pod), name)
            return
        running = ContainerRuntimeState(
            container_id=cid, pod_uid=pod["metadata"]["uid"], name=name, state=ContainerState.RUNNING
        )
        await self.terminator.kill_container(
            pod, running, termination_grace_seconds(pod), "FailedPostStartHook"
        )
        policy = spec.get("restartPolicy") or (pod.get("spec") or {}).get("restartPolicy") or "Always"
        if policy != "Never":
            out.waiting[name] = Waiting("PostStartHookError", failure)

    async def gc(self, runtime: list[ContainerRuntimeState]) -> list[ContainerRuntimeState]:
        """Keep the latest two instances per container (current + lastState), like kubelet's GC."""
        keep: list[ContainerRuntimeState] = []
        for runs in instances_by_name(runtime).values():
            for old in runs[:-2]:
                if old.state == ContainerState.EXITED:
                    await self.backend.remove_container(old.container_id)
                else:
                    keep.append(old)
            keep.extend(runs[-2:])
        return keep
