"""The seam between the Kubernetes side (``provider/``) and the runtime side (``sandbox/``).

Only plain typed data crosses it: provider code never sees gRPC/CRI types and sandbox
code never sees Kubernetes client types. The provider decides *what* should run (the
kubelet-like sync logic and status computation live there); a backend decides *how*
(images, sandboxes from the warm pool, containers, logs and stats).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field
from pydantic.dataclasses import dataclass

# The seam's typed errors live in sandbox/errors.py; the seam re-exports them.
from sandbox.errors import BackendError as BackendError
from sandbox.errors import ContainerNotRunningError as ContainerNotRunningError
from sandbox.errors import ContainerStartInProgressError as ContainerStartInProgressError
from sandbox.errors import CreateContainerError as CreateContainerError
from sandbox.errors import ExecTimeoutError as ExecTimeoutError
from sandbox.errors import ImageNeverPullError as ImageNeverPullError
from sandbox.errors import ImagePullError as ImagePullError
from sandbox.errors import InvalidImageNameError as InvalidImageNameError
from sandbox.errors import RunSandboxError as RunSandboxError
from sandbox.errors import RuntimeUnavailableError as RuntimeUnavailableError


class _Model(BaseModel):
    model_config = ConfigDict(frozen=False, extra="forbid")


# Records kept per pod or per container (a simulated node holds 10,000 pods) are slotted pydantic
# dataclasses: validated like the models (types, enums, unknown fields refused) but without a
# model's per-instance ``__dict__`` and fields-set (4.3 kB → about 1 kB for a pod's sandbox spec).
# Copy with ``dataclasses.replace``; (de)serialize with ``pydantic.TypeAdapter``.
_RECORD = ConfigDict(extra="forbid")


class StartLevel(StrEnum):
    """How much work a pod start needed; recorded per pod start."""

    COLD = "cold"  # image pull + sandbox + containers
    IMAGE_CACHED = "image_cached"  # sandbox + containers
    WARM = "warm"  # containers only: sandbox came from the pool
    PRECREATED = "precreated"  # containers were created ahead of time, only started


class PullPolicy(StrEnum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


@dataclass(slots=True, kw_only=True, config=_RECORD)
class EnvVar:
    name: str
    value: str


@dataclass(slots=True, kw_only=True, config=_RECORD)
class Mount:
    """A resolved volume mount: host_path already exists on this machine."""

    container_path: str
    host_path: str
    read_only: bool = False


@dataclass(slots=True, kw_only=True, config=_RECORD)
class Resources:
    cpu_request_milli: int = 0
    cpu_limit_milli: int = 0
    memory_request_bytes: int = 0
    memory_limit_bytes: int = 0


class ContainerSecurity(_Model):
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool = False
    privileged: bool = False
    read_only_root_fs: bool = False
    allow_privilege_escalation: bool | None = None
    capabilities_add: list[str] = Field(default_factory=list)
    capabilities_drop: list[str] = Field(default_factory=list)


@dataclass(slots=True, kw_only=True, config=_RECORD)
class PortMapping:
    container_port: int
    protocol: str = "TCP"
    host_port: int = 0
    host_ip: str = ""


class ContainerSpec(_Model):
    """One container of a pod, with env and volumes already resolved by the provider."""

    name: str
    image: str
    pull_policy: PullPolicy = PullPolicy.IF_NOT_PRESENT
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    working_dir: str = ""
    mounts: list[Mount] = Field(default_factory=list)
    ports: list[PortMapping] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)
    security: ContainerSecurity = Field(default_factory=ContainerSecurity)
    tty: bool = False
    stdin: bool = False
    # with stdin: the runtime closes the container's stdin after the first attach session ends
    stdin_once: bool = False
    termination_message_path: str = "/dev/termination-log"
    # "File" or "FallbackToLogsOnError": where a finished container's message comes from
    termination_message_policy: str = "File"
    is_init: bool = False
    # ephemeral containers (kubectl debug): never restarted; with target_container_id set, the
    # container joins that container's process namespace (CRI NamespaceMode TARGET)
    is_ephemeral: bool = False
    target_container_id: str = ""


@dataclass(slots=True, kw_only=True, config=_RECORD)
class DNSConfig:
    servers: list[str] = Field(default_factory=list)
    searches: list[str] = Field(default_factory=list)
    options: list[str] = Field(default_factory=list)


@dataclass(slots=True, kw_only=True, config=_RECORD)
class PodSecurity:
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool = False
    fs_group: int | None = None
    supplemental_groups: list[int] = Field(default_factory=list)
    sysctls: dict[str, str] = Field(default_factory=dict)
    # Some container of the pod is privileged: the runtime only allows one in a privileged sandbox.
    privileged: bool = False


@dataclass(slots=True, kw_only=True, config=_RECORD)
class RegistryCredential:
    """One set of credentials that may authenticate a pull (CRI AuthConfig).

    ``source`` names where it came from (``<namespace>/<secret name>``) and ``fingerprint`` is a
    hash of its content: an image pulled with credentials remembers the fingerprints that pulled
    it, so a pod without matching credentials never uses it unverified (KEP-2535)."""

    username: str = ""
    password: str = ""
    auth: str = ""  # base64 "user:password" as found in the docker config
    identity_token: str = ""
    registry_token: str = ""
    server_address: str = ""
    source: str = ""
    fingerprint: str = ""


@dataclass(slots=True, kw_only=True, config=_RECORD)
class PodSandboxSpec:
    """Everything a backend needs to give a pod a sandbox (pod-level, not containers)."""

    uid: str
    namespace: str
    name: str
    workload_key: str
    hostname: str
    attempt: int = 0
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    dns: DNSConfig = Field(default_factory=DNSConfig)
    ports: list[PortMapping] = Field(default_factory=list)
    runtime_class: str = ""
    security: PodSecurity = Field(default_factory=PodSecurity)
    resources: Resources = Field(default_factory=Resources)
    # Images of all the pod's containers: lets a pool prewarm/keep images cached.
    images: list[str] = Field(default_factory=list)
    # Host directories owned by this pod (emptyDir volumes) that must be wiped (contents removed)
    # before its sandbox is handed to the next pod of the workload. Absolute paths.
    scratch_dirs: list[str] = Field(default_factory=list)
    # Credentials for pulling ``images`` ahead of the pod (prewarm), per image in the order to try
    # (provider/credentials.py). Never persisted (the pool's state file holds templates).
    pull_credentials: dict[str, list[RegistryCredential]] = Field(default_factory=dict, exclude=True)
    # No other pod can ever have this workload key (a bare pod's): the pool learns nothing for it
    # (no template, policy or concurrency history while it runs; its sandbox is not kept after).
    single_use: bool = False


@dataclass(slots=True, kw_only=True, config=_RECORD)
class SandboxInfo:
    sandbox_id: str
    pod_uid: str
    workload_key: str
    pod_ip: str = ""
    from_pool: bool = False  # True: a warm sandbox was reused (StartLevel.WARM)
    created_at: float = 0.0
    namespace: str = ""
    name: str = ""


class ImageResult(_Model):
    image: str
    image_ref: str  # the image ID / digest the runtime resolved
    pulled: bool  # False: it was already present (no network)
    size_bytes: int = 0


class ContainerState(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    UNKNOWN = "unknown"


@dataclass(slots=True, kw_only=True, config=_RECORD)
class ContainerRuntimeState:
    """What the runtime knows of one container instance (one attempt of one container)."""

    container_id: str
    pod_uid: str
    name: str
    attempt: int = 0
    state: ContainerState
    image: str = ""
    image_ref: str = ""
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    reason: str = ""  # runtime's reason, e.g. "OOMKilled", "Completed", "Error"
    message: str = ""
    log_path: str = ""  # absolute path of the CRI log file


class ExecResult(_Model):
    """The outcome of a command run to completion in a running container (CRI ExecSync)."""

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""


class BackendHealth(_Model):
    ok: bool
    reason: str = ""
    message: str = ""
    runtime_name: str = ""
    runtime_version: str = ""


class ContainerUsage(_Model):
    name: str
    container_id: str = ""
    start_time: float = 0.0
    timestamp: float = 0.0
    cpu_usage_core_nanoseconds: int = 0
    cpu_usage_nano_cores: int = 0
    memory_working_set_bytes: int = 0
    memory_usage_bytes: int = 0
    memory_rss_bytes: int = 0
    rootfs_used_bytes: int = 0
    logs_used_bytes: int = 0


class PodUsage(_Model):
    uid: str
    namespace: str
    name: str
    start_time: float = 0.0
    timestamp: float = 0.0
    containers: list[ContainerUsage] = Field(default_factory=list)
    network_rx_bytes: int = 0
    network_tx_bytes: int = 0


class NodeUsage(_Model):
    timestamp: float
    start_time: float = 0.0
    cpu_usage_core_nanoseconds: int = 0
    cpu_usage_nano_cores: int = 0
    memory_working_set_bytes: int = 0
    memory_usage_bytes: int = 0
    memory_available_bytes: int = 0
    memory_rss_bytes: int = 0
    fs_capacity_bytes: int = 0
    fs_available_bytes: int = 0
    fs_used_bytes: int = 0
    pods: list[PodUsage] = Field(default_factory=list)


class BackendCapabilities(_Model):
    """What a backend can do, so the provider never branches on a backend's name."""

    # Containers are real processes in a real pod sandbox: per-pod /etc files (hosts, resolv.conf,
    # hostname) are written for them, probes and hooks would execute, logs are the processes' own.
    runs_processes: bool = True
    # StartContainer calls in flight at which this runtime starts containers fastest: the bound of
    # a start wave (all held pods of one instant started together) unless the configuration sets
    # one. More calls in flight only make each call slower on a loaded machine (containerd 1.6 +
    # runc, 2 cores: best at 4 in both sweeps of bench/results/midnight-burst.json and docs/design.md).
    start_concurrency: int = 4


