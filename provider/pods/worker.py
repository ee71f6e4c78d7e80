"""The kubelet-like sync of one pod: admit, resolve, sandbox, images, containers, status.

One call of ``sync(uid)`` moves the pod one step towards its desired state and writes its
status when it changed; the work queue guarantees one sync per pod at a time. Decisions
are pure (provider.sync, provider.status); this module only does the I/O they ask for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provider.backoff import Backoff
from provider.config import WarmletConfig
from provider.events import NORMAL, WARNING, EventRecorder
from provider.kubeclient import STRATEGIC_MERGE_PATCH, ApiError, KubeClient
from provider.metrics import POD_START_LATENCY, POD_STARTS, STATUS_PATCHES
from provider.podspec import container_spec, sandbox_spec
from provider.resolve_env import ConfigError, resolve_env
from provider.resolve_source import ObjectSource
from provider.resolve_volumes import (
    MountError,
    container_mounts,
    etc_hosts,
    prepare_volumes,
    remove_pod_dir,
    resolv_conf,
    scratch_dirs,
    with_etc_mounts,
    write_etc_files,
)
from provider.status import (
    RUNNING,
    TERMINAL_PHASES,
    Waiting,
    compute_status,
    instances_by_name,
    rejected_status,
    status_changed,
)
from provider.sync import apply_backoff, backoff_key, compute_pod_actions, is_finished
from provider.timefmt import parse_rfc3339
from provider.validation import validate_pod
from provider.workload import OwnerResolver, direct_owner, single_use
from sandbox.backend import (
    Backend,
    BackendError,
    ContainerRuntimeState,
    ContainerSpec,
    ContainerStartInProgressError,
    ContainerState,
    PodLifecycleAware,
    PodSandboxSpec,
    RuntimeUnavailableError,
    SandboxInfo,
    StartLevel,
)

log = logging.getLogger(__name__)
JSON = dict[str, Any]

START_LEVEL_ANNOTATION = "warmlet.io/start-level"
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
CONFIG_RETRY_SECONDS = 2.0
# A container that cannot be configured (missing Secret/ConfigMap, bad subPath, failed mount) is
# retried with back-off doubling from CONFIG_RETRY_SECONDS up to this: never a hot loop.
CONFIG_RETRY_MAX_SECONDS = 30.0
# Image errors that are not pull failures: shown as their own reason, never as ImagePullBackOff.
PERSISTENT_IMAGE_ERRORS = frozenset({"InvalidImageName", "ErrImageNeverPull"})


@dataclass
class PodState:
    """What warmlet remembers about one pod between syncs (lost on restart, rebuilt by adoption)."""

    sandbox: SandboxInfo | None = None
    spec: PodSandboxSpec | None = None
    pulled_any: bool = False
    released: bool = False
    annotated: bool = False
    rejected: bool = False
    last_status: JSON | None = None
    image_errors: dict[str, tuple[str, float]] = field(default_factory=dict)  # key -> (error, when)
    # The terminal status computed when the pod finished: once its sandbox is released the pod
    # never runs again, even if a stale informer copy (not yet terminal) triggers another sync.
    final_status: JSON | None = None
    mount_event: str = ""
    checked_finished: bool = False  # looked for final states kept across a restart


class PodWorker:
    def __init__(
        self,
        cfg: WarmletConfig,
        client: KubeClient,
        backend: Backend,
        get_pod: Callable[[str], JSON | None],
        recorder: EventRecorder,
        owners: OwnerResolver,
        source: ObjectSource,
        node_allocatable: Mapping[str, str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
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
        self.scheme = backend.container_id_scheme
        self.host_ip = cfg.node.internal_ip
        self._annotations_forbidden_logged = False
        self.volumes_dir = Path(cfg.pods.volumes_dir)
        self.memory_dir = cfg.pods.memory_volumes_dir  # None: <volumes_dir>-memory (tmpfs mounts)

    # -- entry point ---------------------------------------------------------------------------

    async def sync(self, uid: str) -> float | None:
        pod = self.get_pod(uid)
        if pod is None:
            await self._cleanup(uid)
            return None
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            await self._terminate(pod)
            return None
        st = self.states.setdefault(uid, PodState())
        if (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
            await self._release(pod, st)
            await self._final_status_written(uid)
            return None
        if st.released:
            if st.final_status is not None:
                await self._patch_status(pod, st, st.final_status)  # e.g. the first write failed
            return None
        rejection = validate_pod(pod, self.cfg.pods.unsupported_policy)
        if rejection is not None:
            if not st.rejected:
                st.rejected = True
                self.events.record(pod, WARNING, rejection.reason, rejection.message)
                await self._patch_status(
                    pod, st, rejected_status(pod, rejection.reason, rejection.message, self.clock())
                )
            return None
        return await self._run(pod, st)

    # -- running ---------------------------------------------------------------------------------

    async def _run(self, pod: JSON, st: PodState) -> float | None:
        uid = pod["metadata"]["uid"]
        waiting: dict[str, Waiting] = {}
        retry: float | None = None
        if st.sandbox is None and not st.checked_finished:
            # After a restart: a pod whose containers finished and were scrubbed away (the
            # backend kept their final states) gets its terminal status, never a second run.
            st.checked_finished = True
            before = await self.backend.pod_containers(uid)
            if (
                before
                and is_finished(pod, before)
                and not any(s.pod_uid == uid for s in await self.backend.list_sandboxes())
            ):
                now = self.clock()
                status = compute_status(
                    pod, before, {}, now, sandbox_ready=False, host_ip=self.host_ip, scheme=self.scheme
                )
                st.final_status = status
                st.released = True
                await self._patch_status(pod, st, status)
                return None
        if st.sandbox is None:
            key = await self.owners.key(pod)
            st.spec = sandbox_spec(pod, key, self.cfg.pods.cluster_dns, self.cfg.pods.cluster_domain)
            st.spec.scratch_dirs = scratch_dirs(pod, self.volumes_dir, self.memory_dir)
            try:
                st.sandbox = await self.backend.acquire_sandbox(st.spec)
                st.released = False
            except BackendError as e:
                self.events.record(
                    pod, WARNING, "FailedCreatePodSandBox", f"Failed to create pod sandbox: {e.message}"
                )
                await self._write_status(pod, st, [], {}, sandbox_ready=False)
                delay = self.restarts.next(f"{uid}/__sandbox__", self.clock())
                return delay
        assert st.spec is not None
        sandbox = st.sandbox
        runtime = await self.backend.pod_containers(uid)
        now = self.clock()
        actions = compute_pod_actions(pod, runtime, self.restarts, now)
        apply_backoff(actions, self.restarts, now)
        for cid in actions.kill:
            log.warning(
                "killing container in unknown state before restarting it pod=%s container=%s",
                _name(pod),
                cid[:12],
            )
            cname = next((c.name for c in runtime if c.container_id == cid), "")
            self.events.record(
                pod, NORMAL, "Killing", f'Container {cname} is in "unknown" state, killing it before restart'
            )
            await self.backend.stop_container(cid, 0)
            await self.backend.remove_container(cid)
        for cid in actions.resume:
            try:
                await self.backend.start_container(cid)
            except RuntimeUnavailableError:
                raise  # the runtime is away: retried with back-off, the container is kept
            except ContainerStartInProgressError:
                # The StartContainer of a warmlet killed mid-call is still running in the
                # runtime: removing the container now could kill a process that did start.
                # Wait for its outcome (running, or exited with "context canceled").
                log.info("resume: start still in progress pod=%s container=%s", _name(pod), cid[:12])
                retry = _min(retry, 1.0)
                continue
            except BackendError as e:
                # A start cut short by a runtime restart leaves a container that never starts
                # (task half made: ALREADY_EXISTS, "io pipe copy"): it never ran, so remove it and
                # create it again with the same attempt (no restart counted), as a fresh start.
                log.warning("resume failed, recreating pod=%s container=%s err=%s", _name(pod), cid, e)
                await self.backend.stop_container(cid, 0)
                await self.backend.remove_container(cid)
                retry = _min(retry, 0.5)

        resolved: dict[str, ContainerSpec | Waiting] = {}
        if actions.start:
            resolved = await self._resolve(pod, st, [s.name for s in actions.start])
        started_any = False
        for start in actions.start:
            spec_or_wait = resolved[start.name]
            if isinstance(spec_or_wait, Waiting):
                waiting[start.name] = spec_or_wait
                retry = _min(retry, self.config_retries.next(f"{uid}/config/{start.name}", now))
                if start.is_init:
                    break
                continue
            self.config_retries.reset(f"{uid}/config/{start.name}")
            cspec = spec_or_wait
            pull_wait = await self._ensure_image(pod, st, cspec)
            if isinstance(pull_wait, tuple):
                waiting[start.name], delay = pull_wait
                retry = _min(retry, delay)
                if start.is_init:
                    break
                continue
            try:
                cid = await self.backend.create_container(sandbox, st.spec, cspec, start.attempt)
                self.events.record(pod, NORMAL, "Created", f"Created container {cspec.name}")
                await self.backend.start_container(cid)
                self.events.record(pod, NORMAL, "Started", f"Started container {cspec.name}")
                started_any = True
            except BackendError as e:
                reason = e.reason if e.reason != "RuntimeError" else "CreateContainerError"
                waiting[start.name] = Waiting(reason, e.message)
                self.events.record(pod, WARNING, "Failed", f"Error: {e.message}")
                retry = _min(retry, self.restarts.next(backoff_key(uid, start.name), now))
            if start.is_init:
                break
        for name, (left, w) in actions.backoff.items():
            waiting[name] = w
            retry = _min(retry, left)
            if w.reason == "CrashLoopBackOff":
                self.events.record(pod, WARNING, "BackOff", "Back-off restarting failed container " + name)

        if started_any or actions.resume:
            runtime = await self.backend.pod_containers(uid)
            runtime = await self._gc_containers(runtime)
        finished = is_finished(pod, runtime)
        status = compute_status(
            pod,
            runtime,
            waiting,
            self.clock(),
            sandbox_ready=not finished,
            pod_ip=sandbox.pod_ip,
            host_ip=self.host_ip,
            scheme=self.scheme,
        )
        # A short container may already have exited at its first status: record its start too.
        annotate = not st.annotated and (
            status.get("phase") == RUNNING
            or (finished and any(c.state in (ContainerState.RUNNING, ContainerState.EXITED) for c in runtime))
        )
        if annotate and finished:
            await self._annotate_started(pod, st)  # visible no later than the terminal phase
        if finished:
            # Back to the pool BEFORE the terminal status is visible: the workload's next pod
            # (created by its controller when it sees this one finish) finds the sandbox idle.
            st.final_status = status
            await self._release(pod, st)
        await self._patch_status(pod, st, status)
        if annotate and not finished:
            # After the status: Running is what users wait for; the annotations can follow.
            await self._annotate_started(pod, st)
        if started_any and any(s.is_init for s in actions.start):
            retry = _min(retry, 0.0)  # the next init step may already be possible
        return retry

    async def _gc_containers(self, runtime: list[ContainerRuntimeState]) -> list[ContainerRuntimeState]:
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

    async def _resolve(self, pod: JSON, st: PodState, names: list[str]) -> dict[str, ContainerSpec | Waiting]:
        """ContainerSpecs with env and mounts, or the reason a container must wait."""
        ip = st.sandbox.pod_ip if st.sandbox else ""
        spec = pod.get("spec") or {}
        out: dict[str, ContainerSpec | Waiting] = {}
        try:
            paths = await prepare_volumes(
                pod,
                self.volumes_dir,
                self.source,
                ip,
                self.host_ip,
                self.allocatable,
                allow_host_path=self.cfg.pods.unsupported_policy == "ignore",
                memory_dir=self.memory_dir,
            )
        except MountError as e:
            msg = f"MountVolume.SetUp failed: {e}"
            if st.mount_event != msg:
                st.mount_event = msg
                self.events.record(pod, WARNING, "FailedMount", msg)
            return {n: Waiting("ContainerCreating", msg) for n in names}
        etc: dict[str, str] = {}
        if st.spec is not None and not spec.get("hostNetwork") and self.backend.capabilities.runs_processes:
            etc = await asyncio.to_thread(self._etc_files, pod, st.spec, ip)
        inits = {c["name"] for c in spec.get("initContainers") or []}
        by_name = {
            c["name"]: c for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
        }
        for n in names:
            c = by_name[n]
            try:
                env = await resolve_env(pod, c, self.source, ip, self.host_ip, self.allocatable)
                mounts = with_etc_mounts(container_mounts(c, paths, {e.name: e.value for e in env}), etc)
                out[n] = container_spec(c, pod, env, mounts, n in inits)
            except (ConfigError, ValueError, KeyError, TypeError) as e:
                # ValueError & co.: a spec the apiserver accepted but warmlet cannot map (e.g. a
                # quantity out of range); a clear Waiting reason instead of an exception loop.
                msg = str(e) if isinstance(e, ConfigError) else f"invalid container spec: {e!r}"
                out[n] = Waiting("CreateContainerConfigError", msg)
                self.events.record(pod, WARNING, "Failed", f"Error: {msg}")
                continue
        return out

    def _etc_files(self, pod: JSON, spec: PodSandboxSpec, pod_ip: str) -> dict[str, str]:
        """This pod's own /etc/hosts, resolv.conf, hostname (never the reused sandbox's files)."""
        dns = spec.dns
        if dns.servers:
            resolv = resolv_conf(dns.servers, dns.searches, dns.options)
        else:  # dnsPolicy Default: the node's resolv.conf, as the runtime would copy it
            try:
                resolv = Path("/etc/resolv.conf").read_text()
            except OSError:
                resolv = ""
        hostname = spec.hostname or spec.name
        aliases = (pod.get("spec") or {}).get("hostAliases") or []
        return write_etc_files(
            self.volumes_dir,
            spec.uid,
            {
                "/etc/hosts": etc_hosts(hostname, pod_ip, aliases),
                "/etc/resolv.conf": resolv,
                "/etc/hostname": hostname + "\n",
            },
        )

    async def _ensure_image(self, pod: JSON, st: PodState, c: ContainerSpec) -> tuple[Waiting, float] | None:
        uid = pod["metadata"]["uid"]
        key = f"{uid}/image/{c.name}"
        now = self.clock()
        err = st.image_errors.get(key)
        left = self.pulls.remaining(key, err[1], now) if err and err[1] >= 0 else 0.0
        if err and left > 0:
            msg = f'Back-off pulling image "{c.image}": {err[0]}'
            self.events.record(pod, NORMAL, "BackOff", msg)
            return Waiting("ImagePullBackOff", msg), left
        t0 = time.monotonic()
        try:
            result = await self.backend.ensure_image(c.image, c.pull_policy)
        except BackendError as e:
            delay = self.pulls.next(key, now)
            if e.reason in PERSISTENT_IMAGE_ERRORS:
                # The reference itself is unusable (or pulling is forbidden): no pull happened, so
                # like kubelet show the reason as is (no ImagePullBackOff); events only once.
                if st.image_errors.get(key, ("", 0.0))[0] != e.message:
                    self.events.record(pod, WARNING, "InspectFailed", e.message)
                    self.events.record(pod, WARNING, "Failed", f"Error: {e.reason}")
                st.image_errors[key] = (e.message, -1.0)
                return Waiting(e.reason, e.message), delay
            st.image_errors[key] = (e.message, now)
            self.events.record(pod, WARNING, "Failed", e.message)
            self.events.record(pod, WARNING, "Failed", f"Error: {e.reason}")
            return Waiting(e.reason, e.message), delay
        st.image_errors.pop(key, None)
        self.pulls.reset(key)
        if result.pulled:
            st.pulled_any = True
            self.events.record(pod, NORMAL, "Pulling", f'Pulling image "{c.image}"')
            self.events.record(
                pod,
                NORMAL,
                "Pulled",
                f'Successfully pulled image "{c.image}" in {time.monotonic() - t0:.3f}s. '
                f"Image size: {result.size_bytes} bytes.",
            )
        else:
            self.events.record(
                pod, NORMAL, "Pulled", f'Container image "{c.image}" already present on machine'
            )
        return None

    # -- status ------------------------------------------------------------------------------------

    async def _write_status(
        self,
        pod: JSON,
        st: PodState,
        runtime: list[ContainerRuntimeState],
        waiting: dict[str, Waiting],
        *,
        sandbox_ready: bool,
        sandbox: SandboxInfo | None = None,
    ) -> JSON:
        status = compute_status(
            pod,
            runtime,
            waiting,
            self.clock(),
            sandbox_ready=sandbox_ready,
            pod_ip=sandbox.pod_ip if sandbox else "",
            host_ip=self.host_ip,
            scheme=self.scheme,
        )
        await self._patch_status(pod, st, status)
        return status

    async def _patch_status(self, pod: JSON, st: PodState, status: JSON) -> None:
        if not status_changed(pod.get("status"), status):
            return
        if st.last_status is not None and not status_changed(st.last_status, status):
            return  # already written; the watch has not caught up yet
        meta = pod["metadata"]
        try:
            await self.client.patch(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                {"metadata": {"uid": meta["uid"]}, "status": replace_ip_lists(status)},
                content_type=STRATEGIC_MERGE_PATCH,
            )
            STATUS_PATCHES.inc()
            st.last_status = {**(st.last_status or {}), **status}
            if status.get("phase") in TERMINAL_PHASES:
                await self._final_status_written(meta["uid"])
        except ApiError as e:
            if e.not_found or e.conflict:
                return  # the pod is gone or was replaced: the watch will tell
            raise

    async def _annotate_started(self, pod: JSON, st: PodState) -> None:
        """Start level + deletion cost, once per pod, and the start latency histogram."""
        st.annotated = True
        assert st.sandbox is not None
        if st.pulled_any:
            level = StartLevel.COLD
        elif st.sandbox.from_pool:
            level = StartLevel.WARM
        else:
            level = StartLevel.IMAGE_CACHED
        meta = pod["metadata"]
        anns = meta.get("annotations") or {}
        created = parse_rfc3339(meta.get("creationTimestamp"))
        if START_LEVEL_ANNOTATION not in anns:
            POD_STARTS.labels(level=level.value).inc()
            if created is not None:
                POD_START_LATENCY.labels(level=level.value).observe(max(0.0, self.clock() - created))
        patch: dict[str, str] = {}
        if anns.get(START_LEVEL_ANNOTATION) is None:
            patch[START_LEVEL_ANNOTATION] = level.value
        cost = self.cfg.pods.deletion_cost
        if cost is not None and anns.get(DELETION_COST_ANNOTATION) != str(cost):
            patch[DELETION_COST_ANNOTATION] = str(cost)
        if not patch:
            return
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

    # -- teardown ----------------------------------------------------------------------------------

    async def _stop_all(self, pod: JSON | None, uid: str, grace: float) -> None:
        runtime = await self.backend.pod_containers(uid)
        live = [c for c in runtime if c.state in (ContainerState.RUNNING, ContainerState.CREATED)]
        for c in live:
            if pod is not None and c.state == ContainerState.RUNNING:
                self.events.record(pod, NORMAL, "Killing", f"Stopping container {c.name}")
        if live:
            await asyncio.gather(*(self.backend.stop_container(c.container_id, grace) for c in live))

    async def _release(self, pod: JSON, st: PodState) -> None:
        """The pod finished: its sandbox goes back to the pool (containers never do)."""
        if st.released:
            return
        uid = pod["metadata"]["uid"]
        await self._stop_all(None, uid, 0)
        await self.backend.release_sandbox(uid, reusable=self._reusable(uid, pod))
        st.released = True
        st.sandbox = None
        await asyncio.to_thread(remove_pod_dir, self.volumes_dir, uid, self.memory_dir)

    async def _terminate(self, pod: JSON) -> None:
        """Graceful deletion: stop with the grace period, release, then delete with grace 0."""
        meta = pod["metadata"]
        uid = meta["uid"]
        spec = pod.get("spec") or {}
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        await self._stop_all(pod, uid, float(grace))
        await self.backend.release_sandbox(uid, reusable=self._reusable(uid, pod))
        await asyncio.to_thread(remove_pod_dir, self.volumes_dir, uid, self.memory_dir)
        await self._pod_gone(uid)
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
        self._forget(uid)

    async def _cleanup(self, uid: str) -> None:
        """The pod object is gone (force-deleted or deleted by us): make sure nothing is left."""
        await self._stop_all(None, uid, 0)
        await self.backend.release_sandbox(uid, reusable=self._reusable(uid, None))
        await asyncio.to_thread(remove_pod_dir, self.volumes_dir, uid, self.memory_dir)
        await self._pod_gone(uid)
        self._forget(uid)

    def _reusable(self, uid: str, pod: JSON | None) -> bool:
        """A bare pod's sandbox is keyed by the pod's own uid: pooled, no pod could ever reuse it."""
        st = self.states.get(uid)
        if st is not None and st.spec is not None:
            return not single_use(st.spec.workload_key)
        return pod is None or direct_owner(pod)[0] != "Pod"

    async def _final_status_written(self, uid: str) -> None:
        """Tell the backend the terminal status is in the API (it may forget persisted final states)."""
        if isinstance(self.backend, PodLifecycleAware):
            await self.backend.final_status_written(uid)

    async def _pod_gone(self, uid: str) -> None:
        """Tell the backend the pod object is gone (it may drop kept logs/final states)."""
        if isinstance(self.backend, PodLifecycleAware):
            await self.backend.pod_gone(uid)

    def _forget(self, uid: str) -> None:
        self.states.pop(uid, None)
        self.restarts.forget_prefix(uid + "/")
        self.pulls.forget_prefix(uid + "/")
        self.config_retries.forget_prefix(uid + "/")


def _min(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)


def _name(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def replace_ip_lists(status: JSON) -> JSON:
    """Strategic merge would MERGE podIPs/hostIPs (merge key ``ip``) with the old ones; a pod
    whose sandbox was recreated (e.g. after a restart lost the runtime) must REPLACE them."""
    out = dict(status)
    for key in ("podIPs", "hostIPs"):
        if key in out:
            out[key] = [*out[key], {"$patch": "replace"}]
    return out
