"""Pure placement policy: pod + owner workload + counts + node health/capacity → decision.

No I/O here, so every branch is unit tested (tests/unit/test_placement_policy.py): the webhook
and the binder only gather inputs and apply what these functions return.

Overflow: a replicated workload (ReplicaSet/Deployment, StatefulSet) keeps ``threshold`` pods
on regular nodes; each pod beyond that is steered to the virtual node (toleration + required
node affinity). The threshold is the annotation ``warmlet.io/overflow-threshold`` on the
workload (an integer, or ``auto``), else — when the config says so — a recommendation from the
workload's observed peak replicas. Job/CronJob pods follow the ``jobs`` policy. Nothing is
steered when no virtual node is healthy (Ready, schedulable, lease fresh) with room for the pod:
the pod then stays on regular nodes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from provider.quantity import cpu_milli, to_int
from provider.scheduling import selects_node
from provider.scheduling import tolerates as tolerations_accept
from provider.timefmt import parse_rfc3339
from provider.workload import resource_shape

JSON = dict[str, Any]

THRESHOLD_ANNOTATION = "warmlet.io/overflow-threshold"
PLACEMENT_ANNOTATION = "warmlet.io/placement"  # on a pod (template), Job or CronJob: virtual|regular
DECISION_ANNOTATION = "warmlet.io/placement-decision"  # written by the webhook: virtual|regular
REASON_ANNOTATION = "warmlet.io/placement-reason"
ADMISSION_ANNOTATION = "warmlet.io/admission-id"  # dedupes in-flight admissions with listed pods
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"

JobsPolicy = Literal["always", "never", "annotation"]
Unannotated = Literal["off", "auto"]
Placement = Literal["virtual", "regular", "skip"]
REPLICATED_KINDS = ("ReplicaSet", "StatefulSet")
TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Resources:
    """What a pod asks for / a node offers: pod slots, CPU millicores, memory bytes."""

    pods: int = 0
    cpu_milli: int = 0
    memory: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.pods + other.pods, self.cpu_milli + other.cpu_milli, self.memory + other.memory)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.pods - other.pods, self.cpu_milli - other.cpu_milli, self.memory - other.memory)

    def covers(self, need: Resources) -> bool:
        return self.pods >= need.pods and self.cpu_milli >= need.cpu_milli and self.memory >= need.memory


def pod_request(pod: Mapping[str, Any]) -> Resources:
    """One pod slot plus the effective CPU/memory requests (max of app sum and init containers)."""
    shape = resource_shape(pod.get("spec") or {})
    return Resources(1, shape.get("requests.cpu", 0), shape.get("requests.memory", 0))


def occupies_node(pod: Mapping[str, Any]) -> bool:
    """A pod counts against its node's capacity until it is finished (as kube-scheduler counts)."""
    return (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES


@dataclass(frozen=True)
class PlacementPolicy:
    """The knobs of the policy (built from ``placement:`` in the config)."""

    virtual_node_labels: Mapping[str, str] = field(default_factory=lambda: {"type": "virtual-kubelet"})
    taint_key: str = "virtual-kubelet.io/provider"
    jobs: JobsPolicy = "annotation"
    unannotated: Unannotated = "off"
    peak_fraction: float = 0.8
    min_threshold: int = 1
    lease_grace_seconds: float = 60.0
    deletion_cost: int | None = -1000
    scheduler_name: str | None = None  # set on steered pods so warmlet's binder binds them


# ---------------------------------------------------------------------------- nodes


@dataclass(frozen=True)
class NodeView:
    """What placement needs to know of one warmlet node."""

    name: str
    labels: Mapping[str, str]
    ready: bool
    unschedulable: bool
    heartbeat_age: float  # seconds since the lease was renewed (or the Ready heartbeat)
    allocatable: Resources
    used: Resources
    taints: tuple[Mapping[str, Any], ...] = ()

    def healthy(self, grace: float) -> bool:
        return self.ready and not self.unschedulable and self.heartbeat_age <= grace

    def free(self) -> Resources:
        return self.allocatable - self.used

    def fits(self, need: Resources) -> bool:
        return self.free().covers(need)

    def why_not(self, need: Resources, grace: float) -> str | None:
        """None when the pod fits; else kube-scheduler-like wording of the first reason."""
        if not self.ready:
            return "node(s) were not ready"
        if self.unschedulable:
            return "node(s) were unschedulable"
        if self.heartbeat_age > grace:
            return "node(s) had a stale lease"
        free = self.free()
        if free.pods < need.pods:
            return "Too many pods"
        if free.cpu_milli < need.cpu_milli:
            return "Insufficient cpu"
        if free.memory < need.memory:
            return "Insufficient memory"
        return None


def node_view(
    node: Mapping[str, Any], lease: Mapping[str, Any] | None, used: Resources, now: float
) -> NodeView:
    """Parse a Node (+ its Lease) into a NodeView; ``now`` is wall-clock seconds."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    ready_cond: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
    )
    heartbeat = None
    if lease is not None:
        renew = (lease.get("spec") or {}).get("renewTime")
        heartbeat = parse_rfc3339(renew) if renew else None
    if heartbeat is None:
        hb = ready_cond.get("lastHeartbeatTime")
        heartbeat = parse_rfc3339(hb) if hb else None
    alloc = status.get("allocatable") or status.get("capacity") or {}
    return NodeView(
        name=str(meta.get("name", "")),
        labels=dict(meta.get("labels") or {}),
        ready=ready_cond.get("status") == "True",
        unschedulable=bool(spec.get("unschedulable")),
        heartbeat_age=max(0.0, now - heartbeat) if heartbeat is not None else math.inf,
        allocatable=Resources(
            int(to_int(alloc.get("pods", 0))),
            cpu_milli(alloc.get("cpu", 0)),
            int(to_int(alloc.get("memory", 0))),
        ),
        used=used,
        taints=tuple(spec.get("taints") or ()),
    )


def matches_node(pod: Mapping[str, Any], labels: Mapping[str, str], name: str = "") -> bool:
    """The pod's nodeSelector and required node affinity accept the node (labels, name)."""
    return selects_node(pod.get("spec") or {}, labels, name)


def tolerates(pod: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """The pod tolerates the taint (NoSchedule/NoExecute semantics of kube-scheduler)."""
    return tolerations_accept((pod.get("spec") or {}).get("tolerations") or [], taint)


def choose_node(
    pod: Mapping[str, Any],
    need: Resources,
    nodes: Sequence[NodeView],
    grace: float,
    ignore_taint_key: str = "",
) -> tuple[NodeView | None, str]:
    """The healthy matching node with the most free pod slots (spreads a burst), or why none fits.

    ``ignore_taint_key``: the provider taint, which only keeps *other* schedulers' pods away; a
    pod naming warmlet's scheduler has chosen warmlet nodes already.
    """
    best: NodeView | None = None
    reasons: dict[str, int] = {}
    for n in nodes:
        why = n.why_not(need, grace)
        if why is None and not matches_node(pod, n.labels, n.name):
            why = "node(s) didn't match Pod's node affinity/selector"
        if why is None and not all(tolerates(pod, t) for t in n.taints if t.get("key") != ignore_taint_key):
            why = "node(s) had untolerated taint"
        if why is not None:
            reasons[why] = reasons.get(why, 0) + 1
            continue
        if best is None or (n.free().pods, n.free().cpu_milli) > (best.free().pods, best.free().cpu_milli):
            best = n
    if best is not None:
        return best, ""
    detail = ", ".join(f"{c} {r}" for r, c in sorted(reasons.items()))
    return None, f"0/{len(nodes)} nodes are available" + (f": {detail}." if detail else ".")


# ---------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    """The pod's owner as placement sees it: the top controller's annotations and replicas."""

    kind: str  # ReplicaSet | StatefulSet | Job | Other | Pod
    name: str
    uid: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    replicas: int | None = None
    top_kind: str = ""  # Deployment / CronJob when the direct owner has one


def recommend_threshold(peak: int | None, fraction: float, minimum: int) -> int | None:
    """Pods kept on regular nodes when the workload gave no number: a fraction of its peak.

    Regular nodes are sized for the steady part of the workload; the top ``1 - fraction`` of its
    observed peak (the burst) overflows to the virtual node. None without an observed peak.
    """
    if peak is None or peak <= 0:
        return None
    return max(minimum, math.floor(peak * fraction))


def threshold_for(workload: Workload, peak: int | None, policy: PlacementPolicy) -> tuple[int | None, str]:
    """(threshold, source): the annotation's number, ``auto``/config → recommendation, or None."""
    raw = (workload.annotations.get(THRESHOLD_ANNOTATION) or "").strip()
    if raw and raw != "auto":
        try:
            value = int(raw)
        except ValueError:
            return None, "invalid-annotation"
        return (max(0, value), "annotation") if value >= 0 else (None, "invalid-annotation")
    if raw == "auto" or policy.unannotated == "auto":
        rec = recommend_threshold(peak, policy.peak_fraction, policy.min_threshold)
        return rec, "recommendation" if rec is not None else "no-peak"
    return None, "no-threshold"


def _placement_hint(*annotation_maps: Mapping[str, str] | None) -> str | None:
    for m in annotation_maps:
        v = (m or {}).get(PLACEMENT_ANNOTATION)
        if v in ("virtual", "regular"):
            return v
    return None


def targets_virtual(pod: Mapping[str, Any], policy: PlacementPolicy) -> bool:
    """The pod already tolerates the provider taint and selects virtual nodes (nothing to add)."""
    taint = {"key": policy.taint_key, "effect": "NoSchedule", "value": ""}
    if not any(
        t.get("key") == policy.taint_key or (not t.get("key") and t.get("operator") == "Exists")
        for t in (pod.get("spec") or {}).get("tolerations") or []
    ) or not tolerates(pod, taint):
        return False
    spec = pod.get("spec") or {}
    return bool(
        spec.get("nodeSelector") or (spec.get("affinity") or {}).get("nodeAffinity")
    ) and matches_node(pod, policy.virtual_node_labels)


# ---------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Decision:
    placement: Placement
    reason: str
    patch: list[JSON] = field(default_factory=list)
    threshold: int | None = None


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def annotation_ops(pod: Mapping[str, Any], values: Mapping[str, str]) -> list[JSON]:
    """JSON patch ops setting annotations (creating the map when the pod has none)."""
    existing = (pod.get("metadata") or {}).get("annotations")
    if existing is None:
        return [{"op": "add", "path": "/metadata/annotations", "value": dict(values)}]
    return [
        {"op": "add", "path": f"/metadata/annotations/{_escape(k)}", "value": v} for k, v in values.items()
    ]


def steer_ops(pod: Mapping[str, Any], policy: PlacementPolicy) -> list[JSON]:
    """Toleration of the provider taint + required node affinity to virtual nodes (+ scheduler).

    The affinity is ANDed into every existing required term, so a pod's own node constraints
    still hold; whole fields are replaced ("add" on a member replaces it) to stay valid JSON
    patch whether or not the pod had them.
    """
    spec = pod.get("spec") or {}
    ops: list[JSON] = []
    tol = {"key": policy.taint_key, "operator": "Exists", "effect": "NoSchedule"}
    if not tolerates(pod, {"key": policy.taint_key, "effect": "NoSchedule", "value": ""}):
        ops.append(
            {"op": "add", "path": "/spec/tolerations", "value": [*(spec.get("tolerations") or []), tol]}
        )
    affinity = copy.deepcopy(spec.get("affinity") or {})
    na = affinity.setdefault("nodeAffinity", {})
    req = na.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = [dict(t) for t in req.get("nodeSelectorTerms") or []] or [{}]
    exprs = [
        {"key": k, "operator": "In", "values": [v]} for k, v in sorted(policy.virtual_node_labels.items())
    ]
    for t in terms:
        t["matchExpressions"] = [*(t.get("matchExpressions") or []), *exprs]
    na["requiredDuringSchedulingIgnoredDuringExecution"] = {"nodeSelectorTerms": terms}
    ops.append({"op": "add", "path": "/spec/affinity", "value": affinity})
    if policy.scheduler_name:
        ops.append({"op": "add", "path": "/spec/schedulerName", "value": policy.scheduler_name})
    return ops


def virtual_room(
    pod: Mapping[str, Any],
    nodes: Iterable[NodeView],
    policy: PlacementPolicy,
    pending: Resources = Resources(),
) -> str | None:
    """None when some healthy virtual node can take the pod, else the reason (unavailable/full).

    ``pending``: pods already steered but not yet bound (they will take room too).
    """
    need = pod_request(pod)
    healthy = [
        n for n in nodes if n.healthy(policy.lease_grace_seconds) and matches_node(pod, n.labels, n.name)
    ]
    if not healthy:
        return "virtual-unavailable"
    total = Resources()
    for n in healthy:
        total = total + n.free()
    if not any(n.fits(need) for n in healthy) or not (total - pending).covers(need):
        return "virtual-full"
    return None


def early_skip(pod: Mapping[str, Any], policy: PlacementPolicy) -> Decision | None:
    """Pods placement leaves alone whatever their owner: bound, already targeted, opted out."""
    if (pod.get("spec") or {}).get("nodeName"):
        return Decision("skip", "already-bound")
    if targets_virtual(pod, policy):
        return Decision("skip", "already-targeted")
    if _placement_hint((pod.get("metadata") or {}).get("annotations")) == "regular":
        return Decision("skip", "opt-out")
    return None


def decide(
    pod: Mapping[str, Any],
    workload: Workload | None,
    regular_count: int,
    peak: int | None,
    nodes: Sequence[NodeView],
    policy: PlacementPolicy,
    admission_id: str = "",
    job_annotations: Mapping[str, str] | None = None,
    pending: Resources = Resources(),
) -> Decision:
    """Where this pod (being created) should go, and the patch that gets it there.

    ``regular_count``: the workload's live pods that are not on / steered to the virtual node.
    ``job_annotations``: the Job's and CronJob's annotations merged (for ``jobs: annotation``).
    ``pending``: what pods steered earlier but not bound yet will take on the virtual nodes.
    """
    early = early_skip(pod, policy)
    if early is not None:
        return early
    hint = _placement_hint((pod.get("metadata") or {}).get("annotations"))
    if workload is None or workload.kind in ("Pod", "Other"):
        if hint != "virtual":
            return Decision("skip", "not-a-workload")
        return _steer_or_fallback(pod, nodes, policy, "pod-annotation", None, admission_id, pending)
    if workload.kind == "Job":
        if policy.jobs == "never":
            return Decision("skip", "jobs-never")
        if (
            policy.jobs == "annotation"
            and (hint or _placement_hint(job_annotations, workload.annotations)) != "virtual"
        ):
            return Decision("skip", "jobs-not-annotated")
        return _steer_or_fallback(pod, nodes, policy, f"jobs-{policy.jobs}", None, admission_id, pending)
    if workload.kind not in REPLICATED_KINDS:
        return Decision("skip", "not-a-workload")
    threshold, source = threshold_for(workload, peak, policy)
    if threshold is None:
        if hint == "virtual":
            return _steer_or_fallback(pod, nodes, policy, "pod-annotation", None, admission_id, pending)
        return Decision("skip", source)
    if regular_count < threshold:
        return _regular(pod, "below-threshold", threshold, admission_id)
    return _steer_or_fallback(pod, nodes, policy, f"overflow-{source}", threshold, admission_id, pending)


def _regular(pod: Mapping[str, Any], reason: str, threshold: int | None, admission_id: str) -> Decision:
    values = {DECISION_ANNOTATION: "regular", REASON_ANNOTATION: reason}
    if admission_id:
        values[ADMISSION_ANNOTATION] = admission_id
    return Decision("regular", reason, annotation_ops(pod, values), threshold)


def _steer_or_fallback(
    pod: Mapping[str, Any],
    nodes: Sequence[NodeView],
    policy: PlacementPolicy,
    reason: str,
    threshold: int | None,
    admission_id: str,
    pending: Resources,
) -> Decision:
    blocked = virtual_room(pod, nodes, policy, pending)
    if blocked is not None:
        return _regular(pod, blocked, threshold, admission_id)
    values = {DECISION_ANNOTATION: "virtual", REASON_ANNOTATION: reason}
    if admission_id:
        values[ADMISSION_ANNOTATION] = admission_id
    if policy.deletion_cost is not None:
        values[DELETION_COST_ANNOTATION] = str(policy.deletion_cost)
    return Decision("virtual", reason, [*steer_ops(pod, policy), *annotation_ops(pod, values)], threshold)


def counts_as_regular(pod: Mapping[str, Any], virtual_nodes: set[str]) -> bool:
    """A live pod of the workload that is not on, nor steered to, a virtual node."""
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp") or not occupies_node(pod):
        return False
    if (meta.get("annotations") or {}).get(DECISION_ANNOTATION) == "virtual":
        return False
    return (pod.get("spec") or {}).get("nodeName") not in virtual_nodes
