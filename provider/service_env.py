"""Service environment variables (Docker-link style), as kubelet injects them into containers.

kubelet (pkg/kubelet/kubelet_pods.go getServiceEnvVarMap, pkg/kubelet/envvars) gives every
container ``<NAME>_SERVICE_HOST``, ``<NAME>_SERVICE_PORT[_<PORT NAME>]`` and the
``<NAME>_PORT[_<port>_<PROTO>[_PROTO|_PORT|_ADDR]]`` variables of:

- the ``kubernetes`` Service of the ``default`` namespace, always (in-cluster clients find the
  API server through ``KUBERNETES_SERVICE_HOST``);
- every Service of the pod's own namespace, unless the pod sets ``enableServiceLinks: false``.

Services without a cluster IP (headless, ``None``) give none. The variables come after the
container's own env: a name the container defines itself is never overridden.

The pure functions decide; :class:`ServiceInformer` keeps the node's copy of all Services with the
one list+watch loop (:class:`provider.reflector.Reflector`), like kubelet's service lister.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from provider.kubeclient import KubeClient
from provider.reflector import Reflector, by_name

JSON = dict[str, Any]

MASTER_NAMESPACE = "default"
MASTER_SERVICES = frozenset({"kubernetes"})


def env_name(name: str) -> str:
    """kubelet's makeEnvVariableName: upper case, '-' becomes '_'."""
    return name.replace("-", "_").upper()


def has_cluster_ip(service: Mapping[str, Any]) -> bool:
    ip = (service.get("spec") or {}).get("clusterIP") or ""
    return ip not in ("", "None")


def _host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def service_vars(service: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One Service's variables in kubelet's order (envvars.FromServices)."""
    spec = service.get("spec") or {}
    ports = spec.get("ports") or []
    if not has_cluster_ip(service) or not ports:
        return []
    ip = str(spec["clusterIP"])
    prefix = env_name(str((service.get("metadata") or {}).get("name", "")))
    out = [(f"{prefix}_SERVICE_HOST", ip), (f"{prefix}_SERVICE_PORT", str(ports[0].get("port")))]
    out += [
        (f"{prefix}_SERVICE_PORT_{env_name(p['name'])}", str(p.get("port"))) for p in ports if p.get("name")
    ]
    for i, p in enumerate(ports):
        proto = str(p.get("protocol") or "TCP")
        port = int(p.get("port") or 0)
        url = f"{proto.lower()}://{_host_port(ip, port)}"
        if i == 0:
            out.append((f"{prefix}_PORT", url))
        pp = f"{prefix}_PORT_{port}_{proto.upper()}"
        out += [(pp, url), (f"{pp}_PROTO", proto.lower()), (f"{pp}_PORT", str(port)), (f"{pp}_ADDR", ip)]
    return out


def service_env(services: Iterable[Mapping[str, Any]], namespace: str, enable_links: bool) -> dict[str, str]:
    """The service variables of a pod in ``namespace`` (kubelet's getServiceEnvVarMap)."""
    chosen: dict[str, Mapping[str, Any]] = {}
    for svc in services:
        if not has_cluster_ip(svc):
            continue
        meta = svc.get("metadata") or {}
        name, ns = str(meta.get("name", "")), meta.get("namespace")
        if ns == MASTER_NAMESPACE and name in MASTER_SERVICES:
            chosen.setdefault(name, svc)
        elif ns == namespace and enable_links:
            chosen[name] = svc
    return {k: v for name in sorted(chosen) for k, v in service_vars(chosen[name])}


def enable_service_links(pod: Mapping[str, Any]) -> bool:
    """spec.enableServiceLinks, defaulted to true by the API server."""
    value = (pod.get("spec") or {}).get("enableServiceLinks")
    return value is None or bool(value)


class ServiceInformer:
    """All Services of the cluster (kubelet's service lister), kept by list+watch."""

    def __init__(self, client: KubeClient, watch_timeout: int = 240) -> None:
        self.reflector = Reflector(
            client,
            "/api/v1/services",
            key=by_name,
            watch_timeout=watch_timeout,
            name="services",
        )

    @property
    def synced(self) -> asyncio.Event:
        return self.reflector.synced

    def service_env(self, namespace: str, enable_links: bool) -> dict[str, str] | None:
        """The variables for a pod of ``namespace``; None until Services were listed once."""
        if not self.reflector.synced.is_set():
            return None
        return service_env(self.reflector.objects.values(), namespace, enable_links)

    async def run(self) -> None:
        await self.reflector.run()
