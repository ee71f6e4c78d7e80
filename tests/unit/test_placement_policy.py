"""Pure placement policy: thresholds, Job policy, node health/capacity, patches, node choice."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provider.placement.policy import (
    ADMISSION_ANNOTATION,
    DECISION_ANNOTATION,
    DELETION_COST_ANNOTATION,
    PLACEMENT_ANNOTATION,
    REASON_ANNOTATION,
    THRESHOLD_ANNOTATION,
    NodeView,
    PlacementPolicy,
    Resources,
    Workload,
    choose_node,
    counts_as_regular,
    decide,
    matches_node,
    node_view,
    pod_request,
    recommend_threshold,
    steer_ops,
    targets_virtual,
    threshold_for,
    tolerates,
)
from provider.timefmt import rfc3339

pytestmark = pytest.mark.unit
JSON = dict[str, Any]
POLICY = PlacementPolicy()
VLABELS = {"type": "virtual-kubelet"}
TAINT = {"key": "virtual-kubelet.io/provider", "value": "warmlet", "effect": "NoSchedule"}


def vnode(
    name: str = "v1",
    ready: bool = True,
    pods: int = 100,
    used: int = 0,
    cpu: int = 16000,
    age: float = 1.0,
    unschedulable: bool = False,
) -> NodeView:
    return NodeView(
        name,
        dict(VLABELS),
        ready,
        unschedulable,
        age,
        Resources(pods, cpu, 64 << 30),
        Resources(used, 0, 0),
        (TAINT,),
    )


def pod(annotations: dict[str, str] | None = None, **spec: Any) -> JSON:
    s: JSON = {"containers": [{"name": "c", "image": "x"}]}
    s.update(spec)
    meta: JSON = {"generateName": "p-"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"metadata": meta, "spec": s}


def rs(threshold: str | None = None, replicas: int | None = 10) -> Workload:
    anns = {THRESHOLD_ANNOTATION: threshold} if threshold is not None else {}
    return Workload("ReplicaSet", "web-1", "uid-rs", anns, replicas, "Deployment")


def apply(p: JSON, ops: list[JSON]) -> JSON:
    """RFC 6902 "add" (the only op placement emits): the parent must exist, a member is replaced."""
    out = copy.deepcopy(p)
    for op in ops:
        assert op["op"] == "add"
        parts = [x.replace("~1", "/").replace("~0", "~") for x in op["path"].split("/")[1:]]
        parent = out
        for key in parts[:-1]:
            parent = parent[key]  # KeyError: the patch would be refused by the apiserver
        parent[parts[-1]] = copy.deepcopy(op["value"])
    return out


# ---------------------------------------------------------------------------- thresholds


def test_threshold_from_annotation_wins() -> None:
    assert threshold_for(rs("3"), 100, POLICY) == (3, "annotation")
    assert threshold_for(rs("0"), None, POLICY) == (0, "annotation")
    assert threshold_for(rs("x"), 10, POLICY) == (None, "invalid-annotation")
    assert threshold_for(rs("-2"), 10, POLICY) == (None, "invalid-annotation")


def test_threshold_auto_and_unannotated() -> None:
    assert threshold_for(rs("auto"), 10, POLICY) == (8, "recommendation")
    assert threshold_for(rs("auto"), None, POLICY) == (None, "no-peak")
    assert threshold_for(rs(), 10, POLICY) == (None, "no-threshold")
    auto = PlacementPolicy(unannotated="auto")
    assert threshold_for(rs(), 10, auto) == (8, "recommendation")


@settings(deadline=None)  # a shared, busy 2-core machine
@given(st.integers(1, 100_000), st.floats(0.0, 1.0), st.integers(0, 50))
def test_recommendation_bounds(peak: int, fraction: float, minimum: int) -> None:
    rec = recommend_threshold(peak, fraction, minimum)
    assert rec is not None
    assert rec >= minimum
    assert rec == max(minimum, math.floor(peak * fraction))
    assert rec <= max(peak, minimum)


@settings(deadline=None)  # a shared, busy 2-core machine
@given(st.integers(1, 10_000), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_recommendation_monotone_in_fraction(peak: int, a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert recommend_threshold(peak, lo, 1) <= recommend_threshold(peak, hi, 1)  # type: ignore[operator]


# ---------------------------------------------------------------------------- overflow


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 50), st.integers(0, 50))
def test_overflow_exactly_beyond_threshold(threshold: int, regular: int) -> None:
    d = decide(pod(), rs(str(threshold)), regular, None, [vnode()], POLICY, "aid")
    if regular < threshold:
        assert d.placement == "regular" and d.reason == "below-threshold"
        assert not any(op["path"].startswith("/spec") for op in d.patch)
    else:
        assert d.placement == "virtual" and d.reason == "overflow-annotation"
    assert d.threshold == threshold


def test_steered_pod_patch_applies_and_targets_virtual() -> None:
    p = pod(tolerations=[{"key": "other", "operator": "Exists"}])
    d = decide(p, rs("0"), 0, None, [vnode()], POLICY, "aid-1")
    out = apply(p, d.patch)
    assert tolerates(out, TAINT)
    assert {"key": "other", "operator": "Exists"} in out["spec"]["tolerations"]
    assert matches_node(out, VLABELS) and not matches_node(out, {"type": "regular"})
    anns = out["metadata"]["annotations"]
    assert anns[DECISION_ANNOTATION] == "virtual" and anns[REASON_ANNOTATION] == "overflow-annotation"
    assert anns[ADMISSION_ANNOTATION] == "aid-1" and anns[DELETION_COST_ANNOTATION] == "-1000"
    assert targets_virtual(out, POLICY)
    # a second pass leaves it alone (reinvocation, or an already-targeted template)
    assert decide(out, rs("0"), 0, None, [vnode()], POLICY).placement == "skip"


def test_steer_keeps_existing_required_affinity_anded() -> None:
    term = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
    p = pod(
        affinity={
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
        },
        annotations={"x": "y"},
    )
    out = apply(p, steer_ops(p, POLICY))
    assert matches_node(out, {"type": "virtual-kubelet", "zone": "a"})
    assert not matches_node(out, {"type": "virtual-kubelet", "zone": "b"})
    assert not matches_node(out, {"zone": "a"})
    assert p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ] == [term]  # input untouched


def test_steer_sets_scheduler_name_when_configured() -> None:
    pol = PlacementPolicy(scheduler_name="warmlet-scheduler")
    out = apply(pod(), steer_ops(pod(), pol))
    assert out["spec"]["schedulerName"] == "warmlet-scheduler"


def test_annotations_patch_with_and_without_existing_map() -> None:
    for p in (pod(), pod({"a": "b"})):
        d = decide(p, rs("5"), 0, None, [vnode()], POLICY, "aid")
        out = apply(p, d.patch)
        assert out["metadata"]["annotations"][DECISION_ANNOTATION] == "regular"
        assert out["metadata"]["annotations"].get("a", "b") == "b"


@pytest.mark.parametrize(
    ("nodes", "reason"),
    [
        ([], "virtual-unavailable"),
        ([vnode(ready=False)], "virtual-unavailable"),
        ([vnode(unschedulable=True)], "virtual-unavailable"),
        ([vnode(age=600)], "virtual-unavailable"),
        ([vnode(pods=3, used=3)], "virtual-full"),
        ([vnode(cpu=100)], "virtual-full"),
    ],
)
def test_nothing_steered_when_virtual_not_ready_or_full(nodes: list[NodeView], reason: str) -> None:
    p = pod(containers=[{"name": "c", "image": "x", "resources": {"requests": {"cpu": "500m"}}}])
    d = decide(p, rs("0"), 5, None, nodes, POLICY, "aid")
    assert (d.placement, d.reason) == ("regular", reason)
    assert all(op["path"].startswith("/metadata") for op in d.patch)


def test_pending_steered_pods_count_against_room() -> None:
    nodes = [vnode(pods=3, used=1)]
    assert decide(pod(), rs("0"), 0, None, nodes, POLICY, pending=Resources(1)).placement == "virtual"
    d = decide(pod(), rs("0"), 0, None, nodes, POLICY, pending=Resources(2))
    assert (d.placement, d.reason) == ("regular", "virtual-full")


def test_one_healthy_node_with_room_is_enough() -> None:
    nodes = [vnode("a", ready=False), vnode("b", pods=1, used=1), vnode("c")]
    assert decide(pod(), rs("0"), 0, None, nodes, POLICY).placement == "virtual"


def test_pod_selector_must_match_a_virtual_node() -> None:
    p = pod(nodeSelector={"pool": "gpu"})
    d = decide(p, rs("0"), 0, None, [vnode()], POLICY)
    assert d.reason == "virtual-unavailable"


# ---------------------------------------------------------------------------- skips and jobs


def test_skips() -> None:
    assert decide(pod(nodeName="n1"), rs("0"), 0, None, [vnode()], POLICY).reason == "already-bound"
    assert (
        decide(pod({PLACEMENT_ANNOTATION: "regular"}), rs("0"), 0, None, [vnode()], POLICY).reason
        == "opt-out"
    )
    assert decide(pod(), None, 0, None, [vnode()], POLICY).reason == "not-a-workload"
    bare = Workload("Pod", "", "")
    assert decide(pod(), bare, 0, None, [vnode()], POLICY).reason == "not-a-workload"
    other = Workload("Other", "x", "u")
    assert decide(pod(), other, 0, None, [vnode()], POLICY).reason == "not-a-workload"
    d = decide(pod({PLACEMENT_ANNOTATION: "virtual"}), bare, 0, None, [vnode()], POLICY)
    assert (d.placement, d.reason) == ("virtual", "pod-annotation")
    assert decide(pod(), rs(), 0, 10, [vnode()], POLICY).reason == "no-threshold"
    d = decide(pod({PLACEMENT_ANNOTATION: "virtual"}), rs(), 0, 10, [vnode()], POLICY)
    assert d.placement == "virtual"


JOB = Workload("Job", "j", "uid-j", {}, None, "CronJob")


@pytest.mark.parametrize(
    ("jobs", "pod_anns", "job_anns", "want"),
    [
        (
            "never",
            {PLACEMENT_ANNOTATION: "virtual"},
            {PLACEMENT_ANNOTATION: "virtual"},
            ("skip", "jobs-never"),
        ),
        ("always", {}, {}, ("virtual", "jobs-always")),
        ("annotation", {}, {}, ("skip", "jobs-not-annotated")),
        ("annotation", {PLACEMENT_ANNOTATION: "virtual"}, {}, ("virtual", "jobs-annotation")),
        ("annotation", {}, {PLACEMENT_ANNOTATION: "virtual"}, ("virtual", "jobs-annotation")),
        ("annotation", {}, {PLACEMENT_ANNOTATION: "bogus"}, ("skip", "jobs-not-annotated")),
        ("always", {PLACEMENT_ANNOTATION: "regular"}, {}, ("skip", "opt-out")),
    ],
)
def test_job_policy(
    jobs: Any, pod_anns: dict[str, str], job_anns: dict[str, str], want: tuple[str, str]
) -> None:
    d = decide(pod(pod_anns), JOB, 0, None, [vnode()], PlacementPolicy(jobs=jobs), "aid", job_anns)
    assert (d.placement, d.reason) == want


def test_job_falls_back_when_virtual_down() -> None:
    d = decide(pod(), JOB, 0, None, [vnode(ready=False)], PlacementPolicy(jobs="always"))
    assert (d.placement, d.reason) == ("regular", "virtual-unavailable")


# ---------------------------------------------------------------------------- nodes


def test_node_view_parses_health_and_capacity() -> None:
    now = 1_000_000.0
    node = {
        "metadata": {"name": "v", "labels": VLABELS},
        "spec": {"taints": [TAINT]},
        "status": {
            "allocatable": {"pods": "110", "cpu": "4", "memory": "8Gi"},
            "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": rfc3339(now - 500)}],
        },
    }
    v = node_view(node, {"spec": {"renewTime": rfc3339(now - 5).replace("Z", ".123456Z")}}, Resources(2), now)
    assert v.ready and v.allocatable == Resources(110, 4000, 8 << 30) and v.heartbeat_age == 5
    assert v.healthy(60)
    v = node_view(node, None, Resources(), now)  # no lease: the Ready heartbeat counts
    assert v.heartbeat_age == 500 and not v.healthy(60)
    node["spec"]["unschedulable"] = True
    assert not node_view(node, None, Resources(), now - 480).healthy(60)
    node["status"]["conditions"] = []
    assert math.isinf(node_view(node, None, Resources(), now).heartbeat_age)


def test_pod_request_uses_max_of_app_sum_and_init() -> None:
    p = pod(
        containers=[
            {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
            {"name": "b", "resources": {"requests": {"cpu": "200m"}}},
        ],
        initContainers=[{"name": "i", "resources": {"requests": {"cpu": "1", "memory": "1Mi"}}}],
    )
    assert pod_request(p) == Resources(1, 1000, 64 << 20)


def test_choose_node_spreads_and_explains() -> None:
    a, b = vnode("a", pods=10, used=8), vnode("b", pods=10, used=2)
    chosen, _ = choose_node(pod(), Resources(1), [a, b], 60, TAINT["key"])
    assert chosen is not None and chosen.name == "b"
    chosen, why = choose_node(pod(), Resources(1), [vnode("a", pods=1, used=1), vnode("b", ready=False)], 60)
    assert chosen is None
    assert why == "0/2 nodes are available: 1 Too many pods, 1 node(s) were not ready."
    # without ignoring the provider taint, an untolerating pod does not fit
    chosen, why = choose_node(pod(), Resources(1), [vnode()], 60)
    assert chosen is None and "untolerated taint" in why
    chosen, why = choose_node(pod(nodeSelector={"x": "y"}), Resources(1), [vnode()], 60, TAINT["key"])
    assert chosen is None and "affinity/selector" in why
    chosen, why = choose_node(pod(), Resources(1, 99_000), [vnode()], 60, TAINT["key"])
    assert chosen is None and "Insufficient cpu" in why


@settings(deadline=None)  # a shared, busy 2-core machine
@given(
    st.lists(st.tuples(st.integers(1, 20), st.integers(0, 20), st.booleans()), min_size=0, max_size=6),
    st.integers(1, 60),
)
def test_choose_node_never_overcommits(specs: list[tuple[int, int, bool]], n: int) -> None:
    nodes = {
        f"n{i}": vnode(f"n{i}", ready=r, pods=cap, used=min(u, cap)) for i, (cap, u, r) in enumerate(specs)
    }
    free_before = sum(v.allocatable.pods - v.used.pods for v in nodes.values() if v.ready)
    bound = 0
    for _ in range(n):
        chosen, why = choose_node(pod(), Resources(1), list(nodes.values()), 60, TAINT["key"])
        if chosen is None:
            assert why.startswith(f"0/{len(nodes)} nodes are available")
            break
        assert chosen.ready and chosen.fits(Resources(1))
        nodes[chosen.name] = NodeView(
            chosen.name,
            chosen.labels,
            True,
            False,
            1.0,
            chosen.allocatable,
            chosen.used + Resources(1),
            chosen.taints,
        )
        bound += 1
    assert bound == min(n, free_before)


def test_matches_node_operators() -> None:
    def aff(*exprs: JSON, fields: list[JSON] | None = None) -> JSON:
        term: JSON = {"matchExpressions": list(exprs)}
        if fields:
            term["matchFields"] = fields
        return pod(
            affinity={
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
                }
            }
        )

    labels = {"a": "1", "n": "5"}
    assert matches_node(aff({"key": "a", "operator": "In", "values": ["1", "2"]}), labels)
    assert not matches_node(aff({"key": "a", "operator": "NotIn", "values": ["1"]}), labels)
    assert matches_node(aff({"key": "b", "operator": "DoesNotExist"}), labels)
    assert matches_node(aff({"key": "a", "operator": "Exists"}), labels)
    assert matches_node(aff({"key": "n", "operator": "Gt", "values": ["4"]}), labels)
    assert not matches_node(aff({"key": "n", "operator": "Lt", "values": ["4"]}), labels)
    assert not matches_node(aff({"key": "n", "operator": "Bogus"}), labels)
    by_name = aff(fields=[{"key": "metadata.name", "operator": "In", "values": ["v1"]}])
    assert matches_node(by_name, {}, "v1") and not matches_node(by_name, {}, "v2")


def test_tolerations() -> None:
    assert tolerates(pod(tolerations=[{"operator": "Exists"}]), TAINT)
    assert tolerates(pod(tolerations=[{"key": TAINT["key"], "operator": "Equal", "value": "warmlet"}]), TAINT)
    assert not tolerates(pod(tolerations=[{"key": TAINT["key"], "operator": "Equal", "value": "x"}]), TAINT)
    assert not tolerates(
        pod(tolerations=[{"key": TAINT["key"], "operator": "Exists", "effect": "NoExecute"}]), TAINT
    )
    assert tolerates(pod(), {**TAINT, "effect": "PreferNoSchedule"})


def test_counts_as_regular() -> None:
    virtual = {"v1"}
    assert counts_as_regular({"metadata": {}, "spec": {}, "status": {}}, virtual)
    assert counts_as_regular({"metadata": {}, "spec": {"nodeName": "r1"}, "status": {}}, virtual)
    assert not counts_as_regular({"metadata": {}, "spec": {"nodeName": "v1"}, "status": {}}, virtual)
    steered = {"metadata": {"annotations": {DECISION_ANNOTATION: "virtual"}}, "spec": {}, "status": {}}
    assert not counts_as_regular(steered, virtual)
    assert not counts_as_regular({"metadata": {"deletionTimestamp": "x"}, "spec": {}, "status": {}}, virtual)
    assert not counts_as_regular({"metadata": {}, "spec": {}, "status": {"phase": "Succeeded"}}, virtual)
