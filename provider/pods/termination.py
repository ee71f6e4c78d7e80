"""The end of a pod: stop its containers, give its sandbox back, remove its files.

Three ways a pod ends (kubelet's killPod and pod cleanup): it finished (``release``: the sandbox
goes back to the pool before the terminal status is visible), it is being deleted gracefully
(``terminate``: stop with the grace period, then delete the object with grace 0), or its object
is already gone (``cleanup``: make sure nothing is left).

A running container stopped gracefully (deletion, or a probe's kill: ``kill_container``) gets a
``Killing`` event, then its ``preStop`` hook within the grace period, then StopContainer with what
is left of the grace period (at least kubelet's minimum), as kubelet's killContainer. In a pod with
sidecars (restartable init containers), a sidecar is stopped only once every app container and
every later sidecar has stopped (kubelet's terminationOrdering): app containers' preStop hooks
still reach the sidecars they need.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from common.clock import SYSTEM, Clock
from provider.config import PodConfig
from provider.events import NORMAL, WARNING, EventRecorder
from provider.kubeclient import ApiError, KubeClient
from provider.pods.hooks import (
    PRE_STOP,
    HookRunner,
    container_spec,
    hook_handler,
    pre_stop_runs,
    run_within,
    stop_grace,
)
from provider.pods.state import JSON, PodState
from provider.resolve_volumes import remove_pod_dir
from provider.workload import direct_owner
from sandbox.backend import Backend, ContainerRuntimeState, ContainerState, PodLifecycleAware


def termination_prereqs(pod: Mapping[str, Any], running: Sequence[str]) -> dict[str, list[str]]:
    """Which running containers each sidecar must see stopped before it stops (pure; kubelet's
    newTerminationOrdering): every running app container, and the next later running sidecar.
    Only pods with a restartable init container have any order; app containers have none."""
    spec = pod.get("spec") or {}
    inits = spec.get("initContainers") or []
    if not any(c.get("restartPolicy") == "Always" for c in inits):
        return {}
    live = set(running)
    apps = [c["name"] for c in spec.get("containers") or [] if c["name"] in live]
    order: dict[str, list[str]] = {}
    later = ""
    for c in reversed(inits):
        if c.get("restartPolicy") != "Always":
            continue
        order[c["name"]] = apps + ([later] if later and later in live else [])
        later = c["name"]
    return order


class PodTerminator:
    def __init__(
        self,
        pods: PodConfig,
        client: KubeClient,
        backend: Backend,
        events: EventRecorder,
        states: Mapping[str, PodState],
        forget: Callable[[str], None],
        clock: Clock = SYSTEM,
    ) -> None:
        self.client = client
        self.backend = backend
        self.events = events
        self.states = states
        self.forget = forget
        self.volumes_dir = Path(pods.volumes_dir)
        self.memory_dir = pods.memory_volumes_dir
        self.clock = clock
        self.hooks = HookRunner(backend, events, clock)

    async def stop_all(self, pod: JSON | None, uid: str, grace: float) -> None:
        """Stop the pod's live containers in parallel; with ``pod``, running ones gracefully
        (event, preStop hook, grace period), else at once."""
        runtime = await self.backend.pod_containers(uid)
        live = [c for c in runtime if c.state in (ContainerState.RUNNING, ContainerState.CREATED)]
        if not live:
            return
        prereqs = termination_prereqs(pod or {}, [c.name for c in live]) if pod is not None else {}
        stopped = {c.name: asyncio.Event() for c in live}

        async def stop(c: ContainerRuntimeState) -> None:
            try:
                await self._stop(pod, c, grace, [stopped[n] for n in prereqs.get(c.name, [])])
            finally:
                stopped[c.name].set()

        await asyncio.gather(*(stop(c) for c in live))

    async def _stop(
        self, pod: JSON | None, c: ContainerRuntimeState, grace: float, after: list[asyncio.Event]
    ) -> None:
        if pod is not None and c.state == ContainerState.RUNNING:
            turn = self._turn(after) if after else None
            await self.kill_container(pod, c, grace, f"Stopping container {c.name}", turn)
        else:
            await self.backend.stop_container(c.container_id, grace)

    def _turn(self, after: list[asyncio.Event]) -> Callable[[float], Awaitable[float]]:
        """Wait (at most ``left`` seconds) until the containers this one stops after have stopped;
        the seconds waited."""

        async def wait(left: float) -> float:
            began = self.clock.monotonic()
            await run_within(self.clock, left, asyncio.gather(*(e.wait() for e in after)))
            return self.clock.monotonic() - began

        return wait

    async def kill_container(
        self,
        pod: JSON,
        c: ContainerRuntimeState,
        grace_seconds: float,
        message: str,
        turn: Callable[[float], Awaitable[float]] | None = None,
    ) -> None:
        """Kill one container gracefully (kubelet's killContainer): a Normal ``Killing`` event with
        ``message``, its preStop hook within the grace period (a failure: Warning
        ``FailedPreStopHook``, the stop goes on), then StopContainer with the rest of the grace
        period, at least kubelet's minimum (podspec.MIN_GRACE_SECONDS)."""
        self.events.record(pod, NORMAL, "Killing", message)
        elapsed = 0.0
        spec = container_spec(pod, c.name)
        handler = hook_handler(spec, PRE_STOP)
        if (
            spec is not None
            and handler is not None
            and c.state == ContainerState.RUNNING
            and pre_stop_runs(grace_seconds)
        ):
            began = self.clock.monotonic()
            finished, failure = await run_within(
                self.clock,
                grace_seconds,
                self.hooks.run(
                    pod, spec, c.container_id, PRE_STOP, handler, self._pod_ip(pod), grace_seconds
                ),
            )
            elapsed = self.clock.monotonic() - began
            if finished and failure is not None:
                # kubelet keeps the hook's message out of the event (it may carry secrets)
                self.events.record(pod, WARNING, "FailedPreStopHook", "PreStopHook failed")
        if turn is not None and grace_seconds - elapsed > 0:
            elapsed += await turn(grace_seconds - elapsed)  # a sidecar: after the app containers
        await self.backend.stop_container(c.container_id, stop_grace(grace_seconds, elapsed))

    def _pod_ip(self, pod: JSON) -> str:
        st = self.states.get(pod["metadata"]["uid"])
        if st is not None and st.sandbox is not None and st.sandbox.pod_ip:
            return st.sandbox.pod_ip
        return str((pod.get("status") or {}).get("podIP") or "")

    async def release(self, pod: JSON, st: PodState) -> None:
        """The pod finished: its sandbox goes back to the pool (containers never do)."""
        if st.released:
            return
        uid = pod["metadata"]["uid"]
        await self.stop_all(None, uid, 0)
        await self.backend.release_sandbox(uid, reusable=self.reusable(uid, pod))
        st.released = True
        st.sandbox = None
        await asyncio.to_thread(remove_pod_dir, self.volumes_dir, uid, self.memory_dir)

    async def terminate(
        self, pod: JSON, stopped: Callable[[JSON, list[ContainerRuntimeState]], Awaitable[None]] | None = None
    ) -> None:
        """Graceful deletion: stop with the grace period, report the stopped containers
        (``stopped``: their terminated states are written, as kubelet does before the object can
        go; a finalizer may keep it), release, then delete with grace 0."""
        meta = pod["metadata"]
        uid = meta["uid"]
        spec = pod.get("spec") or {}
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        await self.stop_all(pod, uid, float(grace))
        if stopped is not None:
            await stopped(pod, await self.backend.pod_containers(uid))
        await self.backend.release_sandbox(uid, reusable=self.reusable(uid, pod))
        await asyncio.to_thread(remove_pod_dir, self.volumes_dir, uid, self.memory_dir)
        await self.pod_gone(uid)
        try:
            await self.client.delete(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": uid},
                },
            )
        except ApiError as e:
            if not (e.not_found or e.conflict):
                raise
        self.forget(uid)

    async def cleanup(self, uid: str) -> None:
        """The pod object is gone (force-deleted or deleted by us): make sure nothing is left."""
        await self.stop_all(None, uid, 0)
        await self.backend.release_sandbox(uid, reusable=self.reusable(uid, None))
        await asyncio.to_thread(remove_pod_dir, self.volumes_dir, uid, self.memory_dir)
        await self.pod_gone(uid)
        self.forget(uid)

    def reusable(self, uid: str, pod: JSON | None) -> bool:
        """A bare pod's sandbox is keyed by the pod's own uid: pooled, no pod could ever reuse it.
        A sandbox an ephemeral (debug) container ran in may have been changed through it (its
        network namespace, say): it is never handed to another pod either."""
        st = self.states.get(uid)
        if (st is not None and st.debugged) or (
            pod is not None and (pod.get("spec") or {}).get("ephemeralContainers")
        ):
            return False
        if st is not None and st.spec is not None:
            return not st.spec.single_use
        return pod is None or direct_owner(pod)[0] != "Pod"

    async def pod_gone(self, uid: str) -> None:
        """Tell the backend the pod object is gone (it may drop kept logs/final states)."""
        if isinstance(self.backend, PodLifecycleAware):
            await self.backend.pod_gone(uid)
