"""Workload keys: which pods may share a warm sandbox.

A key names the pod's top controller (Pod → ReplicaSet → Deployment, Pod → Job →
CronJob, StatefulSet, DaemonSet, or the bare pod's own uid) plus a hash of everything
that makes sandboxes non-interchangeable (namespace, service account, runtime class,
pod security context, host namespaces, DNS, resource shape). The namespace is both in
the readable prefix and in the hash, so keys never collide across namespaces.
Jobs of a CronJob are keyed by the CronJob so prewarming can compute the key before
the Job exists.

The chain is walked without reading ReplicaSets or Jobs (warmlet's ClusterRole grants
neither, kind-config/rbac.yaml): a ReplicaSet named ``<deployment>-<pod-template-hash>``
whose pods carry that hash belongs to the Deployment (the Deployment controller names
and labels them so), and a Job named ``<cronjob>-<minutes>`` belongs to the CronJob when
that CronJob (readable for prewarming anyway) lists the Job's uid in ``status.active``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from cachetools import TTLCache

from common.clock import SYSTEM, Clock
from common.retry import Backoff, retry
from provider.podspec import has_privileged_container
from provider.quantity import cpu_milli, to_int

JSON = dict[str, Any]

CRONJOB_PATH = "/apis/batch/v1/namespaces/{ns}/cronjobs/{name}"
# a CronJob not listing its Job yet is read again after 0.25, 0.5, 1 and 2 s
CRONJOB_RELOOK: Final = Backoff(base=0.125, cap=2.0, jitter=0.0)
CRONJOB_RELOOKS = 4
POD_TEMPLATE_HASH = "pod-template-hash"
# the CronJob controller names its Jobs "<cronjob>-<scheduled time in minutes since the epoch>"
_CRON_JOB_NAME = re.compile(r"^(?P<cronjob>.+)-(?P<minutes>[0-9]{1,12})$")


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


_SHAPED = (("cpu", cpu_milli), ("memory", to_int), ("ephemeral-storage", to_int))


def _amounts(c: Mapping[str, Any]) -> dict[str, int]:
    """A container's requests and limits of the shaped resources, as ``<part>.<resource>``."""
    out: dict[str, int] = {}
    resources = c.get("resources") or {}
    for part in ("requests", "limits"):
        values = resources.get(part)
        if values:
            for res, parse in _SHAPED:
                value = values.get(res)
                if value is not None:
                    out[f"{part}.{res}"] = int(parse(value))
    return out


def resource_shape(spec: Mapping[str, Any]) -> dict[str, int]:
    """Effective pod requests/limits: max(sum of app containers, largest init container)."""
    shape: dict[str, int] = {}
    for c in spec.get("containers") or []:
        for k, v in _amounts(c).items():
            shape[k] = shape.get(k, 0) + v
    for c in spec.get("initContainers") or []:
        for k, v in _amounts(c).items():
            shape[k] = max(shape.get(k, 0), v)
    return {k: v for k, v in shape.items() if v}