PodChangeCallback = Callable[[str], None]
"""Called with a pod UID whenever the runtime state of that pod changed (PLEG-like)."""


@runtime_checkable
class Backend(Protocol):
    """What the provider needs from a runtime. Implementations: simulated, CRI.

    Optional capabilities are separate named protocols below (:class:`Prewarmer`,
    :class:`Reconciler`, :class:`PodLifecycleAware`); the provider checks them with
    ``isinstance`` and never by a backend's name.
    """

    name: str  # for logs and metrics labels only: never branched on
    capabilities: BackendCapabilities

    @property
    def container_id_scheme(self) -> str:
        """The scheme of ``containerID`` in pod statuses (``<scheme>://<id>``): the runtime's own
        name as its Version call reports it (``containerd``, ``cri-o``), as kubelet does."""

    async def start(self) -> None:
        """Connect, adopt what runs (by labels), start background loops."""

    async def close(self) -> None:
        """Stop background loops; leave containers running (warmlet may restart)."""

    async def health(self) -> BackendHealth: ...

    def subscribe(self, callback: PodChangeCallback) -> None:
        """Register a callback for runtime changes of a pod (container exit, ...)."""

    async def ensure_image(
        self, image: str, policy: PullPolicy, credentials: Sequence[RegistryCredential] = ()
    ) -> ImageResult:
        """Make the image present according to the pull policy for a pod holding ``credentials``
        (those matching the image, in the order to try; none: anonymous); raise ImagePullError etc.
        An image pulled with credentials the pod does not hold is pulled again with the pod's own
        (kubelet's ensure-secret-pulled-images), so a private image is never used unverified."""

    async def acquire_sandbox(self, pod: PodSandboxSpec) -> SandboxInfo:
        """Give the pod a sandbox: its existing one (idempotent), a warm one, or a new one."""

    async def create_container(
        self, sandbox: SandboxInfo, pod: PodSandboxSpec, container: ContainerSpec, attempt: int
    ) -> str:
        """Create (not start) a container in the pod's sandbox; return its ID."""

    async def start_container(self, container_id: str) -> None: ...

    async def stop_container(self, container_id: str, grace_seconds: float) -> None:
        """TERM, wait up to the grace period, then KILL."""

    async def remove_container(self, container_id: str) -> None: ...

    async def pod_containers(self, pod_uid: str) -> list[ContainerRuntimeState]:
        """All container instances of the pod the runtime still has, every attempt."""

    async def release_sandbox(self, pod_uid: str, reusable: bool) -> None:
        """The pod is done: scrub its sandbox and return it to its pool, or destroy it."""

    async def list_sandboxes(self) -> list[SandboxInfo]:
        """Sandboxes this warmlet owns and that belong to a pod (not idle pool members)."""

    async def stats(self) -> NodeUsage: ...

    def log_path(self, namespace: str, name: str, uid: str, container: str, attempt: int) -> str:
        """Where the CRI log file of one container attempt lives (kubelet's layout)."""


