"""Admission on a virtual node: host-level features are rejected unless the policy ignores them."""

from __future__ import annotations

from typing import Any

from provider.validation import REJECT_REASON, unsupported_features, validate_pod


def pod(**spec: Any) -> dict[str, Any]:
    spec.setdefault("containers", [{"name": "app", "image": "x"}])
    return {"spec": spec}


def test_plain_pod_accepted() -> None:
    assert validate_pod(pod()) is None
    assert unsupported_features(pod(volumes=[{"name": "e", "emptyDir": {}}])) == []


def test_each_host_feature_is_reported() -> None:
    p = pod(
        hostNetwork=True,
        hostPID=True,
        hostIPC=True,
        volumes=[{"name": "data", "hostPath": {"path": "/var/data"}}],
        initContainers=[{"name": "init", "ports": [{"containerPort": 1, "hostPort": 81}]}],
        containers=[
            {"name": "web", "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 9}]}
        ],
    )
    assert unsupported_features(p) == [
        "hostNetwork: true",
        "hostPID: true",
        "hostIPC: true",
        "hostPath volume 'data' (/var/data)",
        "hostPort 81 on container 'init'",
        "hostPort 8080 on container 'web'",
    ]
    r = validate_pod(p)
    assert r is not None and r.reason == REJECT_REASON == "UnsupportedOnVirtualNode"
    assert "hostPath volume 'data' (/var/data)" in r.message and "virtual node" in r.message


def test_false_flags_and_zero_host_port_are_fine() -> None:
    p = pod(hostNetwork=False, containers=[{"name": "a", "ports": [{"containerPort": 80, "hostPort": 0}]}])
    assert validate_pod(p) is None


def test_ignore_policy_accepts() -> None:
    assert validate_pod(pod(hostNetwork=True), policy="ignore") is None
    assert validate_pod(pod(hostNetwork=True), policy="reject") is not None


def test_volume_types_without_a_driver_are_unsupported() -> None:
    vols = [
        {"name": "ok1", "emptyDir": {}},
        {"name": "ok2", "emptyDir": {"medium": "Memory"}},
        {"name": "ok3", "configMap": {"name": "c"}},
        {"name": "ok4", "secret": {"secretName": "s"}},
        {"name": "ok5", "downwardAPI": {"items": []}},
        {
            "name": "ok6",
            "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}, {"configMap": {}}]},
        },
        {"name": "pvc", "persistentVolumeClaim": {"claimName": "x"}},
        {"name": "csi", "csi": {"driver": "d"}},
        {"name": "huge", "emptyDir": {"medium": "HugePages"}},
        {"name": "bundle", "projected": {"sources": [{"clusterTrustBundle": {"path": "b"}}]}},
    ]
    assert unsupported_features(pod(volumes=vols)) == [
        "persistentVolumeClaim volume 'pvc'",
        "csi volume 'csi'",
        "emptyDir volume 'huge' with medium HugePages",
        "projected volume 'bundle' source clusterTrustBundle",
    ]
