"""warmlet's configuration: one pydantic model, loaded from YAML and overridden by CLI flags."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeConfig(_Section):
    name: str = Field(default_factory=lambda: f"warmlet-{socket.gethostname()}")
    provider: str = "warmlet"
    internal_ip: str = "127.0.0.1"
    cpu: str = "16"
    memory: str = "64Gi"
    pods: str = "10000"
    ephemeral_storage: str = "200Gi"
    extended_resources: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    taint: bool = True
    taint_key: str = "virtual-kubelet.io/provider"
    taint_effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"
    lease_duration_seconds: int = 40
    lease_renew_interval_seconds: float = 10.0
    status_update_interval_seconds: float = 60.0
    kubelet_version: str = "v1.36.3-warmlet"


# A Node name: a DNS-1123 subdomain (what the API server accepts for a Node and its Lease).
_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
INDEX = "{index}"


class NodeOverride(_Section):
    """One named node of a multi-node process: ``node:`` with these fields changed.

    Any ``node:`` field but ``internal_ip`` (every node of one process shares the process's
    address: its kubelet API); ``labels`` and ``extended_resources`` are added to ``node:``'s."""

    model_config = ConfigDict(extra="allow")
    name: str

    @model_validator(mode="after")
    def _known_fields(self) -> NodeOverride:
        extra = set(self.model_extra or {})
        if "internal_ip" in extra:
            raise ValueError(
                "internal_ip cannot differ per node: the nodes of one process share node.internal_ip "
                "(the address of the process's one kubelet API)"
            )
        unknown = sorted(extra - set(NodeConfig.model_fields))
        if unknown:
            raise ValueError(f"not node: fields: {', '.join(unknown)}")
        return self


class NodesConfig(_Section):
    """Several simulated nodes in one process (docs/configuration.md: ``nodes:``).

    ``count`` nodes named by ``name_pattern`` (``{name}``: node.name, ``{index}``: start_index,
    start_index + 1, ...) and the ``custom`` ones, all built from ``node:``. A YAML list given
    as ``nodes:`` itself is the ``custom`` list. Empty (the default): ``node:`` is the one node."""

    count: int = Field(default=0, ge=0, le=100_000)
    name_pattern: str = "{name}-{index}"
    start_index: int = Field(default=0, ge=0)
    custom: list[NodeOverride] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _a_list_is_custom(cls, data: Any) -> Any:
        return {"custom": data} if isinstance(data, list) else data

    @property
    def enabled(self) -> bool:
        return self.count > 0 or bool(self.custom)


def expand_nodes(template: NodeConfig, nodes: NodesConfig) -> list[NodeConfig]:
    """Every node of the process: ``[template]`` alone, else the counted then the custom ones.

    Raises ValueError for a pattern without ``{index}`` (count > 1), an invalid or repeated name."""
    if not nodes.enabled:
        return [template]
    if nodes.count > 1 and INDEX not in nodes.name_pattern:
        raise ValueError(f"nodes.name_pattern {nodes.name_pattern!r} needs {INDEX} when nodes.count > 1")
    base = nodes.name_pattern.replace("{name}", template.name)
    out = [
        template.model_copy(update={"name": base.replace(INDEX, str(nodes.start_index + i))})
        for i in range(nodes.count)
    ]
    for o in nodes.custom:
        fields: dict[str, Any] = {**template.model_dump(), **(o.model_extra or {}), "name": o.name}
        for merged in ("labels", "extended_resources"):
            fields[merged] = {**getattr(template, merged), **((o.model_extra or {}).get(merged) or {})}
        try:
            out.append(NodeConfig.model_validate(fields))
        except ValidationError as e:
            raise ValueError(f"nodes: node {o.name!r}: {e}") from None
    seen: set[str] = set()
    for n in out:
        if len(n.name) > 253 or not _NODE_NAME.fullmatch(n.name):
            raise ValueError(f"node name {n.name!r} is not a DNS-1123 subdomain (lower case, digits, -, .)")
        if n.name in seen:
            raise ValueError(f"node name {n.name!r} appears twice in nodes:")
        seen.add(n.name)
    return out


