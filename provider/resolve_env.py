"""Container environment: env, envFrom, ConfigMap/Secret refs and the downward API.

Missing non-optional references raise ConfigError with kubelet's wording; the pod worker
shows it as the container's CreateContainerConfigError and retries until it resolves.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from provider.podspec import expand
from provider.quantity import parse_quantity
from provider.resolve_source import ObjectSource, ServiceEnvSource
from provider.service_env import enable_service_links
from sandbox.backend import EnvVar

JSON = dict[str, Any]


class ConfigError(Exception):
    """A container cannot be configured yet (CreateContainerConfigError)."""


def field_value(pod: Mapping[str, Any], path: str, pod_ip: str, host_ip: str) -> str:
    """The downward API's fieldRef values."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
    }
    if path in simple:
        return str(simple[path])
    for prefix, source in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        values = meta.get(source) or {}
        if path == prefix:
            return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str(values.get(path[len(prefix) + 2 : -2], ""))
    raise ConfigError(f"unsupported fieldPath: {path}")


def resource_value(
    container: Mapping[str, Any], resource: str, divisor: str | None, node_allocatable: Mapping[str, str]
) -> str:
    """resourceFieldRef: the container's request/limit (limits default to node allocatable)."""
    part, _, name = resource.partition(".")
    res = container.get("resources") or {}
    value = (res.get(part) or {}).get(name)
    if value is None and part == "limits":
        value = node_allocatable.get(name)
    amount = parse_quantity(value) if value is not None else Decimal(0)
    div = parse_quantity(divisor) if divisor else Decimal(1)
    if div == 0:  # the apiserver serializes an unset divisor as "0": kubelet reads it as 1
        div = Decimal(1)
    return str(math.ceil(amount / div))


def _decode(data: Mapping[str, str], key: str) -> str:
    return base64.b64decode(data[key]).decode(errors="replace")


async def _ref(
    source: ObjectSource, namespace: str, kind: str, ref: Mapping[str, Any]
) -> tuple[str | None, bool]:
    """(value, ok) for a configMapKeyRef / secretKeyRef; ok=False means optional and absent."""
    name, key, optional = ref.get("name", ""), ref.get("key", ""), bool(ref.get("optional"))
    if kind == "ConfigMap":
        obj = await source.configmap(namespace, name)
        label = "configmap"
    else:
        obj = await source.secret(namespace, name)
        label = "secret"
    if obj is None:
        if optional:
            return None, False
        raise ConfigError(f'{label} "{name}" not found')
    if kind == "ConfigMap":
        data = obj.get("data") or {}
        if key in data:
            return str(data[key]), True
        binary = obj.get("binaryData") or {}
        if key in binary:
            return _decode(binary, key), True
    else:
        sdata = obj.get("data") or {}
        if key in sdata:
            return _decode(sdata, key), True
    if optional:
        return None, False
    raise ConfigError(f"couldn't find key {key} in {kind} {namespace}/{name}")


async def resolve_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    source: ObjectSource,
    pod_ip: str,
    host_ip: str,
    node_allocatable: Mapping[str, str],
) -> list[EnvVar]:
    """The container's final environment, in kubelet's order (envFrom first, then env, then the
    service-link variables the container does not define itself)."""
    namespace = (pod.get("metadata") or {}).get("namespace", "default")
    services: dict[str, str] = {}
    if isinstance(source, ServiceEnvSource):
        found = source.service_env(namespace, enable_service_links(pod))
        if found is None:
            raise ConfigError("services have not yet been read at least once, cannot construct envvars")
        services = found
    values: dict[str, str] = {}
    for ef in container.get("envFrom") or []:
        prefix = ef.get("prefix", "")
        if "configMapRef" in ef:
            ref, kind = ef["configMapRef"], "ConfigMap"
            obj = await source.configmap(namespace, ref.get("name", ""))
        else:
            ref, kind = ef.get("secretRef") or {}, "Secret"
            obj = await source.secret(namespace, ref.get("name", ""))
        if obj is None:
            if ref.get("optional"):
                continue
            raise ConfigError(f'{kind.lower()} "{ref.get("name", "")}" not found')
        data = obj.get("data") or {}
        for k in data:
            values[prefix + k] = str(data[k]) if kind == "ConfigMap" else _decode(data, k)
    for e in container.get("env") or []:
        name = e["name"]
        vf = e.get("valueFrom")
        if vf is None:
            values[name] = expand(e.get("value", ""), {**services, **values})
        elif "configMapKeyRef" in vf or "secretKeyRef" in vf:
            kind = "ConfigMap" if "configMapKeyRef" in vf else "Secret"
            value, ok = await _ref(
                source, namespace, kind, vf.get("configMapKeyRef") or vf.get("secretKeyRef")
            )
            if ok and value is not None:
                values[name] = value
        elif "fieldRef" in vf:
            values[name] = field_value(pod, vf["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif "resourceFieldRef" in vf:
            rf = vf["resourceFieldRef"]
            values[name] = resource_value(container, rf["resource"], rf.get("divisor"), node_allocatable)
    values.update({k: v for k, v in services.items() if k not in values})
    return [EnvVar(name=k, value=v) for k, v in values.items()]
