"""kubelet's own admission on warmlet: a pod for another OS and unsafe sysctls are rejected."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from provider.validation import (
    OS_REASON,
    SAFE_SYSCTLS,
    SYSCTL_REASON,
    normalize_sysctl,
    validate_pod,
)


def pod(**spec: Any) -> dict[str, Any]:
    spec.setdefault("containers", [{"name": "app", "image": "x"}])
    return {"spec": spec}


def test_pod_for_another_os_is_rejected_with_kubelets_reason_and_message() -> None:
    r = validate_pod(pod(os={"name": "windows"}))
    assert r is not None
    assert r.reason == OS_REASON == "PodOSNotSupported"
    assert r.message == "Failed to admit pod as the OS field doesn't match node OS"
    assert validate_pod(pod(os={"name": "linux"})) is None


def test_unsafe_sysctl_is_forbidden_even_under_ignore_policy() -> None:
    p = pod(securityContext={"sysctls": [{"name": "kernel.msgmax", "value": "10000000000"}]})
    for policy in ("reject", "ignore"):
        r = validate_pod(p, policy)
        assert r is not None
        assert r.reason == SYSCTL_REASON == "SysctlForbidden"
        assert r.message == 'forbidden sysctl: "kernel.msgmax" not allowlisted'


def test_safe_sysctls_with_dots_or_slashes_are_admitted() -> None:
    p = pod(
        securityContext={
            "sysctls": [
                {"name": "kernel.shm_rmid_forced", "value": "1"},
                {"name": "kernel/shm_rmid_forced", "value": "1"},
                {"name": "net/ipv4/ip_local_port_range", "value": "1024 65535"},
            ]
        }
    )
    assert validate_pod(p) is None


def test_normalize_sysctl_like_kubelet() -> None:
    assert normalize_sysctl("kernel/shm_rmid_forced") == "kernel.shm_rmid_forced"
    assert normalize_sysctl("net.ipv4.conf.eth0/1.forwarding") == "net.ipv4.conf.eth0/1.forwarding"
    assert normalize_sysctl("net/ipv4/conf/eth0.1/forwarding") == "net.ipv4.conf.eth0/1.forwarding"
    assert normalize_sysctl("plain") == "plain"


@given(st.text(alphabet="abc._/", max_size=12))
def test_admission_matches_the_allowlist_of_normalized_names(name: str) -> None:
    once = normalize_sysctl(name)
    admitted = validate_pod(pod(securityContext={"sysctls": [{"name": name}]})) is None
    assert (once in SAFE_SYSCTLS) == admitted
