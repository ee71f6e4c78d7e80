"""Service-link env vars as kubelet injects them (envvars.FromServices, getServiceEnvVarMap)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provider.resolve_env import ConfigError, resolve_env
from provider.service_env import env_name, service_env, service_vars

JSON = dict[str, Any]


def svc(ns: str, name: str, ip: str, *ports: JSON) -> JSON:
    return {"metadata": {"namespace": ns, "name": name}, "spec": {"clusterIP": ip, "ports": list(ports)}}


FOO = svc("ns", "fooservice", "10.0.0.7", {"port": 8765, "protocol": "TCP", "name": "http-x"})
MASTER = svc("default", "kubernetes", "10.0.0.1", {"port": 443, "protocol": "TCP", "name": "https"})


def test_one_service_gives_kubelets_variables_in_order() -> None:
    assert service_vars(FOO) == [
        ("FOOSERVICE_SERVICE_HOST", "10.0.0.7"),
        ("FOOSERVICE_SERVICE_PORT", "8765"),
        ("FOOSERVICE_SERVICE_PORT_HTTP_X", "8765"),
        ("FOOSERVICE_PORT", "tcp://10.0.0.7:8765"),
        ("FOOSERVICE_PORT_8765_TCP", "tcp://10.0.0.7:8765"),
        ("FOOSERVICE_PORT_8765_TCP_PROTO", "tcp"),
        ("FOOSERVICE_PORT_8765_TCP_PORT", "8765"),
        ("FOOSERVICE_PORT_8765_TCP_ADDR", "10.0.0.7"),
    ]


def test_ipv6_and_udp_second_port() -> None:
    s = svc("ns", "dns-svc", "fd00::a", {"port": 53, "protocol": "UDP"}, {"port": 54})
    env = dict(service_vars(s))
    assert env["DNS_SVC_PORT"] == "udp://[fd00::a]:53"
    assert env["DNS_SVC_PORT_54_TCP"] == "tcp://[fd00::a]:54"
    assert "DNS_SVC_SERVICE_PORT_" not in "".join(env)  # unnamed ports: no _SERVICE_PORT_<name>


def test_headless_services_give_nothing() -> None:
    assert service_vars(svc("ns", "h", "None", {"port": 80})) == []
    assert service_vars(svc("ns", "h", "", {"port": 80})) == []


def test_namespace_links_and_the_master_service() -> None:
    other = svc("other", "bar", "10.0.0.9", {"port": 80})
    env = service_env([FOO, MASTER, other], "ns", True)
    assert env["FOOSERVICE_SERVICE_HOST"] == "10.0.0.7"
    assert env["KUBERNETES_SERVICE_HOST"] == "10.0.0.1"
    assert env["KUBERNETES_SERVICE_PORT_HTTPS"] == "443"
    assert not any(k.startswith("BAR_") for k in env)
    # enableServiceLinks: false keeps the master service only
    assert set(service_env([FOO, MASTER], "ns", False)) == {k for k, _ in service_vars(MASTER)}


class Source:
    def __init__(self, services: list[JSON] | None) -> None:
        self.services = services

    async def configmap(self, namespace: str, name: str) -> JSON | None:
        return {"data": {"FOOSERVICE_SERVICE_HOST": "mine"}}

    async def secret(self, namespace: str, name: str) -> JSON | None:
        return None

    async def token(self, *args: Any) -> str:
        return ""

    def service_env(self, namespace: str, enable_links: bool) -> dict[str, str] | None:
        return None if self.services is None else service_env(self.services, namespace, enable_links)


def _env(pod: JSON, container: JSON, source: Source) -> dict[str, str]:
    out = asyncio.run(resolve_env(pod, container, source, "", "", {}))  # type: ignore[arg-type]
    return {e.name: e.value for e in out}


POD: JSON = {"metadata": {"namespace": "ns", "name": "p"}, "spec": {}}


def test_resolve_env_adds_service_vars_after_the_containers_own() -> None:
    c = {"env": [{"name": "URL", "value": "http://$(FOOSERVICE_SERVICE_HOST):1"}]}
    env = _env(POD, c, Source([FOO, MASTER]))
    assert env["URL"] == "http://10.0.0.7:1"  # expansion sees the service vars
    assert env["KUBERNETES_SERVICE_HOST"] == "10.0.0.1"
    assert next(iter(env)) == "URL"
    mine = _env(POD, {"envFrom": [{"configMapRef": {"name": "c"}}]}, Source([FOO]))
    assert mine["FOOSERVICE_SERVICE_HOST"] == "mine"  # never overridden
    off = {"metadata": POD["metadata"], "spec": {"enableServiceLinks": False}}
    assert "FOOSERVICE_SERVICE_HOST" not in _env(off, {}, Source([FOO, MASTER]))


def test_resolve_env_waits_for_services_to_be_listed_once() -> None:
    with pytest.raises(ConfigError, match="services have not yet been read"):
        _env(POD, {}, Source(None))


@given(st.text(alphabet="abc-1", min_size=1, max_size=20))
def test_env_name_has_no_dash_or_lower_case(name: str) -> None:
    out = env_name(name)
    assert "-" not in out and out == out.upper() and len(out) == len(name)