@runtime_checkable
class Prewarmer(Protocol):
    """Optional: backends with a warm pool."""

    async def prewarm(self, pod: PodSandboxSpec, count: int) -> int:
        """Have ``count`` idle warm sandboxes ready for ``pod.workload_key`` and its images cached.

        ``pod`` is a template (e.g. from a CronJob's jobTemplate, uid/name may be placeholders):
        only its workload key, namespace and pod-level settings are used. Capped by the workload's
        pool max and the global caps. Returns how many idle sandboxes of the key are ready after
        the call (idempotent). Backends without a pool return 0.
        """


@runtime_checkable
class Reconciler(Protocol):
    """Optional: backends that own runtime state which can outlive a pod."""

    async def reconcile(self, live_pod_uids: set[str]) -> None:
        """Garbage-collect what belongs to no live pod (after adoption, and periodically).

        Sandboxes in use by a pod not in ``live_pod_uids`` are released (scrubbed back to the pool
        or destroyed); containers and log directories of unknown pods are removed. Idle pool
        sandboxes are kept. Optional: the provider may skip it for backends that own nothing.
        """


@runtime_checkable
class PodLifecycleAware(Protocol):
    """Optional: backends that keep per-pod state (final container states, log directories)
    beyond the pod's sandbox and want to know when the API no longer needs it."""

    async def final_status_written(self, pod_uid: str) -> None:
        """The pod's terminal status is in the API: its final states need not survive a restart."""

    async def pod_gone(self, pod_uid: str) -> None:
        """The pod object was deleted: drop whatever was kept for it (final states, logs)."""


