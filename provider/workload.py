"""Workload keys: which pods may share a warm sandbox.

A key names the pod's top controller (Pod → ReplicaSet → Deployment, Pod → Job →
CronJob, StatefulSet, DaemonSet, or the bare pod's own uid) plus a hash of everything
that makes sandboxes non-interchangeable (namespace, service account, runtime class,
pod security context, host namespaces, DNS, resource shape). The namespace is both in
the readable prefix and in the hash, so keys never collide across namespaces.
Jobs of a CronJob are keyed by the CronJob so prewarming can compute the key before
the Job exists.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from cachetools import TTLCache

from provider.quantity import cpu_milli, to_int

JSON = dict[str, Any]

# kind of a controller → (api path of that kind, kind its own controller may have)
_PARENTS: dict[str, tuple[str, str]] = {
    "ReplicaSet": ("/apis/apps/v1/namespaces/{ns}/replicasets/{name}", "Deployment"),
    "Job": ("/apis/batch/v1/namespaces/{ns}/jobs/{name}", "CronJob"),
}


def controller_ref(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            r: Mapping[str, Any] = ref
            return r
    return None


def _clean(v: Any) -> Any:
    """Drop empty values so an omitted field and its empty default hash the same."""
    if isinstance(v, dict):
        out = {k: _clean(x) for k, x in sorted(v.items())}
        return {k: x for k, x in out.items() if x not in (None, "", {}, [], False)}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def resource_shape(spec: Mapping[str, Any]) -> dict[str, int]:
    """Effective pod requests/limits: max(sum of app containers, largest init container)."""
    shape: dict[str, int] = {}
    for part in ("requests", "limits"):
        for res, parse in (("cpu", cpu_milli), ("memory", to_int), ("ephemeral-storage", to_int)):

            def amount(c: Mapping[str, Any], part: str = part, res: str = res, parse: Any = parse) -> int:
                value = ((c.get("resources") or {}).get(part) or {}).get(res)
                return int(parse(value)) if value is not None else 0

            app = sum(amount(c) for c in spec.get("containers") or [])
            init = max((amount(c) for c in spec.get("initContainers") or []), default=0)
            total = max(app, init)
            if total:
                shape[f"{part}.{res}"] = total
    return shape


def sandbox_attributes(namespace: str, spec: Mapping[str, Any]) -> JSON:
    """Everything that makes two sandboxes non-interchangeable, normalized."""
    return {
        "namespace": namespace,
        "serviceAccountName": spec.get("serviceAccountName") or spec.get("serviceAccount") or "default",
        "runtimeClassName": spec.get("runtimeClassName") or "",
        "securityContext": _clean(spec.get("securityContext") or {}),
        "hostNetwork": bool(spec.get("hostNetwork")),
        "hostPID": bool(spec.get("hostPID")),
        "hostIPC": bool(spec.get("hostIPC")),
        "dnsPolicy": spec.get("dnsPolicy") or "ClusterFirst",
        "dnsConfig": _clean(spec.get("dnsConfig") or {}),
        "resources": resource_shape(spec),
    }


def make_key(namespace: str, kind: str, name: str, spec: Mapping[str, Any]) -> str:
    """``<ns>/<kind>/<name>#<hash>``."""
    attrs = sandbox_attributes(namespace, spec)
    attrs["owner"] = [kind, name]
    digest = hashlib.sha256(json.dumps(attrs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"{namespace}/{kind}/{name}#{digest[:16]}"


def direct_owner(pod: Mapping[str, Any]) -> tuple[str, str]:
    """(kind, name) of the pod's controller, or ("Pod", uid) for a bare pod."""
    meta = pod.get("metadata") or {}
    ref = controller_ref(meta)
    if ref is None:
        return "Pod", str(meta.get("uid") or meta.get("name"))
    return str(ref.get("kind")), str(ref.get("name"))


def single_use(key: str) -> bool:
    """A bare pod's key (``<ns>/Pod/<uid>#…``): no other pod can ever have it, so a sandbox
    released under it could never be reused (pooling it would only keep it until evicted)."""
    return key.split("/", 2)[1:2] == ["Pod"]


def pod_key(pod: Mapping[str, Any], owner: tuple[str, str]) -> str:
    meta = pod.get("metadata") or {}
    return make_key(meta.get("namespace", "default"), owner[0], owner[1], pod.get("spec") or {})


def cronjob_key(cronjob: Mapping[str, Any]) -> str:
    """The key the pods of this CronJob's future Jobs will have."""
    meta = cronjob.get("metadata") or {}
    spec = (
        (((cronjob.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
    ).get("spec") or {}
    return make_key(meta.get("namespace", "default"), "CronJob", meta.get("name", ""), spec)


Fetch = Callable[[str], Awaitable[JSON | None]]


class OwnerResolver:
    """Walks ReplicaSet → Deployment and Job → CronJob with one cached API lookup."""

    def __init__(self, fetch: Fetch, ttl: float = 300.0, maxsize: int = 10_000) -> None:
        self._fetch = fetch  # returns the object, or None when it does not exist
        self._cache: TTLCache[tuple[str, str, str], tuple[str, str]] = TTLCache(maxsize, ttl)

    async def owner(self, pod: Mapping[str, Any]) -> tuple[str, str]:
        kind, name = direct_owner(pod)
        parent = _PARENTS.get(kind)
        if parent is None:
            return kind, name
        ns = (pod.get("metadata") or {}).get("namespace", "default")
        ck = (ns, kind, name)
        hit = self._cache.get(ck)
        if hit is not None:
            return hit
        result = (kind, name)
        try:
            obj = await self._fetch(parent[0].format(ns=ns, name=name))
        except Exception:  # lookups are best effort: fall back to the direct owner, uncached
            return result
        if obj is not None:
            ref = controller_ref(obj.get("metadata") or {})
            if ref is not None and ref.get("kind") == parent[1]:
                result = (parent[1], str(ref.get("name")))
        self._cache[ck] = result
        return result

    async def key(self, pod: Mapping[str, Any]) -> str:
        return pod_key(pod, await self.owner(pod))
