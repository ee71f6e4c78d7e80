"""Preparing a held pod ahead of its instant, and handing it back to its sync after its start wave.

The I/O half of the start hold (the decisions are in provider/pods/hold.py, the timing in
provider/pods/start_wave.py). For a pod with ``warmlet.io/start-at`` still ahead: its sandbox is
already acquired by the pod worker; here every image is made present, volumes and env are
resolved, each app container is created (``Created`` event) but not started, the held status is
written (Pending, containers waiting ``StartHeld``) and the pod joins the wave of its instant. A
restart during the hold finds the created containers in the runtime and holds them again (never a
second create). Once the instant has come, or something of the pod already ran, the pod is an
ordinary pod: its sync starts whatever is created and not started, once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from common.clock import SYSTEM, Clock
from provider.events import NORMAL, WARNING, EventRecorder
from provider.pods import hold
from provider.pods.containers import ContainerStarter
from provider.pods.start_wave import HeldPod, StartWave
from provider.pods.state import JSON, PodState, earliest, pod_name
from provider.pods.status_writer import StatusWriter
from provider.status import Waiting
from provider.sync import backoff_key
from sandbox.backend import Backend, BackendError, ContainerSpec

log = logging.getLogger(__name__)


class Precreator:
    def __init__(
        self,
        backend: Backend,
        events: EventRecorder,
        containers: ContainerStarter,
        status: StatusWriter,
        states: dict[str, PodState],
        get_pod: Callable[[str], JSON | None],
        request_sync: Callable[[str], None],
        concurrency: int,
        clock: Clock = SYSTEM,
        adaptive: bool = False,
    ) -> None:
        self.backend = backend
        self.events = events
        self.containers = containers
        self.status = status
        self.states = states
        self.get_pod = get_pod
        self.request_sync = request_sync
        self.clock = clock
        self.wave = StartWave(backend, concurrency, self._released, clock, adaptive)

    async def sync(self, pod: JSON, st: PodState, at: hold.StartAt) -> tuple[bool, float | None]:
        """(handled, retry): handled, the pod's sync ends here (held, being started, or preparing
        with ``retry``); not handled, the pod is an ordinary pod from now on."""
        uid = pod["metadata"]["uid"]
        if at.instant is None:
            st.hold_over = True
            self.events.record(pod, WARNING, hold.INVALID_REASON, at.error)
            return False, None
        held = self.wave.holding(uid)
        if self.wave.starting(uid) or held == at.instant:
            return True, None  # held, or its wave is under way: the wave hands it back
        runtime = await self.backend.pod_containers(uid)
        if hold.decide(at, runtime, self.clock.time()) is not hold.Hold.PREPARE:
            self.wave.forget(uid)
            st.hold_over = True
            return False, None
        return await self._prepare(pod, st, at.instant)

    async def _prepare(self, pod: JSON, st: PodState, instant: float) -> tuple[bool, float | None]:
        uid = pod["metadata"]["uid"]
        assert st.sandbox is not None and st.spec is not None
        now = self.clock.time()
        waiting: dict[str, Waiting] = {}
        retry: float | None = None
        resolved = await self.containers.config.resolve(pod, st, hold.all_names(pod))
        specs: dict[str, ContainerSpec] = {}
        for name, spec_or_wait in resolved.items():
            if isinstance(spec_or_wait, Waiting):
                waiting[name] = spec_or_wait
                retry = earliest(retry, self.containers.config_retries.next(f"{uid}/config/{name}", now))
                continue
            self.containers.config_retries.reset(f"{uid}/config/{name}")
            pull_wait = await self.containers.images.ensure(pod, st, spec_or_wait)
            if pull_wait is not None:
                waiting[name], delay = pull_wait
                retry = earliest(retry, delay)
                continue
            specs[name] = spec_or_wait
        runtime = await self.backend.pod_containers(uid)
        for name in hold.to_create(pod, runtime):
            if name not in specs:
                continue
            try:
                await self.backend.create_container(st.sandbox, st.spec, specs[name], 0)
                self.events.record(pod, NORMAL, "Created", f"Created container {name}")
            except BackendError as e:
                reason = e.reason if e.reason != "RuntimeError" else "CreateContainerError"
                waiting[name] = Waiting(reason, e.message)
                self.events.record(pod, WARNING, "Failed", f"Error: {e.message}")
                retry = earliest(retry, self.containers.restarts.next(backoff_key(uid, name), now))
        runtime = await self.backend.pod_containers(uid)
        status = self.status.compute(
            pod,
            runtime,
            {**hold.held_waiting(pod, instant), **waiting},
            sandbox_ready=True,
            pod_ip=st.sandbox.pod_ip,
        )
        await self.status.patch(pod, st, status)
        if waiting:
            return True, retry  # not ready to hold: tried again (an ordinary start once past)
        if self.clock.time() >= instant:  # the instant came while preparing: start now
            st.hold_over = True
            return False, None
        ids, hook = hold.wave_part(pod, runtime)
        names = {c.container_id: c.name for c in runtime}
        self.wave.hold(HeldPod(uid, instant, [(names[i], i) for i in ids], hook))
        st.precreated = not hold.has_init(pod)
        log.info(
            "pod held pod=%s until=%s containers=%d", pod_name(pod), hold.format_millis(instant), len(ids)
        )
        return True, None

    def _released(self, p: HeldPod) -> None:
        """Its wave is over: the pod's sync takes over (postStart of ``p.hook``, the status, ...)."""
        st = self.states.get(p.uid)
        if st is not None:
            st.hold_over = True
            st.post_start_due = p.hook if p.hook and p.hook in p.started else ""
        pod = self.get_pod(p.uid)
        if pod is not None:
            for name in p.started:
                self.events.record(pod, NORMAL, "Started", f"Started container {name}")
        self.request_sync(p.uid)

    def forget(self, uid: str) -> None:
        self.wave.forget(uid)

    async def close(self) -> None:
        await self.wave.close()
