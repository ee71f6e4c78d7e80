"""The Node object and its conditions, as built for registration and status updates."""

from __future__ import annotations

from provider.config import NodeConfig
from provider.node_object import (
    capacity,
    conditions_summary,
    node_conditions,
    node_labels,
    node_object,
    node_restriction_safe,
    node_status,
    node_taints,
)
from provider.timefmt import micro_time, rfc3339
from sandbox.backend import BackendHealth

OK = BackendHealth(ok=True, runtime_name="containerd", runtime_version="1.6.20")
BAD = BackendHealth(ok=False, reason="RuntimeDown", message="socket refused")


def cfg() -> NodeConfig:
    return NodeConfig(name="vn", labels={"pool": "jobs"}, extended_resources={"example.com/gpu": "2"})


def test_labels_taints_capacity() -> None:
    c = cfg()
    labels = node_labels(c)
    assert labels["type"] == "virtual-kubelet" and labels["kubernetes.io/role"] == "agent"
    assert labels["kubernetes.io/hostname"] == "vn" and labels["pool"] == "jobs"
    assert labels["kubernetes.io/os"] == labels["beta.kubernetes.io/os"] == "linux"
    assert labels["kubernetes.io/arch"] == labels["beta.kubernetes.io/arch"]
    assert node_taints(c) == [
        {"key": "virtual-kubelet.io/provider", "value": "warmlet", "effect": "NoSchedule"}
    ]
    c.taint = False
    assert node_taints(c) == []
    assert capacity(c) == {
        "cpu": "16",
        "memory": "64Gi",
        "pods": "10000",
        "ephemeral-storage": "200Gi",
        "example.com/gpu": "2",
    }


def test_node_restriction_filter() -> None:
    safe = node_restriction_safe(node_labels(cfg()))
    assert "kubernetes.io/role" not in safe
    assert (
        safe["kubernetes.io/hostname"] == "vn"
        and safe["type"] == "virtual-kubelet"
        and safe["pool"] == "jobs"
    )
    assert "node.kubernetes.io/exclude-from-external-load-balancers" in safe


def test_ready_and_not_ready_conditions() -> None:
    conds = {c["type"]: c for c in node_conditions(OK, 100.0)}
    assert conds["Ready"]["status"] == "True" and conds["Ready"]["reason"] == "KubeletReady"
    for t, reason in [
        ("MemoryPressure", "KubeletHasSufficientMemory"),
        ("DiskPressure", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "KubeletHasSufficientPID"),
        ("NetworkUnavailable", "RouteCreated"),
    ]:
        assert conds[t]["status"] == "False" and conds[t]["reason"] == reason
    assert all(c["lastHeartbeatTime"] == rfc3339(100.0) for c in conds.values())
    bad = {c["type"]: c for c in node_conditions(BAD, 200.0, list(conds.values()))}
    assert bad["Ready"]["status"] == "False" and bad["Ready"]["reason"] == "KubeletNotReady"
    assert bad["Ready"]["message"] == "container runtime is not ready: RuntimeDown: socket refused"
    assert bad["Ready"]["lastTransitionTime"] == rfc3339(200.0)
    assert bad["DiskPressure"]["lastTransitionTime"] == rfc3339(100.0)  # unchanged status keeps its time
    assert bad["DiskPressure"]["lastHeartbeatTime"] == rfc3339(200.0)


def test_summary_ignores_heartbeats() -> None:
    a = node_conditions(OK, 1.0)
    b = node_conditions(OK, 99.0, a)
    assert conditions_summary(a) == conditions_summary(b)
    assert conditions_summary(a) != conditions_summary(node_conditions(BAD, 99.0, a))


def test_status_fields() -> None:
    st = node_status(cfg(), OK, 1.0, 10250)
    assert st["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10250}}
    assert st["addresses"] == [
        {"type": "InternalIP", "address": "127.0.0.1"},
        {"type": "Hostname", "address": "vn"},
    ]
    info = st["nodeInfo"]
    assert info["containerRuntimeVersion"] == "containerd://1.6.20"
    assert info["kubeletVersion"] == "v1.36.3-warmlet" and info["operatingSystem"] == "linux"
    assert st["allocatable"] == st["capacity"]
    obj = node_object(cfg(), OK, 1.0, 10250)
    assert obj["metadata"]["name"] == "vn" and obj["spec"]["taints"]


def test_micro_time() -> None:
    assert micro_time(1.5) == "1970-01-01T00:00:01.500000Z"


def test_overwritten_by_others_notices_a_condition_someone_else_wrote() -> None:
    from provider.node_object import conditions_summary, overwritten_by_others

    ours = [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]
    written = conditions_summary(ours)
    assert not overwritten_by_others({"status": {"conditions": ours}}, written)
    unknown = [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}]
    assert overwritten_by_others({"status": {"conditions": unknown}}, written)
    assert overwritten_by_others({"status": {}}, written)
    # nothing written yet (or a refresh already pending): nothing to compare with
    assert not overwritten_by_others({"status": {"conditions": unknown}}, [])