def sandbox_attributes(namespace: str, spec: Mapping[str, Any]) -> JSON:
    """Everything that makes two sandboxes non-interchangeable, normalized."""
    attrs = {
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
    # Sandbox-level isolation switches, only when set (keys of pods without them stay unchanged).
    # Ephemeral containers (kubectl debug) are added to a running pod: they never change which
    # workload it belongs to (its sandbox was made before them).
    if has_privileged_container(spec, ephemeral=False):
        attrs["privileged"] = True  # a privileged sandbox (kubelet: HasPrivilegedContainer)
    if spec.get("shareProcessNamespace"):
        attrs["shareProcessNamespace"] = True
    if spec.get("hostUsers") is False:
        attrs["hostUsers"] = False
    if spec.get("os"):
        attrs["os"] = _clean(spec["os"])
    return attrs


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


def deployment_of(pod: Mapping[str, Any], replicaset: str) -> str | None:
    """The Deployment owning ``replicaset``, read from the pod's own labels (no API call)."""
    h = ((pod.get("metadata") or {}).get("labels") or {}).get(POD_TEMPLATE_HASH)
    if h and replicaset.endswith(f"-{h}") and len(replicaset) > len(h) + 1:
        return replicaset[: -len(h) - 1]
    return None


def cronjob_candidate(job: str) -> str | None:
    """The CronJob a Job of this name would have been created by, if any."""
    m = _CRON_JOB_NAME.match(job)
    return m.group("cronjob") if m else None


def lists_active(cronjob: Mapping[str, Any], job_name: str, job_uid: str) -> bool:
    for ref in (cronjob.get("status") or {}).get("active") or []:
        if ref.get("name") == job_name and (not job_uid or ref.get("uid") == job_uid):
            return True
    return False


def _quiet(e: Exception, attempt: int) -> None:
    """Not listed yet is expected right after the Job's creation: nothing to warn about."""


class _NotListedYet(Exception):
    """The CronJob exists but does not list the Job (yet): looked up again."""


class _LookupFailed(Exception):
    """Reading the CronJob failed: not retried, the pod is keyed by its Job (uncached)."""


class OwnerResolver:
    """Walks ReplicaSet → Deployment (from labels) and Job → CronJob (one cached CronJob read).

    ``fetch`` returns the object at an API path or None when it does not exist; it is only
    called for CronJobs. A Job whose CronJob candidate exists but does not list it yet (the
    CronJob controller writes ``status.active`` right after creating the Job) is looked up
    again up to ``relooks`` times after ``relook`` back-off; a miss keys the pod by its Job,
    which is always safe.
    """

    def __init__(
        self,
        fetch: Fetch,
        ttl: float = 300.0,
        maxsize: int = 10_000,
        relook: Backoff = CRONJOB_RELOOK,
        relooks: int = CRONJOB_RELOOKS,
        clock: Clock = SYSTEM,
    ) -> None:
        self._fetch = fetch
        self._cache: TTLCache[tuple[str, str, str], tuple[str, str]] = TTLCache(maxsize, ttl)
        self._relook = relook
        self._relooks = relooks
        self._clock = clock

    async def owner(self, pod: Mapping[str, Any]) -> tuple[str, str]:
        kind, name = direct_owner(pod)
        if kind == "ReplicaSet":
            deployment = deployment_of(pod, name)
            return ("Deployment", deployment) if deployment else (kind, name)
        if kind != "Job":
            return kind, name
        meta = pod.get("metadata") or {}
        ns = meta.get("namespace", "default")
        ck = (ns, kind, name)
        hit = self._cache.get(ck)
        if hit is not None:
            return hit
        result = (kind, name)
        cronjob = cronjob_candidate(name)
        if cronjob is not None:
            job_uid = str((controller_ref(meta) or {}).get("uid") or "")
            try:
                result = await self._cronjob_owner(ns, cronjob, name, job_uid) or result
            except Exception:  # lookups are best effort: fall back to the Job, uncached
                return result
        self._cache[ck] = result
        return result

    async def _cronjob_owner(self, ns: str, cronjob: str, job: str, job_uid: str) -> tuple[str, str] | None:
        looks = 0

        async def look() -> tuple[str, str] | None:
            nonlocal looks
            looks += 1
            try:
                obj = await self._fetch(CRONJOB_PATH.format(ns=ns, name=cronjob))
            except Exception as e:
                raise _LookupFailed(repr(e)) from e
            if obj is None:
                return None
            if lists_active(obj, job, job_uid):
                return ("CronJob", cronjob)
            if looks > self._relooks:
                return None
            raise _NotListedYet(job)

        return await retry(look, self._relook, clock=self._clock, fatal=(_LookupFailed,), on_error=_quiet)

    async def key(self, pod: Mapping[str, Any]) -> str:
        return pod_key(pod, await self.owner(pod))
