"""The Backend protocol over CRI (containerd/CRI-O): real sandboxes, a warm pool, an image cache.

Mapping follows kubelet (see ``cri_mapping``). What is specific to warmlet:

- Sandboxes are reused by pods of the same workload key (``pool.WarmPool``). CRI fixes a sandbox's
  metadata at RunPodSandbox, so warmlet tracks "pod uid -> sandbox" itself (JSON state file plus
  the ``warmlet.io/pod-uid`` label on every container) and sends the CURRENT pod's PodSandboxConfig
  with every CreateContainer: containerd 1.6 joins ``log_directory`` of that request with the
  container's ``log_path`` (verified), so logs land in the new pod's kubelet-style directory. If a
  runtime ignores it, the backend links the expected path to the real file.
- On reuse a sandbox is scrubbed: every container stopped and removed, any process left in its
  network namespace other than the pause tree killed, the pod's scratch (emptyDir) dirs wiped, and
  its hostname reset to the next pod's.
- A PLEG-like loop lists containers every ``poll_interval_seconds`` and tells subscribers which pod
  changed. On start the backend adopts what runs (labels + state file) instead of recreating it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cachetools import LRUCache

from proto import cri_pb2 as pb
from sandbox import cri_log
from sandbox import cri_mapping as m
from sandbox.backend import (
    BackendCapabilities,
    BackendError,
    BackendHealth,
    ContainerRuntimeState,
    ContainerSpec,
    ContainerState,
    CreateContainerError,
    ImageResult,
    NodeUsage,
    PodChangeCallback,
    PodSandboxSpec,
    PodUsage,
    PullPolicy,
    RunSandboxError,
    RuntimeUnavailableError,
    SandboxInfo,
)
from sandbox.cri_client import CriCallError, CriClient
from sandbox.cri_relay import DEFAULT_LINGER_SECONDS, RelayProcess, upstream_path, wait_for_relay_exit
from sandbox.images import ImageCache, ImageInfo
from sandbox.log_rotation import ContainerLogRotator
from sandbox.pool import SandboxRecord, WarmPool
from sandbox.pool_policy import EvictReason, PoolDefaults

log = logging.getLogger("warmlet.cri")

STATE_FILE = "cri-pool.json"
DEFAULT_CGROUP_BASE = ""  # empty: let the runtime place cgroups (no pod cgroup to clean up)
RELAY_FILE = "cri-relay.json"  # in state_dir: pid + name of the running warmlet's CRI relay
ORPHAN_SWEEP_SECONDS = 15.0
ORPHAN_MIN_AGE_SECONDS = 20.0  # younger sandboxes may be a RunPodSandbox whose answer is on its way
PIDS_CGROUP_BASE = "/warmlet"  # pod cgroups' parent when a pids limit is set and cgroup_parent is not


class CriSettings(Protocol):
    """The fields of provider.config.CRIConfig this backend reads (duck-typed: no provider import)."""

    runtime_endpoint: str
    image_endpoint: str
    call_timeout_seconds: float
    pull_timeout_seconds: float
    max_parallel_pulls: int
    cgroup_parent: str
    poll_interval_seconds: float
    image_gc_high_bytes: int
    image_gc_min_age_seconds: float


class PoolSettings(Protocol):
    enabled: bool
    min_per_workload: int
    max_per_workload: int
    idle_ttl_seconds: float
    global_max_sandboxes: int
    global_max_memory_bytes: int


class CriImageRuntime:
    """``images.ImageRuntime`` over the CRI image service."""

    def __init__(self, client: CriClient) -> None:
        self.client = client

    @staticmethod
    def _info(img: pb.Image) -> ImageInfo:
        return ImageInfo(
            id=img.id,
            size=int(img.size),
            tags=tuple(img.repo_tags),
            digests=tuple(img.repo_digests),
            pinned=bool(img.pinned),
        )

    async def status(self, image: str) -> ImageInfo | None:
        img = await self.client.image_status(image)
        return self._info(img) if img is not None else None

    async def pull(self, image: str) -> str:
        return await self.client.pull_image(image)

    async def list(self) -> list[ImageInfo]:
        return [self._info(i) for i in await self.client.list_images()]

    async def remove(self, image_id: str) -> None:
        await self.client.remove_image(image_id)


@dataclass
class _SandboxRuntime:
    """Per-sandbox facts read from the runtime once (pause pid, net counters baseline)."""

    pause_pid: int = 0
    net_baseline: tuple[int, int] = (0, 0)
    cgroup_parent: str = ""


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _ns_inode(pid: int, ns: str = "net") -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{ns}").st_ino
    except OSError:
        return None


def _leftover_pids(pause_pid: int) -> list[int]:
    """Processes in the pause's network namespace that are not the pause or its descendants."""
    target = _ns_inode(pause_pid)
    if target is None:
        return []
    parents: dict[int, int] = {}

    def parent(pid: int) -> int | None:
        # Read on demand: only members and their ancestors, not every process on the node
        # (reading /proc/<pid>/stat of all of them made a scrub cost ~0.1 s of CPU).
        if pid not in parents:
            try:
                stat = _read(f"/proc/{pid}/stat")
                parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                return None
        return parents[pid]

    members: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid != pause_pid and _ns_inode(pid) == target and parent(pid) is not None:
            members.append(pid)

    def descends_from_pause(pid: int) -> bool:
        seen = 0
        while pid > 1 and seen < 64:
            if pid == pause_pid:
                return True
            pid = parent(pid) or 0
            seen += 1
        return False

    return [p for p in members if not descends_from_pause(p)]


