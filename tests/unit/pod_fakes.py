"""Fakes for pod worker tests: an in-memory API, an event recorder, pods, and a worker over them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.clock import SYSTEM, Clock
from provider.config import WarmletConfig
from provider.kubeclient import ApiError
from provider.pods.worker import PodWorker
from provider.resolve_source import ApiObjectSource
from provider.workload import OwnerResolver


class FakeApi:
    """Just enough of KubeClient: status/metadata patches applied to stored pods, configmaps."""

    # the annotations a status patch carried are applied too (pods/status keeps only spec,
    # ownerReferences and deletionTimestamp from the old object)

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.configmaps: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, Any]] = []

    def add(self, pod: dict[str, Any]) -> None:
        self.pods[pod["metadata"]["uid"]] = pod

    def _by_path(self, path: str) -> dict[str, Any]:
        ns, name = path.split("/namespaces/")[1].split("/pods/")
        name = name.split("/")[0]
        for p in self.pods.values():
            if p["metadata"]["namespace"] == ns and p["metadata"]["name"] == name:
                return p
        raise ApiError(404, "NotFound", "pod not found")

    async def patch(self, path: str, body: Any, content_type: str = "", **params: Any) -> dict[str, Any]:
        self.calls.append(("PATCH", path, body))
        pod = self._by_path(path)
        if path.endswith("/status"):
            status = pod.setdefault("status", {})
            # a strategic merge as the API server applies it: conditions merged by type (a null
            # deletes a field), a list's {"$patch": "replace"} directive not stored
            for k, v in body["status"].items():
                if k == "conditions":
                    merged = {c["type"]: c for c in status.get("conditions") or []}
                    for c in v:
                        both = {**merged.get(c["type"], {}), **c}
                        merged[c["type"]] = {
                            f: x for f, x in both.items() if x is not None or f == "lastProbeTime"
                        }
                    status["conditions"] = list(merged.values())
                elif isinstance(v, list):
                    status[k] = [e for e in v if not (isinstance(e, dict) and "$patch" in e)]
                else:
                    status[k] = v
            # pods/status keeps spec and ownerReferences, not the annotations (as the API server)
            anns = (body.get("metadata") or {}).get("annotations")
            if anns:
                pod["metadata"].setdefault("annotations", {}).update(anns)
        else:
            pod["metadata"].setdefault("annotations", {}).update(body["metadata"]["annotations"])
        return pod

    async def delete(self, path: str, body: Any = None, **params: Any) -> dict[str, Any]:
        self.calls.append(("DELETE", path, body))
        pod = self._by_path(path)
        del self.pods[pod["metadata"]["uid"]]
        return {}

    async def get(self, path: str, **params: Any) -> dict[str, Any]:
        self.calls.append(("GET", path, None))
        name = path.rsplit("/", 1)[1]
        if "/configmaps/" in path and name in self.configmaps:
            return self.configmaps[name]
        raise ApiError(404, "NotFound", "not found")

    async def post(self, path: str, body: Any, **params: Any) -> dict[str, Any]:
        self.calls.append(("POST", path, body))
        return {"status": {"token": "T"}}

    def patches(self, kind: str = "/status") -> list[Any]:
        return [b for v, p, b in self.calls if v == "PATCH" and p.endswith(kind)]


class FakeRecorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str]] = []
        self.status_first_sections = 0  # entered with active=True
        self.status_first_open = 0  # of those, still open

    @contextlib.contextmanager
    def status_first(self, active: bool = True) -> Iterator[None]:
        self.status_first_sections += active
        self.status_first_open += active
        try:
            yield
        finally:
            self.status_first_open -= active

    def record(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((obj["metadata"]["name"], type_, reason, message))

    def reasons(self, name: str | None = None) -> list[str]:
        return [r for n, _, r, _ in self.events if name is None or n == name]


def make_pod(
    name: str,
    uid: str,
    policy: str = "Always",
    annotations: dict[str, str] | None = None,
    owner: str | None = "web-rs",
    **spec: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ns",
        "uid": uid,
        "annotations": annotations or {},
        "creationTimestamp": "2026-01-01T00:00:00Z",
    }
    if owner:
        meta["ownerReferences"] = [{"kind": "ReplicaSet", "name": owner, "uid": "rs", "controller": True}]
    spec.setdefault("containers", [{"name": "app", "image": "registry.local/app:1"}])
    return {"metadata": meta, "spec": {"restartPolicy": policy, "nodeName": "vnode", **spec}, "status": {}}


def make_worker(
    tmp_path: Path, api: FakeApi, backend: Any, rec: FakeRecorder, clock: Clock = SYSTEM
) -> PodWorker:
    cfg = WarmletConfig()
    cfg.node.name = "vnode"
    cfg.pods.volumes_dir = tmp_path / "pods"

    async def fetch(path: str) -> dict[str, Any] | None:
        return None

    return PodWorker(
        cfg.pods,
        cfg.node.internal_ip,
        api,  # type: ignore[arg-type]
        backend,
        api.pods.get,
        rec,  # type: ignore[arg-type]
        OwnerResolver(fetch),
        ApiObjectSource(api),  # type: ignore[arg-type]
        {"cpu": "16", "memory": "64Gi"},
        clock,
    )
