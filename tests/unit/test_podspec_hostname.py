"""The pod's hostname as kubelet derives it: hostnameOverride, hostname, subdomain, FQDN."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from provider.podspec import kernel_hostname, pod_hostname_and_domain, sandbox_spec


def pod(**spec: Any) -> dict[str, Any]:
    spec.setdefault("containers", [{"name": "app", "image": "x"}])
    return {"metadata": {"name": "web-0", "namespace": "ns", "uid": "u"}, "spec": spec}


def test_hostname_override_alone_is_the_hostname() -> None:
    p = pod(hostnameOverride="override-host")
    assert pod_hostname_and_domain(p, "cluster.local") == ("override-host", "")
    assert sandbox_spec(p, "k", [], "cluster.local").hostname == "override-host"


def test_hostname_override_wins_over_hostname_and_subdomain() -> None:
    p = pod(hostnameOverride="a.b.c", hostname="h", subdomain="sub")
    assert pod_hostname_and_domain(p, "cluster.local") == ("a.b.c", "")
    assert kernel_hostname(p, "cluster.local") == "a.b.c"


def test_hostname_and_subdomain_give_the_pod_a_domain() -> None:
    p = pod(hostname="h", subdomain="sub")
    assert pod_hostname_and_domain(p, "cluster.local") == ("h", "sub.ns.svc.cluster.local")
    assert kernel_hostname(p, "cluster.local") == "h"
    fqdn = pod(hostname="h", subdomain="sub", setHostnameAsFQDN=True)
    assert kernel_hostname(fqdn, "cluster.local") == "h.sub.ns.svc.cluster.local"
    assert kernel_hostname(pod(setHostnameAsFQDN=True), "cluster.local") == "web-0"


def test_long_names_are_truncated_like_kubelet() -> None:
    name = "a" * 62 + "-b"
    assert pod_hostname_and_domain(pod(hostname=name), "c")[0] == "a" * 62


@given(st.text(alphabet="ab-.", min_size=1, max_size=80))
def test_hostname_is_at_most_63_and_never_ends_in_dash_or_dot_when_cut(name: str) -> None:
    host, _ = pod_hostname_and_domain(pod(hostnameOverride=name), "c")
    assert len(host) <= 63
    if len(name) > 63:
        assert not host.endswith(("-", "."))


def test_a_privileged_container_makes_the_sandbox_privileged() -> None:
    assert not sandbox_spec(pod(), "k", [], "c").security.privileged
    for part in ("containers", "initContainers", "ephemeralContainers"):
        p = pod(**{part: [{"name": "x", "image": "i", "securityContext": {"privileged": True}}]})
        assert sandbox_spec(p, "k", [], "c").security.privileged, part