class PodConfig(_Section):
    workers: int = 64
    # Rejected on a virtual node; "reject" fails the pod with a reason, "ignore" runs it anyway.
    unsupported_policy: Literal["reject", "ignore"] = "reject"
    deletion_cost: int | None = -1000
    cluster_dns: list[str] = Field(default_factory=lambda: ["10.0.0.10"])
    cluster_domain: str = "cluster.local"
    volumes_dir: Path = Path("/var/lib/warmlet/pods")
    # Secrets, tokens, downward API and emptyDir{medium: Memory}: one tmpfs mount per volume here,
    # or plain dirs when this dir is already on tmpfs. None: "<volumes_dir>-memory".
    memory_volumes_dir: Path | None = None
    # StartContainer calls in flight in a start wave (the held pods of one warmlet.io/start-at
    # instant started together); 0: the backend's own figure (CRI: 4, simulated: 512).
    # start_wave_adaptive: the wave looks for its best width itself (provider/pods/wave_width.py).
    start_wave_concurrency: int = Field(default=0, ge=0)
    start_wave_adaptive: bool = False
    # Pod status writes per second (kubelet's kubeAPIQPS/kubeAPIBurst, for status writes): a write
    # without a token waits in a queue, one entry per pod, a newer status merged into a waiting one.
    # 0: no limit.
    status_qps: float = Field(default=0.0, ge=0)
    status_burst: int = Field(default=100, ge=1)
    # Events about pods: "all" (kubelet's Pulled/Created/Started/Killing/... and warnings),
    # "warnings" (Warning events only; the Normal ones only counted in warmlet_events_total),
    # "auto": all on a backend that runs processes (CRI), warnings on the simulated one.
    pod_events: Literal["auto", "all", "warnings"] = "auto"


class SimulatedConfig(_Section):
    pull_seconds: float = 0.0
    sandbox_seconds: float = 0.0
    start_seconds: float = 0.0
    default_run_seconds: float | None = None  # None: run until deleted (restartPolicy Always)
    cpu_nano_cores: int = 1_000_000
    memory_bytes: int = 8 * 1024 * 1024


class CRIConfig(_Section):
    runtime_endpoint: str = "unix:///run/containerd/containerd.sock"
    image_endpoint: str = ""
    call_timeout_seconds: float = 30.0
    pull_timeout_seconds: float = 600.0
    max_parallel_pulls: int = 4
    cgroup_parent: str = ""
    poll_interval_seconds: float = 0.5
    image_gc_high_bytes: int = 20 * 1024**3
    image_gc_min_age_seconds: float = 120.0
    # kubelet's containerLogMaxSize / containerLogMaxFiles / containerLogMonitorInterval: a running
    # container's log is rotated at this size, at most max_files files kept ("0": no rotation).
    container_log_max_size: str = "10Mi"
    container_log_max_files: int = Field(default=5, ge=2)
    container_log_monitor_interval_seconds: float = Field(default=10.0, gt=0)
    # kubelet's podPidsLimit: pids.max of each pod's cgroup (-1: unlimited). Needs the cgroupfs
    # driver; warmlet then gives pods a cgroup parent (cgroup_parent, default /warmlet).
    pod_pids_limit: int = -1
    # Runtime calls go through a small relay process (sandbox/cri/relay.py) that keeps the
    # connection open if warmlet is killed, so containerd finishes a StartContainer in flight
    # instead of cancelling it half-done (a process that may have run, reported StartError).
    call_relay: bool = True


class PoolConfig(_Section):
    enabled: bool = True
    min_per_workload: int = 0
    max_per_workload: int = 8
    idle_ttl_seconds: float = 600.0
    global_max_sandboxes: int = 256
    global_max_memory_bytes: int = 8 * 1024**3
    cron_prewarm: bool = True
    cron_lead_seconds: float = 20.0
    # Reserved, not acted upon yet: no backend pre-creates containers in idle sandboxes today.
    precreate_containers: bool = False


class ServerConfig(_Section):
    address: str = "127.0.0.1"
    port: int = 10250
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    cert_dir: Path = Path("/var/lib/warmlet/pki")
    client_ca_file: Path | None = None
    # kubelet's serverTLSBootstrap: the serving certificate from a kubernetes.io/kubelet-serving
    # CSR, rotated at 70-90 % of its lifetime; "auto": when the identity may create CSRs
    # (SelfSubjectAccessReview) and no tls_cert_file is given. Self-signed (or tls_cert_file) until
    # issued, and whenever CSRs fail.
    tls_bootstrap: Literal["auto", "always", "never"] = "auto"
    tls_bootstrap_expiration_seconds: int | None = Field(default=None, ge=600)  # CSR spec.expirationSeconds
    anonymous_auth: bool = False
    authorization_mode: Literal["Webhook", "AlwaysAllow"] = "Webhook"
    auth_cache_ttl_seconds: float = 60.0
    log_limit_bytes_max: int = 1024**3
    # Request bounds of the kubelet API: body (413), request line / each header (400), header count
    # (400), and the idle/slow-client deadline (connection closed).
    max_request_body_bytes: int = 64 * 1024
    max_header_line_bytes: int = 8190
    max_headers: int = 100
    idle_timeout_seconds: float = 60.0


class LeaderElectionConfig(_Section):
    """Two warmlet processes for one node name: only the Lease holder runs it (README: Operating it)."""

    enabled: bool = False
    lease_name: str = ""  # "": <node name>-warmlet-leader
    namespace: str = "kube-node-lease"
    lease_duration_seconds: float = 10.0
    renew_deadline_seconds: float = 8.0
    retry_period_seconds: float = 2.0
    identity: str = ""  # "": <hostname>_<pid>


