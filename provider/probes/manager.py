"""The probe manager: one probe worker per (pod, container, kind), fed by the pod worker's syncs.

The pod worker calls :meth:`ProbeManager.update` with what the runtime reports after each sync;
the manager adds the probes of newly seen pods, keeps the latest view of their containers for the
probes to observe, and asks for another sync of the pod (``on_change``) whenever a probe's result
changes. The worker reads :meth:`status` (``started``/``ready`` per container) for the pod status
and :meth:`kills` (liveness/startup failures) for the containers it must kill and restart.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from common.clock import SYSTEM, Clock
from provider.events import WARNING, EventRecorder
from provider.probes import handlers, metrics
from provider.probes.container_status import RESTART_GRACE_SECONDS, Known, started_ready
from provider.probes.kill import Kill, kill_for_probe
from provider.probes.outcome import Outcome, ProbeResult
from provider.probes.scheduler import ProbeScheduler
from provider.probes.simulated import simulated_outcome
from provider.probes.spec import (
    SPEC_FIELDS,
    ExecAction,
    GRPCAction,
    HTTPGetAction,
    ProbeKind,
    ProbeSpec,
    container_probes,
)
from provider.probes.spec import probed_containers as _probed
from provider.probes.state import Observation, ProbeState, Result, Step, observe, record
from provider.status import TERMINAL_PHASES, instances_by_name
from sandbox.backend import Backend, ContainerExecutor, ContainerRuntimeState, ContainerState

log = logging.getLogger(__name__)

JSON = dict[str, Any]
Key = tuple[str, str, ProbeKind]  # (pod uid, container name, kind)

EXEC_LANE, NETWORK_LANE = "exec", "network"
DEFAULT_LANES = {EXEC_LANE: 16, NETWORK_LANE: 64}


def _result_for(p: _Probe | None, cid: str) -> Result | None:
    return p.state.result if p is not None and p.state.container_id == cid else None


def has_probes(pod: Mapping[str, Any]) -> bool:
    return any(c.get(f) is not None for c in _probed(pod) for f in SPEC_FIELDS.values())


@dataclass
class _Probe:
    uid: str
    container: Mapping[str, Any]
    spec: ProbeSpec
    state: ProbeState = field(default_factory=ProbeState)
    probing_id: str = ""  # the container ID the queued run is for


@dataclass
class _Pod:
    pod: Mapping[str, Any]
    latest: dict[str, ContainerRuntimeState] = field(default_factory=dict)
    pod_ip: str = ""
    terminal: bool = False


class ProbeManager:
    def __init__(
        self,
        backend: Backend,
        recorder: EventRecorder,
        on_change: Callable[[str], None],
        clock: Clock = SYSTEM,
        lanes: Mapping[str, int] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.backend = backend
        self.events = recorder
        self.on_change = on_change
        self.clock = clock
        self.rng = rng or random.Random()
        self.started = clock.monotonic()
        self.started_wall = clock.time()
        self.probes: dict[Key, _Probe] = {}
        self.pods: dict[str, _Pod] = {}
        self.scheduler: ProbeScheduler[Key] = ProbeScheduler(
            clock, self._tick, self._run, lanes or DEFAULT_LANES
        )
        self._session: aiohttp.ClientSession | None = None

    # -- fed by the pod worker ------------------------------------------------------------------

    def update(
        self,
        pod: Mapping[str, Any],
        runtime: Sequence[ContainerRuntimeState],
        pod_ip: str,
        terminal: bool = False,
    ) -> None:
        uid = (pod.get("metadata") or {}).get("uid", "")
        view = self.pods.get(uid)
        if view is None:
            if not has_probes(pod):
                return
            view = self.pods[uid] = _Pod(pod)
            now = self.clock.monotonic()
            for c in _probed(pod):
                for kind, spec in container_probes(c).items():
                    key = (uid, c.get("name", ""), kind)
                    self.probes[key] = _Probe(uid, c, spec)
                    jitter = spec.period > now - self.started  # kubelet: only right after its start
                    first = self.rng.random() * spec.period if jitter else 0.0
                    self.scheduler.add(key, spec.period, first)
        view.pod = pod
        view.latest = {name: runs[-1] for name, runs in instances_by_name(runtime).items()}
        view.pod_ip = pod_ip or view.pod_ip
        view.terminal = terminal or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES
        # kubelet's UpdatePodStatus: a running container not yet ready gets its readiness probed now.
        for name, inst in view.latest.items():
            key = (uid, name, ProbeKind.READINESS)
            p = self.probes.get(key)
            if (
                p is not None
                and inst.state == ContainerState.RUNNING
                and p.state.result != Result.SUCCESS
                and not p.state.on_hold
            ):
                self.scheduler.trigger(key)

    def remove_pod(self, uid: str) -> None:
        view = self.pods.pop(uid, None)
        for key in [k for k in self.probes if k[0] == uid]:
            self._drop(key, view)

    def status(self, uid: str) -> dict[str, tuple[bool, bool]]:
        """(started, ready) of each probed pod's containers (kubelet's UpdatePodStatus)."""
        view = self.pods.get(uid)
        if view is None:
            return {}
        return {
            c.get("name", ""): started_ready(self._known(uid, c.get("name", ""), view))
            for c in _probed(view.pod)
        }

    def _known(self, uid: str, name: str, view: _Pod) -> Known:
        latest = view.latest.get(name)
        if latest is None or latest.state != ContainerState.RUNNING:
            return Known(running=False)
        cid = latest.container_id
        startup = self.probes.get((uid, name, ProbeKind.STARTUP))
        readiness = self.probes.get((uid, name, ProbeKind.READINESS))
        old = view.pod.get("status") or {}
        prev: Mapping[str, Any] = next(
            (
                s
                for s in [*(old.get("containerStatuses") or []), *(old.get("initContainerStatuses") or [])]
                if s.get("name") == name
            ),
            {},
        )
        return Known(
            running=True,
            has_startup=startup is not None,
            startup=_result_for(startup, cid),
            has_readiness=readiness is not None,
            readiness=_result_for(readiness, cid),
            was_started=bool(prev.get("started")) and str(prev.get("containerID", "")).endswith(cid),
            pod_was_ready=any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in old.get("conditions") or []
            ),
            predates_manager=self._predates(latest),
        )

    def _predates(self, c: ContainerRuntimeState) -> bool:
        return c.started_at is not None and c.started_at < self.started_wall - RESTART_GRACE_SECONDS

    def kills(self, pod: Mapping[str, Any], runtime: Sequence[ContainerRuntimeState]) -> list[Kill]:
        """Running containers whose liveness or startup probe failed (kubelet kills them)."""
        uid = (pod.get("metadata") or {}).get("uid", "")
        out: list[Kill] = []
        for name, latest in {n: r[-1] for n, r in instances_by_name(runtime).items()}.items():
            if latest.state != ContainerState.RUNNING:
                continue
            for kind in (ProbeKind.LIVENESS, ProbeKind.STARTUP):
                p = self.probes.get((uid, name, kind))
                if (
                    p is not None
                    and p.state.container_id == latest.container_id
                    and p.state.result == Result.FAILURE
                ):
                    out.append(kill_for_probe(pod, p.container, latest.container_id, kind))
                    break
        return out

    # -- probing ----------------------------------------------------------------------------------

    def _observation(self, p: _Probe, view: _Pod) -> Observation:
        name = p.container.get("name", "")
        latest = view.latest.get(name)
        deleting = bool((view.pod.get("metadata") or {}).get("deletionTimestamp"))
        if latest is None:
            return Observation("", False, None, False, pod_terminal=view.terminal, deleting=deleting)
        running = latest.state == ContainerState.RUNNING
        started, _ = started_ready(self._known(p.uid, name, view))
        policy = (view.pod.get("spec") or {}).get("restartPolicy", "Always")
        sidecar = p.container.get("restartPolicy") == "Always"
        return Observation(
            container_id=latest.container_id,
            running=running,
            started_at=latest.started_at,
            started=started,
            terminated=latest.state == ContainerState.EXITED,
            will_restart=sidecar or policy != "Never",
            pod_terminal=view.terminal,
            deleting=deleting,
            predates_manager=self._predates(latest),
        )

    def _set(self, key: Key, p: _Probe, new: ProbeState) -> None:
        old = p.state
        p.state = new
        if (old.container_id, old.result) != (new.container_id, new.result):
            self.on_change(p.uid)

    def _tick(self, key: Key) -> str | None:
        p = self.probes.get(key)
        view = self.pods.get(key[0])
        if p is None or view is None:
            return None
        new, step = observe(
            p.state, p.spec.kind, self._observation(p, view), self.clock.time(), p.spec.initial_delay
        )
        self._set(key, p, new)
        if step == Step.STOP:
            self._drop(key, view)
            return None
        if step == Step.WAIT:
            return None
        if p.spec.handler is None:
            self._finish(key, p, view, Outcome(ProbeResult.UNKNOWN, error=p.spec.error), 0.0)
            return None
        if not self.backend.capabilities.runs_processes:
            latest = view.latest[p.container.get("name", "")]
            running_for = self.clock.time() - (latest.started_at or self.clock.time())
            sim = simulated_outcome(
                (view.pod.get("metadata") or {}).get("annotations") or {},
                p.spec.kind,
                p.container.get("name", ""),
                running_for,
            )
            if sim is not None or not isinstance(p.spec.handler, ExecAction):
                self._finish(key, p, view, sim or Outcome(ProbeResult.SUCCESS), 0.0)
                return None
        p.probing_id = new.container_id
        return EXEC_LANE if isinstance(p.spec.handler, ExecAction) else NETWORK_LANE

    async def _run(self, key: Key) -> None:
        p = self.probes.get(key)
        view = self.pods.get(key[0])
        if p is None or view is None:
            return
        cid, handler, timeout = p.probing_id, p.spec.handler, float(p.spec.timeout)
        t0 = self.clock.monotonic()
        if isinstance(handler, ExecAction):
            if isinstance(self.backend, ContainerExecutor):
                outcome = await handlers.run_exec(self.backend, cid, handler, timeout)
            else:
                outcome = Outcome(ProbeResult.UNKNOWN, error="the runtime cannot run commands in containers")
        elif isinstance(handler, HTTPGetAction):
            outcome = await handlers.run_http(self._http(), handler, view.pod_ip, timeout)
        elif isinstance(handler, GRPCAction):
            outcome = await handlers.run_grpc(handler, view.pod_ip, timeout)
        elif handler is not None:
            outcome = await handlers.run_tcp(handler, view.pod_ip, timeout)
        else:
            return
        if self.probes.get(key) is not p or p.state.container_id != cid:
            return  # the container was replaced (or the pod removed) while probing
        self._finish(key, p, view, outcome, self.clock.monotonic() - t0)

    def _finish(self, key: Key, p: _Probe, view: _Pod, outcome: Outcome, seconds: float) -> None:
        kind = p.spec.kind
        meta = view.pod.get("metadata") or {}
        if outcome.errored:
            msg = f"{kind.label} probe errored and resulted in {outcome.result.value} state: {outcome.error}"
            self.events.record(view.pod, WARNING, "Unhealthy", msg)
            return
        if outcome.result == ProbeResult.WARNING:
            self.events.record(
                view.pod, WARNING, "ProbeWarning", f"{kind.label} probe warning: {outcome.output}"
            )
        elif outcome.result == ProbeResult.FAILURE:
            self.events.record(view.pod, WARNING, "Unhealthy", f"{kind.label} probe failed: {outcome.output}")
        result = (
            Result.SUCCESS if outcome.result in (ProbeResult.SUCCESS, ProbeResult.WARNING) else Result.FAILURE
        )
        label = {
            ProbeResult.SUCCESS: metrics.SUCCESSFUL,
            ProbeResult.WARNING: metrics.SUCCESSFUL,
            ProbeResult.FAILURE: metrics.FAILED,
        }.get(outcome.result, metrics.UNKNOWN)
        metrics.observe(
            kind, label, key[1], meta.get("name", ""), meta.get("namespace", ""), p.uid, max(0.0, seconds)
        )
        self._set(key, p, record(p.state, kind, result, p.spec.success_threshold, p.spec.failure_threshold))

    def _drop(self, key: Key, view: _Pod | None) -> None:
        self.scheduler.remove(key)
        self.probes.pop(key, None)
        meta = (view.pod if view is not None else {}).get("metadata") or {}
        metrics.forget(key[2], key[1], meta.get("name", ""), meta.get("namespace", ""), key[0])

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def run(self) -> None:
        """The probe runners; cancel to stop (the HTTP session is closed)."""
        try:
            await self.scheduler.run()
        finally:
            if self._session is not None:
                await self._session.close()