def _kill_pids(pids: Iterable[int]) -> list[int]:
    killed = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def _pids_in_cgroup_of(container_id: str) -> list[int]:
    """Processes whose cgroup path names the container (runc puts each container in its own)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if container_id in _read(f"/proc/{entry}/cgroup"):
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def task_never_started(container_id: str, task_dir: str | None) -> bool | None:
    """Whether the container's task provably never ran its process: True when containerd never
    made the task (no bundle directory ``task_dir``) or every process in its cgroup is still
    runc's init (``runc create`` done, ``runc start`` not); False when one is not; None when
    nothing is left to tell (``task_dir`` None: where tasks live is not known)."""
    if task_dir is not None and not os.path.isdir(task_dir):
        return True
    comms = []
    for pid in _pids_in_cgroup_of(container_id):
        with contextlib.suppress(OSError):
            comms.append(_read(f"/proc/{pid}/comm").strip())
    if not comms:
        return None
    return all(c.startswith("runc:[") for c in comms)


def _remove_cgroup(parent: str) -> None:
    """rmdir ``parent`` in every mounted cgroup hierarchy (v1 controllers and the unified one)."""
    rel = parent.strip("/")
    if not rel:
        return
    roots = ["/sys/fs/cgroup"]
    with contextlib.suppress(OSError):
        roots += [os.path.join("/sys/fs/cgroup", d) for d in os.listdir("/sys/fs/cgroup")]
    for root in roots:
        path = os.path.join(root, rel)
        if os.path.isdir(path):
            with contextlib.suppress(OSError):
                os.rmdir(path)


def _set_pods_max(parent: str, limit: int) -> str:
    """Create the pod's cgroup (pids controller) and write ``pids.max`` before the sandbox starts
    in it (see ``cri_mapping.pids_max_files`` for why not through CRI); returns the file."""
    v1 = os.path.isdir("/sys/fs/cgroup/pids")
    target, controls = m.pids_max_files(parent, v1=v1)
    for ctl in controls:  # cgroup v2: enable the pids controller down to the pod's parent
        os.makedirs(os.path.dirname(ctl), exist_ok=True)
        with open(ctl, "w") as f:
            f.write("+pids")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "w") as f:
        f.write(str(limit))
    return target


def interrupted_start(state: ContainerRuntimeState) -> bool:
    """A container whose start was cancelled by its caller (a warmlet killed mid-StartContainer)
    while containerd was still CREATING the task (shim + ``runc create``): the process never ran,
    so starting it again runs it once. A start cancelled later ("failed to start containerd task")
    may have run the process before containerd killed it: that one stays a StartError (exit 128),
    as kubelet reports it, and is never run again (at most once)."""
    msg = state.message or ""
    return (
        state.state == ContainerState.EXITED
        and not state.started_at
        and "failed to create containerd task" in msg
        # the caller's context ended: cancelled, or the shim's start command killed with it
        and ("context canceled" in msg or "signal: killed" in msg)
    )


def _wipe_dir(path: str) -> None:
    """Remove the contents of a directory (not the directory: mounts may point at it)."""
    p = Path(path)
    if not p.is_absolute() or p == Path("/") or p.is_symlink() or not p.is_dir():
        return
    for child in p.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                child.unlink()


def _wipe_ipc(pause_pid: int, shm_dir: str = "") -> None:
    """Empty the sandbox's /dev/shm and remove its SysV IPC objects.

    The runtime's per-sandbox shm tmpfs (containerd: ``<stateDir>/sandboxes/<id>/shm``) is what
    every container of the sandbox mounts at /dev/shm; the pause's view is a fallback.
    """
    import subprocess

    if shm_dir and os.path.isdir(shm_dir):
        _wipe_dir(shm_dir)
    _wipe_dir(f"/proc/{pause_pid}/root/dev/shm")
    try:
        subprocess.run(
            ["nsenter", "-t", str(pause_pid), "-i", "ipcrm", "--all"],
            check=False,
            capture_output=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("sysv ipc cleanup failed pause_pid=%d error=%s", pause_pid, e)


class CriBackend:
    """Backend over a CRI runtime with a per-workload warm pool (see module docstring)."""

    name = "cri"
    capabilities = BackendCapabilities(runs_processes=True)

    def __init__(
        self,
        cri: CriSettings,
        pool: PoolSettings,
        log_dir: str | os.PathLike[str],
        state_dir: str | os.PathLike[str],
        *,
        maintenance_interval: float = 5.0,
        image_gc_interval: float = 60.0,
        instance: str = "",
    ) -> None:
        self.cri = cri
        self._runtime_name = "containerd"  # until the runtime's Version answers (start)
        self.instance = instance
        self.selector = m.managed_selector(instance)
        self.log_dir = os.fspath(log_dir)
        self.state_dir = Path(state_dir)
        self.client = CriClient(
            cri.runtime_endpoint,
            cri.image_endpoint,
            call_timeout=cri.call_timeout_seconds,
            pull_timeout=cri.pull_timeout_seconds,
        )
        self.images = ImageCache(
            CriImageRuntime(self.client),
            max_parallel_pulls=cri.max_parallel_pulls,
            gc_budget_bytes=cri.image_gc_high_bytes,
            gc_min_age_seconds=cri.image_gc_min_age_seconds,
        )
        self.defaults = PoolDefaults(
            enabled=pool.enabled,
            min_per_workload=pool.min_per_workload,
            max_per_workload=pool.max_per_workload,
            idle_ttl_seconds=pool.idle_ttl_seconds,
            global_max_sandboxes=pool.global_max_sandboxes,
            global_max_memory_bytes=pool.global_max_memory_bytes,
            concurrency_window_seconds=max(60.0, pool.idle_ttl_seconds),
        )
        self.pool = WarmPool(self, self.defaults, state_file=self.state_dir / STATE_FILE)
        self.maintenance_interval = maintenance_interval
        self.image_gc_interval = image_gc_interval
        self._subscribers: list[PodChangeCallback] = []
        self._sb: dict[str, _SandboxRuntime] = {}
        self._specs: dict[str, PodSandboxSpec] = {}  # pod uid -> spec (for create_container)
        # finished pods whose sandbox went back to the pool: final container states (logs stay)
        self._finished: dict[str, tuple[PodSandboxSpec, list[ContainerRuntimeState]]] = {}
        # containers already counted as OOMKilled (seen by the PLEG or by a pod sync, whichever first)
        self._oom_counted: LRUCache[str, bool] = LRUCache(maxsize=8192)
        self._pleg_snapshot: dict[str, tuple[int, str]] = {}
        self._start_times: dict[str, float] = {}  # container id -> started_at (seconds)
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._runtime_info: dict[str, Any] = {}
        self._node_cpu_prev: tuple[float, int] | None = None
        self._node_memory = self._read_node_memory()
        self.pids_limit = int(getattr(cri, "pod_pids_limit", -1))
        self._creating: dict[str, int] = {}  # pod uid -> RunPodSandbox calls in flight
        self._retry_on_recovery: set[str] = set()  # pods a call failed for while the runtime was away
        self.relay: RelayProcess | None = None  # keeps calls in flight alive if warmlet dies
        max_size = cri_log.parse_size(getattr(cri, "container_log_max_size", "10Mi"))
        self.log_rotator: ContainerLogRotator | None = None
        if max_size > 0:
            self.log_rotator = ContainerLogRotator(
                self.client,
                self.selector,
                max_size,
                int(getattr(cri, "container_log_max_files", 5)),
                float(getattr(cri, "container_log_monitor_interval_seconds", 10.0)),
            )

    @classmethod
    def from_config(cls, cfg: Any) -> CriBackend:
        """Build from a WarmletConfig-like object (cfg.cri, cfg.pool, cfg.log_dir, cfg.state_dir)."""
        node = getattr(getattr(cfg, "node", None), "name", "")
        return cls(cfg.cri, cfg.pool, cfg.log_dir, cfg.state_dir, instance=node)

    # ------------------------------------------------------------------ lifecycle

    @property
    def container_id_scheme(self) -> str:
        """The runtime's name from its Version call (``containerd``, ``cri-o``), as kubelet uses it."""
        return self._runtime_name

    async def start(self) -> None:
        """Connect, adopt existing warmlet sandboxes/containers, start PLEG and maintenance loops."""
        if self._started:
            return
        os.makedirs(self.log_dir, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if getattr(self.cri, "call_relay", False) and self.relay is None:
            await self._start_relay()
        self.client.connect()
        v = await self.client.version()
        self._runtime_name = v.runtime_name or self._runtime_name
        log.info(
            "cri connected runtime=%s version=%s api=%s",
            v.runtime_name,
            v.runtime_version,
            v.runtime_api_version,
        )
        try:
            st = await self.client.status(verbose=True)
            raw = st.info.get("config")
            self._runtime_info = json.loads(raw) if raw else {}
        except (BackendError, ValueError):
            self._runtime_info = {}
        await self._adopt()
        self._started = True
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._pleg_loop(), name="cri-pleg"))
        self._tasks.append(loop.create_task(self._image_gc_loop(), name="cri-image-gc"))
        if self.log_rotator is not None:
            self._tasks.append(loop.create_task(self.log_rotator.run(), name="cri-log-rotation"))
        self._tasks.append(loop.create_task(self._orphan_sweep_loop(), name="cri-orphan-sweep"))
        self.pool.start_maintenance(self.maintenance_interval)

    async def _start_relay(self) -> None:
        """Start this process's CRI relay — after the previous warmlet's relay (a killed one's,
        still finishing its calls in flight) has exited: adopting the runtime's state while those
        calls still change it (a sandbox being stopped, a container being created) would build
        the pool on state that is about to change."""
        marker = self.state_dir / RELAY_FILE
        try:
            prev = json.loads(marker.read_text())
            waited = await wait_for_relay_exit(
                int(prev["pid"]), str(prev["name"]), DEFAULT_LINGER_SECONDS + 10
            )
            if waited is not None:
                log.info("previous cri relay finished its calls pid=%s seconds=%.1f", prev["pid"], waited)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no previous relay recorded (first start, or it was stopped cleanly)
        self.relay = RelayProcess(upstream_path(self.cri.runtime_endpoint))
        await asyncio.to_thread(self.relay.start)
        assert self.relay.proc is not None
        marker.write_text(json.dumps({"pid": self.relay.proc.pid, "name": self.relay.name}))
        self.client.dial_through(self.relay.target)
        log.info("cri relay started name=%s pid=%d", self.relay.name, self.relay.proc.pid)

    async def close(self) -> None:
        """Stop loops and in-flight pulls; containers keep running (a restarted warmlet adopts them)."""
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.pool.stop_maintenance()
        await self.images.close()
        self.pool.save()
        await self.client.close()
        if self.relay is not None:
            await asyncio.to_thread(self.relay.stop)
            with contextlib.suppress(OSError):
                (self.state_dir / RELAY_FILE).unlink()
        self._started = False

    async def health(self) -> BackendHealth:
        try:
            v = await self.client.version()
            st = await self.client.status()
        except RuntimeUnavailableError as e:
            return BackendHealth(ok=False, reason="ContainerRuntimeDown", message=e.message)
        except BackendError as e:
            return BackendHealth(ok=False, reason="ContainerRuntimeDown", message=e.message)
        conds = {c.type: c for c in st.status.conditions}
        for ctype, reason in (
            ("RuntimeReady", "ContainerRuntimeNotReady"),
            ("NetworkReady", "NetworkNotReady"),
        ):
            c = conds.get(ctype)
            if c is None or not c.status:
                msg = f"{ctype}=false reason:{c.reason if c else 'missing'} message:{c.message if c else ''}"
                return BackendHealth(
                    ok=False,
                    reason=reason,
                    message=msg,
                    runtime_name=v.runtime_name,
                    runtime_version=v.runtime_version,
                )
        return BackendHealth(ok=True, runtime_name=v.runtime_name, runtime_version=v.runtime_version)

    def subscribe(self, callback: PodChangeCallback) -> None:
        self._subscribers.append(callback)

    def _notify(self, pod_uid: str) -> None:
        for cb in list(self._subscribers):
            try:
                cb(pod_uid)
            except Exception:
                log.exception("pod change subscriber failed pod_uid=%s", pod_uid)

    # ------------------------------------------------------------------ images

    async def ensure_image(self, image: str, policy: PullPolicy) -> ImageResult:
        return await self.images.ensure(image, policy)

    async def ensure_images(self, spec: PodSandboxSpec) -> None:
        """SandboxDriver: cache the workload's images (IfNotPresent) ahead of its pods."""
        await asyncio.gather(
            *(self.images.ensure(i, PullPolicy.IF_NOT_PRESENT) for i in dict.fromkeys(spec.images))
        )

    # ------------------------------------------------------------------ sandboxes

    def _cgroup_parent(self, spec: PodSandboxSpec) -> str:
        base = self.cri.cgroup_parent or DEFAULT_CGROUP_BASE
        if not base and self.pids_limit > 0:
            base = PIDS_CGROUP_BASE  # a pids limit needs a pod cgroup to write pids.max into
        return f"{base.rstrip('/')}/pod{spec.uid}" if base else ""

    def _sandbox_config(
        self, spec: PodSandboxSpec, prewarmed: bool = False, cgroup_parent: str = ""
    ) -> pb.PodSandboxConfig:
        logdir = m.pod_log_dir(self.log_dir, spec.namespace, spec.name, spec.uid)
        return m.sandbox_config(
            spec, logdir, cgroup_parent=cgroup_parent, prewarmed=prewarmed, instance=self.instance
        )

    async def create_sandbox(self, spec: PodSandboxSpec, prewarmed: bool) -> tuple[str, str]:
        """SandboxDriver: RunPodSandbox (+ its IP). Prewarmed ones get placeholder metadata."""
        self._creating[spec.uid] = self._creating.get(spec.uid, 0) + 1  # not an orphan: in flight
        try:
            return await self._create_sandbox(spec, prewarmed)
        except RuntimeUnavailableError:
            self._retry_on_recovery.add(spec.uid)
            raise
        finally:
            self._creating[spec.uid] -= 1
            if not self._creating[spec.uid]:
                del self._creating[spec.uid]

    async def _create_sandbox(self, spec: PodSandboxSpec, prewarmed: bool) -> tuple[str, str]:
        cfg = self._sandbox_config(spec, prewarmed, self._cgroup_parent(spec))
        cfg.annotations["warmlet.io/cgroup-parent"] = cfg.linux.cgroup_parent
        if not prewarmed:
            os.makedirs(cfg.log_directory, exist_ok=True)
        if self.pids_limit > 0 and cfg.linux.cgroup_parent:
            try:
                await asyncio.to_thread(_set_pods_max, cfg.linux.cgroup_parent, self.pids_limit)
            except OSError as e:  # run the pod anyway, like kubelet with an unsupported controller
                from sandbox import metrics

                metrics.POD_PIDS_LIMIT_ERRORS.inc()
                log.warning("pod pids limit not set parent=%s error=%s", cfg.linux.cgroup_parent, e)
        t0 = time.perf_counter()
        for _ in range(3):
            try:
                sid = await self.client.run_pod_sandbox(cfg, spec.runtime_class)
                break
            except RuntimeUnavailableError:
                raise
            except BackendError as e:
                if "reserved" not in e.message:
                    raise RunSandboxError(f"Failed to create pod sandbox: {e.message}") from e
                # The name (pod + attempt) belongs to a sandbox an earlier warmlet made and lost
                # track of (killed mid-create): like kubelet after a sandbox died, next attempt.
                log.warning("sandbox name reserved, next attempt pod_uid=%s error=%s", spec.uid, e.message)
                cfg.metadata.attempt += 1
        else:
            raise RunSandboxError(f"Failed to create pod sandbox: name of pod {spec.uid} stays reserved")
        ip = await self._sandbox_facts(sid)
        self._sb[sid].cgroup_parent = cfg.linux.cgroup_parent
        log.info(
            "sandbox created sandbox=%s pod=%s/%s prewarmed=%s ip=%s seconds=%.3f",
            sid[:12],
            spec.namespace,
            spec.name,
            prewarmed,
            ip,
            time.perf_counter() - t0,
        )
        return sid, ip

    async def _sandbox_facts(self, sandbox_id: str) -> str:
        """Read pause pid + IP + network baseline of a sandbox; return the IP."""
        st = await self.client.pod_sandbox_status(sandbox_id, verbose=True)
        facts = self._sb.setdefault(sandbox_id, _SandboxRuntime())
        try:
            info = json.loads(st.info.get("info", "{}"))
            facts.pause_pid = int(info.get("pid") or 0)
        except (ValueError, TypeError):
            facts.pause_pid = 0
        return str(st.status.network.ip)

    async def sandbox_ready(self, sandbox_id: str) -> bool:
        try:
            st = await self.client.pod_sandbox_status(sandbox_id)
        except CriCallError as e:
            if e.not_found:
                return False
            raise
        return bool(st.status.state == pb.SANDBOX_READY)

    def _net_counters(self, sandbox_id: str) -> tuple[int, int]:
        facts = self._sb.get(sandbox_id)
        if facts is None or not facts.pause_pid:
            return (0, 0)
        try:
            nd = m.parse_net_dev(_read(f"/proc/{facts.pause_pid}/net/dev"))
        except OSError:
            return (0, 0)
        return (nd.rx_bytes, nd.tx_bytes)

    async def acquire_sandbox(self, pod: PodSandboxSpec) -> SandboxInfo:
        rec = self.pool.get_by_pod(pod.uid)
        if rec is not None and not await self.sandbox_ready(rec.sandbox_id):
            # The pod's sandbox died (pause killed, node reboot): like kubelet, start a new one.
            log.warning("sandbox not ready, recreating sandbox=%s pod_uid=%s", rec.sandbox_id[:12], pod.uid)
            await self.pool.forget_pod(pod.uid)
            await self.destroy_sandbox(rec.sandbox_id)
            pod = pod.model_copy(update={"attempt": pod.attempt + 1})
        rec = await self.pool.acquire(pod)
        self._specs[pod.uid] = pod
        os.makedirs(m.pod_log_dir(self.log_dir, pod.namespace, pod.name, pod.uid), exist_ok=True)
        facts = self._sb.get(rec.sandbox_id)
        if facts is None or not facts.pause_pid:
            ip = await self._sandbox_facts(rec.sandbox_id)
            rec.pod_ip = rec.pod_ip or ip
            facts = self._sb[rec.sandbox_id]
        if rec.from_pool:
            await asyncio.to_thread(
                self._set_hostname, rec.sandbox_id, facts.pause_pid, pod.hostname or pod.name
            )
        facts.net_baseline = self._net_counters(rec.sandbox_id)
        return self._info(rec)

    def _set_hostname(self, sandbox_id: str, pause_pid: int, hostname: str) -> None:
        """A reused sandbox keeps the first pod's UTS hostname: set the new pod's (best effort)."""
        if not pause_pid or not hostname:
            return
        import subprocess

        try:
            subprocess.run(
                ["nsenter", "-t", str(pause_pid), "-u", "hostname", hostname[:63]],
                check=True,
                capture_output=True,
                timeout=5,
            )
        except (OSError, subprocess.SubprocessError) as e:
            log.warning("hostname reset failed sandbox=%s error=%s", sandbox_id[:12], e)
        root = self._runtime_info.get("rootDir")
        if root:
            path = os.path.join(root, "sandboxes", sandbox_id, "hostname")
            if os.path.exists(path):
                with contextlib.suppress(OSError), open(path, "w") as f:
                    f.write(hostname[:63] + "\n")

    def _info(self, rec: SandboxRecord) -> SandboxInfo:
        return SandboxInfo(
            sandbox_id=rec.sandbox_id,
            pod_uid=rec.pod_uid,
            workload_key=rec.key,
            pod_ip=rec.pod_ip,
            from_pool=rec.from_pool,
            created_at=rec.created_at,
            namespace=rec.namespace,
            name=rec.pod_name,
        )

    async def list_sandboxes(self) -> list[SandboxInfo]:
        return [
            self._info(r)
            for r in self.pool.records.values()
            if r.state in ("in_use", "releasing") and r.pod_uid
        ]

    async def release_sandbox(self, pod_uid: str, reusable: bool) -> None:
        """Scrub the pod's sandbox back to the pool; its log files and final states are kept.

        Like kubelet, the logs of a finished pod stay readable (``kubectl logs`` of a completed
        Job) until the pod object is deleted (:meth:`pod_gone`), although its containers are
        removed right away so the sandbox can be reused.
        """
        spec = self._specs.pop(pod_uid, None)
        if spec is not None and self.pool.get_by_pod(pod_uid) is not None:
            final = [s for s in await self.pod_containers(pod_uid) if s.state == ContainerState.EXITED]
            if final:
                self._finished[pod_uid] = (spec, final)
                # persisted by the release's first save, BEFORE the scrub removes the containers
                self.pool.keep_finished(
                    pod_uid,
                    {
                        "namespace": spec.namespace,
                        "name": spec.name,
                        "workload_key": spec.workload_key,
                        "states": [s.model_dump(mode="json") for s in final],
                    },
                )
        await self.pool.release(pod_uid, reusable)

    async def final_status_written(self, pod_uid: str) -> None:
        """The pod's terminal status is in the API: its final states need not survive a restart."""
        self.pool.drop_finished(pod_uid)

    async def pod_gone(self, pod_uid: str) -> None:
        """The pod object was deleted: drop its kept final states and remove its log directory."""
        kept = self._finished.pop(pod_uid, None)
        self.pool.drop_finished(pod_uid)
        if self.pool.get_by_pod(pod_uid) is not None:
            return  # still holds a sandbox: release_sandbox first
        if kept is not None:
            spec = kept[0]
            logdir = m.pod_log_dir(self.log_dir, spec.namespace, spec.name, spec.uid)
            await asyncio.to_thread(shutil.rmtree, logdir, True)
        else:  # e.g. adopted after a restart: find the directory by the uid suffix
            await asyncio.to_thread(self._remove_stale_log_dirs, None, pod_uid)

    async def scrub_sandbox(self, record: SandboxRecord) -> bool:
        """SandboxDriver: make a sandbox fit for the next pod of its workload (see module doc)."""
        sid = record.sandbox_id
        conts = await self.client.list_containers(sandbox_id=sid)
        await asyncio.gather(*(self._kill_and_remove(c.id) for c in conts))
        left = await self.client.list_containers(sandbox_id=sid)
        if left:
            log.warning("scrub left containers sandbox=%s count=%d", sid[:12], len(left))
            return False
        if not await self.sandbox_ready(sid):
            return False
        facts = self._sb.get(sid)
        if facts is None or not facts.pause_pid:
            await self._sandbox_facts(sid)
            facts = self._sb[sid]
        if facts.pause_pid:
            stray = await asyncio.to_thread(_leftover_pids, facts.pause_pid)
            if stray:
                killed = await asyncio.to_thread(_kill_pids, stray)
                log.warning("scrub killed leftover processes sandbox=%s pids=%s", sid[:12], killed)
                await asyncio.sleep(0.05)
                if await asyncio.to_thread(_leftover_pids, facts.pause_pid):
                    return False
        for d in record.scratch_dirs:
            await asyncio.to_thread(_wipe_dir, d)
        if facts.pause_pid:
            # IPC is per sandbox (ipc=POD): /dev/shm files and SysV objects of the last pod would
            # otherwise be visible to the next one.
            state = self._runtime_info.get("stateDir")
            shm = os.path.join(state, "sandboxes", sid, "shm") if state else ""
            await asyncio.to_thread(_wipe_ipc, facts.pause_pid, shm)
        return True

    def _task_dir(self, container_id: str) -> str | None:
        """containerd's bundle directory of the container's task (runtime v2, CRI namespace)."""
        cri_state = self._runtime_info.get("stateDir")  # <containerd state>/io.containerd.grpc.v1.cri
        if not cri_state:
            return None
        tasks = os.path.join(os.path.dirname(cri_state), "io.containerd.runtime.v2.task")
        return os.path.join(tasks, "k8s.io", container_id)

    async def _kill_and_remove(self, container_id: str) -> None:
        with contextlib.suppress(CriCallError):
            await self.client.stop_container(container_id, 0)
        try:
            await self.client.remove_container(container_id)
        except CriCallError as e:
            if e.not_found:
                return
            if "running task" not in e.message:
                raise
            await self._remove_orphan_task(container_id, e)

    async def _remove_orphan_task(self, container_id: str, err: CriCallError) -> None:
        """Remove a container whose containerd task outlived a failed start.

        A StartContainer cancelled right after containerd created the task ("failed to create
        containerd task: failed to get task pid: context canceled") marks the container exited but
        leaves its task (``runc init``, never exec'd) behind; CRI can neither stop it (not running
        for CRI) nor remove it ("cannot delete running task"). Killing the task's processes (found
        by the container id in their cgroup) lets containerd reap and delete the task.
        """
        pids = await asyncio.to_thread(_pids_in_cgroup_of, container_id)
        killed = await asyncio.to_thread(_kill_pids, pids)
        log.warning(
            "container task left by an interrupted start, killing it container=%s pids=%s error=%s",
            container_id[:12],
            killed,
            err.message,
        )
        for i in range(12):
            await asyncio.sleep(0.25)
            if i == 4:
                # Its process already gone, the task record may stay (containerd never got the
                # exit): containerd's own client deletes it, the one thing CRI cannot do.
                await asyncio.to_thread(self._ctr_delete_task, container_id)
            try:
                await self.client.remove_container(container_id)
                return
            except CriCallError as e:
                if e.not_found:
                    return
                if "running task" not in e.message:
                    raise
        raise err

    def _ctr_delete_task(self, container_id: str) -> None:
        """``ctr tasks delete --force`` on a containerd unix socket (best effort; needs ``ctr``)."""
        import subprocess

        endpoint = self.cri.runtime_endpoint
        ctr = shutil.which("ctr")
        if not endpoint.startswith("unix://") or ctr is None:
            return
        cmd = [ctr, "--address", endpoint[len("unix://") :], "--namespace", "k8s.io"]
        try:
            r = subprocess.run(
                [*cmd, "tasks", "delete", "--force", container_id], capture_output=True, text=True, timeout=20
            )
            log.warning(
                "containerd task deleted with ctr container=%s rc=%d out=%s",
                container_id[:12],
                r.returncode,
                (r.stderr or r.stdout).strip()[:200],
            )
        except (OSError, subprocess.SubprocessError) as e:
            log.warning("ctr tasks delete failed container=%s error=%s", container_id[:12], e)

    async def destroy_sandbox(self, sandbox_id: str) -> None:
        """SandboxDriver: stop + remove a sandbox with all its containers (idempotent)."""
        facts = self._sb.pop(sandbox_id, None)
        try:
            conts = await self.client.list_containers(sandbox_id=sandbox_id)
            await asyncio.gather(*(self._kill_and_remove(c.id) for c in conts), return_exceptions=True)
            await self.client.stop_pod_sandbox(sandbox_id)
            await self.client.remove_pod_sandbox(sandbox_id)
        except CriCallError as e:
            if not e.not_found:
                raise
        if facts is not None and facts.cgroup_parent:
            # The runtime removes the sandbox's own cgroup, not the pod-level parent we asked for:
            # leaked empty cgroups are what degrades busy nodes, so remove it like kubelet does.
            await asyncio.to_thread(_remove_cgroup, facts.cgroup_parent)

    async def prewarm(self, pod: PodSandboxSpec, count: int) -> int:
        return await self.pool.prewarm(pod, count)

    # ------------------------------------------------------------------ containers

    async def create_container(
        self, sandbox: SandboxInfo, pod: PodSandboxSpec, container: ContainerSpec, attempt: int
    ) -> str:
        rec = self.pool.records.get(sandbox.sandbox_id)
        if rec is None or rec.pod_uid != pod.uid:
            raise CreateContainerError(f"sandbox {sandbox.sandbox_id[:12]} is not assigned to pod {pod.uid}")
        image_ref = ""
        img = await self.client.image_status(container.image)
        if img is not None:
            image_ref = img.id
            self.images.touch(img.id)
        pod_res = pod.resources
        has_pod_res = any(
            (
                pod_res.cpu_request_milli,
                pod_res.cpu_limit_milli,
                pod_res.memory_request_bytes,
                pod_res.memory_limit_bytes,
            )
        )
        qos = m.qos_class([pod_res if has_pod_res else container.resources])
        cfg = m.container_config(
            pod,
            container,
            attempt,
            image_ref,
            qos=qos,
            node_memory_bytes=self._node_memory,
            instance=self.instance,
        )
        # The CURRENT pod's sandbox config: containerd takes log_directory (and names) from it.
        sb_cfg = self._sandbox_config(pod, cgroup_parent=self._cgroup_parent_of(rec))
        try:
            cid = await self.client.create_container(rec.sandbox_id, cfg, sb_cfg)
        except RuntimeUnavailableError:
            raise
        except BackendError as e:
            raise CreateContainerError(f"Error: {e.message}") from e
        if rec.from_pool or rec.uses > 1:
            await self._ensure_log_location(cid, pod, container.name, attempt)
        return cid

    def _cgroup_parent_of(self, rec: SandboxRecord) -> str:
        facts = self._sb.get(rec.sandbox_id)
        return facts.cgroup_parent if facts else ""

    async def _ensure_log_location(self, cid: str, pod: PodSandboxSpec, container: str, attempt: int) -> None:
        """If the runtime wrote the log elsewhere (old pod's dir), link the expected path to it."""
        st = await self.client.container_status(cid)
        want = self.log_path(pod.namespace, pod.name, pod.uid, container, attempt)
        have = st.status.log_path
        if have and have != want:
            os.makedirs(os.path.dirname(want), exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.symlink(have, want)
            log.info("container log linked container=%s path=%s target=%s", cid[:12], want, have)

    async def start_container(self, container_id: str) -> None:
        try:
            await self.client.start_container(container_id)
        except RuntimeUnavailableError:
            raise
        except BackendError as e:
            raise BackendError(e.message, reason="RunContainerError") from e

    async def stop_container(self, container_id: str, grace_seconds: float) -> None:
        try:
            await self.client.stop_container(container_id, max(0, math.ceil(grace_seconds)))
        except CriCallError as e:
            if not e.not_found:
                raise

    async def remove_container(self, container_id: str) -> None:
        try:
            await self.client.remove_container(container_id)
        except CriCallError as e:
            if not e.not_found:
                raise

    async def pod_containers(self, pod_uid: str) -> list[ContainerRuntimeState]:
        try:
            conts = await self.client.list_containers(labels={m.LABEL_POD_UID: pod_uid})
        except RuntimeUnavailableError:
            self._retry_on_recovery.add(pod_uid)
            raise
        if not conts and pod_uid in self._finished:
            return [s.model_copy() for s in self._finished[pod_uid][1]]  # released finished pod
        out: list[ContainerRuntimeState] = []

        async def one(cid: str) -> None:
            try:
                st = await self.client.container_status(cid)
            except CriCallError as e:
                if e.not_found:
                    return
                raise
            self._note_oom(cid, st.status)
            state = m.container_state_from_status(st.status)
            if interrupted_start(state):
                # The StartContainer of a warmlet killed (or cancelled) mid-call: containerd gave up
                # before the process ran. Removed, the same attempt is created again: it never ran.
                log.warning(
                    "container start was interrupted, never ran; removing it to start again "
                    "container=%s pod_uid=%s name=%s message=%s",
                    cid[:12],
                    pod_uid,
                    state.name,
                    state.message,
                )
                await self._kill_and_remove(cid)
                return
            if state.state == ContainerState.UNKNOWN:
                # containerd restarted in the middle of this container's start and cannot load
                # its task. If the process provably never ran, remove it to create the same
                # attempt again; otherwise the pod sync kills it and restarts it, as kubelet does.
                never = await asyncio.to_thread(task_never_started, cid, self._task_dir(cid))
                log.warning(
                    "container state unknown (runtime restarted during its start) container=%s "
                    "pod_uid=%s name=%s never_started=%s",
                    cid[:12],
                    pod_uid,
                    state.name,
                    never,
                )
                if never:
                    await self._kill_and_remove(cid)
                    return
            out.append(state)

        await asyncio.gather(*(one(c.id) for c in conts))
        out.sort(key=lambda s: (s.name, s.attempt, s.created_at or 0.0))
        return out

    def log_path(self, namespace: str, name: str, uid: str, container: str, attempt: int) -> str:
        return m.container_log_path(self.log_dir, namespace, name, uid, container, attempt)

    # ------------------------------------------------------------------ PLEG

    async def _pleg_loop(self) -> None:
        """Relist managed containers; notify the pod of every container whose state changed."""
        interval = self.cri.poll_interval_seconds
        delay = interval
        down = False
        while True:
            await asyncio.sleep(delay)
            try:
                await self.relist()
                if down:
                    self._notify_recovered()
                down = False
                delay = interval
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not down:
                    log.warning("cri relist failed error=%s", e)
                down = True
                delay = min(max(delay * 2, interval), 10.0)

    def _notify_recovered(self) -> None:
        """The runtime answers again: every pod with a sandbox and every pod a call failed for
        meanwhile syncs now, not when its (by then long) back-off expires."""
        uids = {r.pod_uid for r in self.pool.records.values() if r.pod_uid} | self._retry_on_recovery
        self._retry_on_recovery = set()
        log.info("cri relist recovered pods_to_sync=%d", len(uids))
        for uid in uids:
            self._notify(uid)

    async def relist(self) -> set[str]:
        """One PLEG pass; returns the pod uids notified (exposed for tests)."""
        conts = await self.client.list_containers(labels=self.selector)
        snap = {c.id: (int(c.state), m.pod_uid_of(c.labels)) for c in conts}
        changed: set[str] = set()
        exited: list[str] = []
        for cid, (state, uid) in snap.items():
            if self._pleg_snapshot.get(cid, (None, None))[0] != state and uid:
                changed.add(uid)
                if state == pb.CONTAINER_EXITED:
                    exited.append(cid)
        if exited:
            await self._count_oom_kills(exited)
        for cid, (_, uid) in self._pleg_snapshot.items():
            if cid not in snap and uid:
                changed.add(uid)
        self._pleg_snapshot = snap
        for uid in changed:
            self._notify(uid)
        return changed

    async def _orphan_sweep_loop(self) -> None:
        delay = ORPHAN_SWEEP_SECONDS
        while True:
            await asyncio.sleep(delay)
            try:
                await self.sweep_orphans()
                delay = ORPHAN_SWEEP_SECONDS
            except asyncio.CancelledError:
                raise
            except Exception as e:  # runtime away: the PLEG reports it; just slow down
                delay = min(delay * 2, 300.0)
                log.warning("orphan sweep failed retry_in=%.0f error=%s", delay, e)

    async def sweep_orphans(self, min_age: float = ORPHAN_MIN_AGE_SECONDS) -> list[str]:
        """Destroy this instance's sandboxes that warmlet does not track and is not creating.

        Why: a RunPodSandbox cut short by a runtime restart may still have made the sandbox while
        its answer was lost; warmlet retries under another attempt, and without this sweep the
        first one would stay until warmlet's next start (the start-up reconcile).
        """
        now = time.time()
        swept: list[str] = []
        for sb in await self.client.list_pod_sandbox(labels=self.selector):
            if sb.id in self.pool.records or now - sb.created_at / 1e9 < min_age:
                continue
            if m.pod_uid_of(sb.labels) in self._creating:
                continue
            from sandbox import metrics

            log.warning(
                "destroying orphan sandbox=%s pod=%s/%s", sb.id[:12], sb.metadata.namespace, sb.metadata.name
            )
            metrics.POOL_EVICTIONS.labels(EvictReason.ORPHAN.value).inc()
            await self.destroy_sandbox(sb.id)
            swept.append(sb.id)
        return swept

    async def _count_oom_kills(self, container_ids: list[str]) -> None:
        """warmlet_container_oom_kills_total: one ContainerStatus per newly exited container."""

        async def one(cid: str) -> None:
            with contextlib.suppress(BackendError):
                self._note_oom(cid, (await self.client.container_status(cid)).status)

        await asyncio.gather(*(one(c) for c in container_ids if c not in self._oom_counted))

    def _note_oom(self, cid: str, st: Any) -> None:
        """Count an OOMKilled container once, whether the PLEG or a pod sync sees it first (a pod
        sync may see the exit, and the pod's release remove the container, between two relists)."""
        if st.reason != "OOMKilled" or cid in self._oom_counted:
            return
        from sandbox import metrics

        self._oom_counted[cid] = True
        metrics.OOM_KILLS.inc()
        log.warning(
            "container OOMKilled container=%s pod=%s/%s name=%s",
            cid[:12],
            st.labels.get(m.K8S_POD_NAMESPACE, ""),
            st.labels.get(m.K8S_POD_NAME, ""),
            st.metadata.name,
        )

    # ------------------------------------------------------------------ adoption / reconcile

    async def _adopt(self) -> None:
        """Rebuild ownership from the runtime (labels) and the state file; never restart anything."""
        saved, templates = self.pool.load()
        saved_by_id = {r.sandbox_id: r for r in saved}
        for uid in list(self.pool.finished):
            data = self.pool.finished_of(uid) or {}
            try:
                spec = PodSandboxSpec(
                    uid=uid,
                    namespace=str(data.get("namespace", "")),
                    name=str(data.get("name", "")),
                    workload_key=str(data.get("workload_key", "")),
                    hostname=str(data.get("name", "")),
                )
                states = [ContainerRuntimeState.model_validate(x) for x in data.get("states") or []]
            except ValueError as e:
                log.warning("adopt: unreadable final states pod_uid=%s error=%s", uid, e)
                self.pool.drop_finished(uid)
                continue
            self._finished[uid] = (spec, states)
        sandboxes = await self.client.list_pod_sandbox(labels=self.selector)
        conts = await self.client.list_containers(labels=self.selector)
        by_sb: dict[str, list[pb.Container]] = {}
        for c in conts:
            by_sb.setdefault(c.pod_sandbox_id, []).append(c)
        now = time.time()
        records: list[SandboxRecord] = []
        for sb in sandboxes:
            rec = saved_by_id.get(sb.id)
            key = sb.annotations.get(m.ANNOTATION_WORKLOAD_KEY) or (rec.key if rec else "")
            ready = sb.state == pb.SANDBOX_READY
            mine = by_sb.get(sb.id, [])
            uids = {m.pod_uid_of(c.labels) for c in mine} - {""}
            if not key:
                log.warning("adopt: sandbox without workload key, destroying sandbox=%s", sb.id[:12])
                await self.destroy_sandbox(sb.id)
                continue
            new = SandboxRecord(
                sandbox_id=sb.id,
                key=key,
                namespace=sb.metadata.namespace,
                state="idle",
                created_at=sb.created_at / 1e9,
            )
            if rec is not None:
                new.uses, new.from_pool, new.scratch_dirs = rec.uses, rec.from_pool, rec.scratch_dirs
            current = ""
            if uids:
                if rec is not None and rec.pod_uid in uids:
                    current = rec.pod_uid
                else:
                    newest = max((c for c in mine if m.pod_uid_of(c.labels)), key=lambda c: c.created_at)
                    current = m.pod_uid_of(newest.labels)
                stale = [c for c in mine if m.pod_uid_of(c.labels) != current]
                for c in stale:  # an earlier pod's containers a crashed scrub left behind
                    await self._kill_and_remove(c.id)
            elif rec is not None and rec.state in ("in_use", "releasing") and rec.pod_uid:
                current = rec.pod_uid
            elif rec is None and sb.labels.get(m.LABEL_PREWARMED) != "true" and m.pod_uid_of(sb.labels):
                # Created for a pod by a warmlet killed before it saved the record: it is that
                # pod's (same name: a second RunPodSandbox for the pod would be refused), not
                # an idle pool member. If the pod is gone, reconcile releases it.
                current = m.pod_uid_of(sb.labels)
            if current:
                new.state = "in_use"
                new.pod_uid = current
                named = [c for c in mine if m.pod_uid_of(c.labels) == current]
                new.pod_name = (
                    named[0].labels.get(m.K8S_POD_NAME, "") if named else (rec.pod_name if rec else "")
                )
            elif not ready:
                log.info("adopt: removing dead idle sandbox=%s", sb.id[:12])
                await self.destroy_sandbox(sb.id)
                continue
            else:
                new.idle_since = rec.idle_since if rec is not None and rec.state == "idle" else now
            try:
                new.pod_ip = await self._sandbox_facts(sb.id)
            except CriCallError as e:
                if e.not_found:
                    continue
                raise
            self._sb[sb.id].cgroup_parent = sb.annotations.get("warmlet.io/cgroup-parent", "")
            records.append(new)
        self.pool.adopt(records, templates)
        self._pleg_snapshot = {c.id: (int(c.state), m.pod_uid_of(c.labels)) for c in conts}
        log.info(
            "cri adopted sandboxes=%d in_use=%d idle=%d containers=%d",
            len(records),
            sum(r.state == "in_use" for r in records),
            sum(r.state == "idle" for r in records),
            len(conts),
        )

    async def reconcile(self, live_pod_uids: set[str]) -> None:
        """Release sandboxes of vanished pods; remove unowned containers/sandboxes and stale log dirs."""
        for rec in list(self.pool.records.values()):
            if rec.state == "in_use" and rec.pod_uid and rec.pod_uid not in live_pod_uids:
                log.info(
                    "reconcile: releasing sandbox of gone pod pod_uid=%s sandbox=%s",
                    rec.pod_uid,
                    rec.sandbox_id[:12],
                )
                await self.release_sandbox(rec.pod_uid, reusable=True)
        known = set(self.pool.records)
        for sb in await self.client.list_pod_sandbox(labels=self.selector):
            if sb.id not in known:
                log.info("reconcile: destroying unowned sandbox=%s", sb.id[:12])
                from sandbox import metrics

                metrics.POOL_EVICTIONS.labels(EvictReason.ORPHAN.value).inc()
                await self.destroy_sandbox(sb.id)
        current = {r.pod_uid for r in self.pool.records.values() if r.pod_uid}
        for c in await self.client.list_containers(labels=self.selector):
            uid = m.pod_uid_of(c.labels)
            if c.pod_sandbox_id not in known or (uid not in current and uid not in live_pod_uids):
                await self._kill_and_remove(c.id)
        keep = live_pod_uids | current
        for uid in [u for u in self.pool.finished if u not in live_pod_uids]:
            self.pool.drop_finished(uid)
            self._finished.pop(uid, None)
        await asyncio.to_thread(self._remove_stale_log_dirs, keep)

    def _remove_stale_log_dirs(self, keep: set[str] | None, only: str = "") -> None:
        """Remove pod log dirs whose uid is not in ``keep`` (or, with ``only``, that pod's)."""
        try:
            entries = os.listdir(self.log_dir)
        except OSError:
            return
        for e in entries:
            parts = e.rsplit("_", 1)
            if len(parts) != 2 or e.count("_") < 2:
                continue
            if (parts[1] == only) if only else (keep is not None and parts[1] not in keep):
                shutil.rmtree(os.path.join(self.log_dir, e), ignore_errors=True)

    # ------------------------------------------------------------------ image GC

    async def _image_gc_loop(self) -> None:
        delay = self.image_gc_interval
        while True:
            await asyncio.sleep(delay)
            try:
                await self.image_gc()
                delay = self.image_gc_interval
            except asyncio.CancelledError:
                raise
            except Exception as e:
                delay = min(delay * 2, 600.0)
                log.warning("image gc failed retry_in=%.0f error=%s", delay, e)

    async def image_gc(self) -> list[str]:
        """Images used by containers, by templates of pooled workloads and the pause image are kept."""
        in_use: set[str] = set()
        for c in await self.client.list_containers():
            in_use.update(x for x in (c.image.image, c.image_ref, c.image.user_specified_image) if x)
        pooled = {r.key for r in self.pool.records.values()}
        for key, spec in self.pool.templates.items():
            if key in pooled or self.pool.policy(key).min > 0:
                in_use.update(spec.images)
        pause = self._runtime_info.get("sandboxImage")
        if pause:
            in_use.add(pause)
        return await self.images.garbage_collect(in_use)

    # ------------------------------------------------------------------ stats

    @staticmethod
    def _read_node_memory() -> int:
        try:
            return m.parse_meminfo(_read("/proc/meminfo")).get("MemTotal", 0)
        except OSError:
            return 0

    def _node_usage(self) -> NodeUsage:
        now = time.time()
        cpu = m.parse_proc_stat(_read("/proc/stat"))
        hz = os.sysconf("SC_CLK_TCK") or 100
        cpu_ns = cpu.total_jiffies * (1_000_000_000 // hz)
        nano_cores = 0
        if self._node_cpu_prev is not None:
            t_prev, ns_prev = self._node_cpu_prev
            if now > t_prev:
                nano_cores = int(max(0, cpu_ns - ns_prev) / (now - t_prev))
        self._node_cpu_prev = (now, cpu_ns)
        mem = m.parse_meminfo(_read("/proc/meminfo"))
        total = mem.get("MemTotal", 0)
        avail = mem.get("MemAvailable", 0)
        free = mem.get("MemFree", 0)
        fs = os.statvfs(self.log_dir if os.path.isdir(self.log_dir) else "/")
        return NodeUsage(
            timestamp=now,
            start_time=cpu.btime,
            cpu_usage_core_nanoseconds=cpu_ns,
            cpu_usage_nano_cores=nano_cores,
            memory_working_set_bytes=max(0, total - avail),
            memory_usage_bytes=max(0, total - free),
            memory_available_bytes=avail,
            memory_rss_bytes=max(0, total - avail - mem.get("Cached", 0) + mem.get("Shmem", 0)),
            fs_capacity_bytes=fs.f_blocks * fs.f_frsize,
            fs_available_bytes=fs.f_bavail * fs.f_frsize,
            fs_used_bytes=(fs.f_blocks - fs.f_bfree) * fs.f_frsize,
        )

    async def _learn_start_times(self, container_ids: list[str]) -> None:
        """Start times of live containers (ListContainerStats lacks them); asked once per container."""
        live = set(container_ids)
        for cid in list(self._start_times):
            if cid not in live:
                del self._start_times[cid]

        async def one(cid: str) -> None:
            try:
                st = (await self.client.container_status(cid)).status
            except CriCallError:
                return
            if st.started_at:
                self._start_times[cid] = st.started_at / 1e9

        await asyncio.gather(*(one(cid) for cid in live if cid not in self._start_times))

    async def stats(self) -> NodeUsage:
        node = await asyncio.to_thread(self._node_usage)
        try:
            all_stats = await self.client.list_container_stats(labels=self.selector)
        except CriCallError as e:
            log.warning("list container stats failed error=%s", e)
            all_stats = []
        await self._learn_start_times([s.attributes.id for s in all_stats])
        pods: dict[str, PodUsage] = {}
        for s in all_stats:
            labels = s.attributes.labels
            uid = m.pod_uid_of(labels)
            rec = self.pool.get_by_pod(uid)
            if not uid or rec is None:
                continue
            spec = self._specs.get(uid)
            ns = labels.get(m.K8S_POD_NAMESPACE, rec.namespace)
            name = labels.get(m.K8S_POD_NAME, rec.pod_name)
            cname = s.attributes.metadata.name or labels.get(m.K8S_CONTAINER_NAME, "")
            log_bytes = 0
            with contextlib.suppress(OSError):
                log_bytes = os.stat(
                    self.log_path(ns, name, uid, cname, s.attributes.metadata.attempt)
                ).st_size
            cu = m.container_usage_from_stats(
                s, start_time=self._start_times.get(s.attributes.id, 0.0), log_bytes=log_bytes
            )
            if cu is None:  # exited container: no live usage (kubelet omits it)
                continue
            pu = pods.get(uid)
            if pu is None:
                rx, tx = self._net_counters(rec.sandbox_id)
                facts = self._sb.get(rec.sandbox_id)
                brx, btx = facts.net_baseline if facts else (0, 0)
                pu = pods[uid] = PodUsage(
                    uid=uid,
                    namespace=spec.namespace if spec else ns,
                    name=spec.name if spec else name,
                    start_time=rec.created_at,
                    timestamp=cu.timestamp or node.timestamp,
                    network_rx_bytes=max(0, rx - brx),
                    network_tx_bytes=max(0, tx - btx),
                )
            pu.containers.append(cu)
        node.pods = sorted(pods.values(), key=lambda p: (p.namespace, p.name))
        return node


CRIBackend = CriBackend


def from_config(cfg: Any) -> CriBackend:
    """Factory used by provider.app.build_backend (WarmletConfig-like object)."""
    return CriBackend.from_config(cfg)
