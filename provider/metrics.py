"""Provider-side Prometheus metrics (default registry, so the kubelet API's /metrics serves them)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

POD_START_LATENCY = Histogram(
    "warmlet_pod_start_latency_seconds",
    "Pod creationTimestamp to Running observed by warmlet, by start level",
    ["level"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300),
)
POD_STARTS = Counter("warmlet_pod_starts_total", "Pod starts by start level", ["level"])
API_ERRORS = Counter(
    "warmlet_api_errors_total",
    "Kubernetes API errors by verb and HTTP code (transport: no answer at all)",
    ["verb", "code"],
)
API_REQUESTS = Counter(
    "warmlet_api_requests_total",
    "Kubernetes API requests sent, by HTTP verb (WATCH: a watch opened) and resource[/subresource]",
    ["verb", "resource"],
)
PODS_BY_PHASE = Gauge("warmlet_pods", "Pods bound to this node by phase", ["phase"])
EVENTS = Counter("warmlet_events_total", "Events recorded", ["type", "reason"])
EVENTS_DROPPED = Counter("warmlet_events_dropped_total", "Events dropped by the rate limiter or a full queue")
POD_SYNCS = Counter("warmlet_pod_syncs_total", "Pod worker syncs by result", ["result"])
POD_SYNC_SECONDS = Histogram(
    "warmlet_pod_sync_duration_seconds",
    "Duration of one pod sync",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
VOLUME_REFRESHES = Counter(
    "warmlet_volume_refreshes_total",
    "configMap/secret/downwardAPI/projected volume re-syncs by result (updated, unchanged, error)",
    ["result"],
)
STATUS_PATCHES = Counter("warmlet_pod_status_patches_total", "Pod status patches sent")
STATUS_WRITES_QUEUED = Gauge(
    "warmlet_pod_status_writes_queued", "Pod status writes waiting for a token (pods.status_qps)"
)
STATUS_WRITES_COALESCED = Counter(
    "warmlet_pod_status_writes_coalesced_total",
    "Pod status writes merged into a queued write of the same pod (one request instead of two)",
)
EVENTS_NOT_SENT = Counter(
    "warmlet_events_not_sent_total",
    "Pod Normal events counted but not written (pods.pod_events: warnings), by reason",
    ["reason"],
)
EPHEMERAL_CONTAINERS = Counter(
    "warmlet_ephemeral_containers_total",
    "Ephemeral (kubectl debug) containers by outcome: started, or the reason one could not start",
    ["result"],
)
NODE_LEASE_RENEWALS = Counter(
    "warmlet_node_lease_renewals_total", "Node lease renewals by result", ["result"]
)
PREWARMS = Counter("warmlet_cron_prewarm_total", "Sandboxes requested by CronJob prewarming")
LIFECYCLE_HOOKS = Counter(
    "warmlet_lifecycle_hooks_total",
    "Container lifecycle hooks run, by hook (postStart, preStop), handler and result",
    ["hook", "handler", "result"],
)


def record_api_error(verb: str, status: int | str) -> None:
    """KubeClient's on_error hook (``status`` is ``"transport"`` when no answer came at all)."""
    API_ERRORS.labels(verb=verb, code=str(status)).inc()


INFORMER_RELISTS = Counter(
    "warmlet_pod_informer_relists_total",
    "Full lists of this node's pods by reason (initial, gone = watch expired with 410, errors)",
    ["reason"],
)
INFORMER_WATCH_ERRORS = Counter(
    "warmlet_pod_informer_watch_errors_total", "Pod watch connections that failed (not counting 410)"
)
LEADER = Gauge("warmlet_leader", "1 while this process holds the leader election Lease and runs the node")
LEADER_TRANSITIONS = Counter(
    "warmlet_leader_transitions_total", "Times this process acquired the leader election Lease"
)
LEADER_RENEWALS = Counter(
    "warmlet_leader_renewals_total", "Leader election Lease renewals by result (ok, error)", ["result"]
)

# The start hold (provider/pods/hold.py, start_wave.py): pods prepared ahead of their
# warmlet.io/start-at instant and started together at it.
HELD_PODS = Gauge("warmlet_held_pods", "Pods prepared and held until their warmlet.io/start-at instant")
START_WAVE_SIZE = Histogram(
    "warmlet_start_wave_pods",
    "Pods started by one start wave (all the held pods of one instant)",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
START_WAVE_CONCURRENCY = Gauge(
    "warmlet_start_wave_concurrency",
    "StartContainer calls in flight the start wave allows now (adaptive: the width it found)",
)
START_WAVE_SECONDS = Histogram(
    "warmlet_start_wave_duration_seconds",
    "From a start wave's instant to its last StartContainer answered",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60),
)
START_LATENESS = Histogram(
    "warmlet_start_lateness_seconds",
    "First app container start (the runtime's startedAt) minus the pod's warmlet.io/start-at instant",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60),
)