class WebhookConfig(_Section):
    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = 8443  # 0: any free port (the registered URL follows)
    url: str | None = None  # registered URL; default https://<address>:<port>/mutate
    service: dict[str, str | int] | None = None  # in cluster: {namespace, name, port}
    configuration_name: str = "warmlet-placement"
    timeout_seconds: int = 2
    excluded_namespaces: list[str] = Field(default_factory=lambda: ["kube-system", "kube-node-lease"])
    namespace_selector: dict[str, str] = Field(default_factory=dict)  # extra matchLabels
    cert_dir: Path = Path("/var/lib/warmlet/placement-pki")
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    ca_file: Path | None = None  # caBundle when tls_cert_file is given (else warmlet's own CA)
    manage_configuration: bool = True  # create/update the MutatingWebhookConfiguration


class BinderConfig(_Section):
    enabled: bool = False
    scheduler_name: str = "warmlet-scheduler"
    concurrency: int = 64
    batch_size: int = 500
    retry_seconds: float = 5.0


class PlacementConfig(_Section):
    virtual_node_labels: dict[str, str] = Field(default_factory=lambda: {"type": "virtual-kubelet"})
    taint_key: str = "virtual-kubelet.io/provider"
    jobs: Literal["always", "never", "annotation"] = "annotation"
    unannotated: Literal["off", "auto"] = "off"  # workloads without warmlet.io/overflow-threshold
    peak_fraction: float = 0.8
    min_threshold: int = 1
    peak_window_seconds: float = 7 * 24 * 3600.0
    lease_grace_seconds: float = 60.0
    deletion_cost: int | None = -1000
    steer_to_binder: bool = False  # steered pods name the binder's scheduler
    webhook: WebhookConfig = Field(default_factory=WebhookConfig)
    binder: BinderConfig = Field(default_factory=BinderConfig)

    @property
    def enabled(self) -> bool:
        return self.webhook.enabled or self.binder.enabled


class PunctualConfig(_Section):
    """Punctual CronJobs: the Job of an opted-in CronJob created ahead of its instant and held on
    warmlet nodes until then (docs/design.md: "Punctual CronJobs"); kind-config/punctual-rbac.yaml."""

    enabled: bool = False
    lead_seconds: float = Field(default=60.0, gt=0)  # default of warmlet.io/punctual-lead-seconds
    min_lead_seconds: float = Field(default=5.0, ge=0)  # closer to the instant: the controller fires it
    max_lead_seconds: float = Field(default=600.0, gt=0)  # the largest lead an annotation may ask for
    workers: int = Field(default=16, ge=1)  # CronJobs handled at once
    leader_election: bool = False  # several warmlet nodes: only the Lease holder creates Jobs
    lease_name: str = "warmlet-punctual"
    lease_namespace: str = "kube-node-lease"


class WarmletConfig(_Section):
    kubeconfig: Path | None = None
    backend: Literal["simulated", "cri"] = "simulated"
    log_dir: Path = Path("/var/log/warmlet/pods")
    state_dir: Path = Path("/var/lib/warmlet")
    log_format: Literal["kv", "json"] = "kv"
    log_level: str = "INFO"
    node: NodeConfig = Field(default_factory=NodeConfig)
    pods: PodConfig = Field(default_factory=PodConfig)
    simulated: SimulatedConfig = Field(default_factory=SimulatedConfig)
    cri: CRIConfig = Field(default_factory=CRIConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    leader_election: LeaderElectionConfig = Field(default_factory=LeaderElectionConfig)
    punctual: PunctualConfig = Field(default_factory=PunctualConfig)
    nodes: NodesConfig = Field(default_factory=NodesConfig)

    @model_validator(mode="after")
    def _nodes_need_the_simulated_backend(self) -> WarmletConfig:
        self.node_configs()  # checked at load time (and again at start: CLI flags come after)
        return self

    def node_configs(self) -> list[NodeConfig]:
        """The nodes this process runs: ``[node]``, or the ones ``nodes:`` describes.

        ValueError: ``nodes:`` with another backend than simulated, or bad names (expand_nodes)."""
        if self.nodes.enabled and self.backend != "simulated":
            raise ValueError(
                "nodes: (several nodes in one process) needs backend: simulated; "
                "the cri backend runs one node per process (run one warmlet per node)"
            )
        return expand_nodes(self.node, self.nodes)

    @model_validator(mode="after")
    def _dirs_follow_state_dir(self) -> WarmletConfig:
        """pods.volumes_dir and server.cert_dir live under state_dir unless set themselves, so two
        nodes on one host with their own state_dir never share (and sweep) one volumes dir."""
        if "volumes_dir" not in self.pods.model_fields_set:
            self.pods.volumes_dir = self.state_dir / "pods"
        if "cert_dir" not in self.server.model_fields_set:
            self.server.cert_dir = self.state_dir / "pki"
        return self


def load_config(path: Path | None) -> WarmletConfig:
    """Read a YAML config file (missing keys keep their defaults)."""
    if path is None:
        return WarmletConfig()
    data = yaml.safe_load(path.read_text()) or {}
    return WarmletConfig.model_validate(data)