@runtime_checkable
class ContainerExecutor(Protocol):
    """Optional: backends that can run a command inside a running container (exec probes and
    exec lifecycle hooks, kubelet's ExecSync)."""

    async def exec_sync(self, container_id: str, cmd: list[str], timeout_seconds: float) -> ExecResult:
        """Run ``cmd`` to completion within ``timeout_seconds``. Raises ExecTimeoutError when it
        does not finish in time, ContainerNotRunningError when the container is not running."""


@runtime_checkable
class ContainerStreamer(Protocol):
    """Optional: backends whose runtime serves interactive streams (kubelet's GetExec, GetAttach,
    GetPortForward). Each call returns the URL of one streaming session on the runtime's
    streaming server; the kubelet API proxies the client's upgraded connection (SPDY or
    WebSocket) to it unchanged. Raises ContainerNotRunningError when the container (or, for
    port-forward, the pod's sandbox) is not running."""

    async def exec_url(
        self, container_id: str, cmd: list[str], *, tty: bool, stdin: bool, stdout: bool, stderr: bool
    ) -> str: ...

    async def attach_url(
        self, container_id: str, *, tty: bool, stdin: bool, stdout: bool, stderr: bool
    ) -> str: ...

    async def port_forward_url(self, pod_uid: str, ports: list[int]) -> str: ...


@runtime_checkable
class ExecSessionTracker(Protocol):
    """Optional: backends that can find the process an interactive exec session started and end
    it when the session ends without it (a client that left). Kubelet on containerd >= 1.7 gets
    this from the runtime (the exec's context is cancelled with its connection); on runtimes that
    do not, the backend does it. The provider calls ``exec_session_started`` before it asks for
    the session's URL and ``exec_session_ended`` once the proxied connection is over, for exec
    sessions only (attach joins the container's own process; port-forward starts none)."""

    async def exec_session_started(self, container_id: str, cmd: list[str]) -> str:
        """Begin watching for the process of one exec session of ``cmd`` in the container;
        returns the session's key (for ``exec_session_ended``)."""

    async def exec_session_ended(self, key: str) -> int:
        """The session's connection is over: kill what its process left running (nothing when
        the command already ended, whatever it left behind on purpose); returns how many
        processes were killed. Never kills a process another session or the container started."""
