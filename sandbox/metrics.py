"""Prometheus metrics of warmlet's runtime side (pool, image cache, CRI calls).

All live in the default ``prometheus_client`` registry so the provider's /metrics endpoint exports
them without wiring. Names are prefixed ``warmlet_``. Label values are bounded: workload keys are
hashed to a short label-safe form by the pool before they get here.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

POOL_SANDBOXES = Gauge(
    "warmlet_pool_sandboxes",
    "Sandboxes owned by the warm pool, by workload and state (idle, in_use).",
    ["workload", "state"],
)
POOL_HITS = Counter(
    "warmlet_pool_hits_total", "Pod starts that reused a warm sandbox of their workload.", ["workload"]
)
POOL_MISSES = Counter(
    "warmlet_pool_misses_total", "Pod starts that needed a new sandbox (no warm one).", ["workload"]
)
POOL_EVICTIONS = Counter(
    "warmlet_pool_evictions_total",
    "Idle or released sandboxes destroyed instead of kept, by reason.",
    ["reason"],
)
POOL_PREWARM = Counter(
    "warmlet_pool_prewarm_total",
    "Sandboxes created ahead of demand, by trigger (prewarm call, min top-up) and result.",
    ["trigger", "result"],
)
IMAGE_PULLS = Counter(
    "warmlet_image_pulls_total",
    "Image pulls by result (pulled, present, error, never, invalid, deduplicated, verify: a present "
    "image pulled again because the pod lacks the credentials that pulled it).",
    ["result"],
)
IMAGE_PULL_BYTES = Counter("warmlet_image_pull_bytes_total", "Bytes of images pulled (image size).")
IMAGE_PULL_SECONDS = Histogram(
    "warmlet_image_pull_duration_seconds",
    "Duration of image pulls that went to the registry.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)
IMAGE_GC_REMOVED = Counter("warmlet_image_gc_removed_total", "Images removed by the image garbage collector.")
CRI_CALL_SECONDS = Histogram(
    "warmlet_cri_call_duration_seconds",
    "Duration of CRI gRPC calls, by method.",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CRI_CALL_ERRORS = Counter(
    "warmlet_cri_call_errors_total",
    "CRI gRPC calls that failed, by method and gRPC code.",
    ["method", "code"],
)


def workload_label(key: str) -> str:
    """The ``workload`` label of pool metrics: the readable part of the workload key
    (``<ns>/<kind>/<name>``), with every bare pod of a namespace folded into ``<ns>/Pod`` so a
    stream of bare pods cannot create one series per pod (unbounded cardinality)."""
    head = key.split("#", 1)[0]
    parts = head.split("/")
    if len(parts) >= 3 and parts[1] == "Pod":
        return f"{parts[0]}/Pod"
    return head[:200]


LOG_ROTATIONS = Counter(
    "warmlet_container_log_rotations_total",
    "Container log rotations (size cap reached) by result.",
    ["result"],
)
LOG_ROTATED_BYTES = Counter(
    "warmlet_container_log_rotated_bytes_total", "Bytes of container logs moved aside by rotation."
)
OOM_KILLS = Counter(
    "warmlet_container_oom_kills_total", "Containers the runtime reported as OOMKilled (memory limit)."
)
POD_PIDS_LIMIT_ERRORS = Counter(
    "warmlet_pod_pids_limit_errors_total", "Pod cgroups whose pids.max could not be set."
)
