"""Where the API finds the pods bound to this node (raw JSON, owned by the provider)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

JSON = dict[str, Any]


@runtime_checkable
class PodsProvider(Protocol):
    """The pods on this node, as the provider's informer/cache sees them."""

    def list_pods(self) -> list[JSON]: ...

    def get_pod(self, namespace: str, name: str) -> JSON | None: ...


class StaticPods:
    """A mutable in-memory PodsProvider (tests, benches, and simple embeddings)."""

    def __init__(self, pods: Iterable[JSON] = ()) -> None:
        self._pods: dict[tuple[str, str], JSON] = {}
        for p in pods:
            self.put(p)

    def put(self, pod: JSON) -> None:
        meta = pod.get("metadata") or {}
        self._pods[(meta.get("namespace", "default"), meta.get("name", ""))] = pod

    def remove(self, namespace: str, name: str) -> None:
        self._pods.pop((namespace, name), None)

    def list_pods(self) -> list[JSON]:
        return list(self._pods.values())

    def get_pod(self, namespace: str, name: str) -> JSON | None:
        return self._pods.get((namespace, name))


class CallablePods:
    """Adapts a plain ``() -> iterable of pod dicts`` callable to PodsProvider."""

    def __init__(self, fn: Callable[[], Iterable[JSON]]) -> None:
        self._fn = fn

    def list_pods(self) -> list[JSON]:
        return list(self._fn())

    def get_pod(self, namespace: str, name: str) -> JSON | None:
        for p in self._fn():
            meta = p.get("metadata") or {}
            if meta.get("name") == name and meta.get("namespace", "default") == namespace:
                return p
        return None


def as_pods_provider(obj: PodsProvider | Callable[[], Iterable[JSON]]) -> PodsProvider:
    if isinstance(obj, PodsProvider):
        return obj
    return CallablePods(obj)


def pod_uid(pod: JSON) -> str:
    return str((pod.get("metadata") or {}).get("uid", ""))


def pod_container_names(pod: JSON) -> set[str]:
    """Containers, init containers and ephemeral containers of the pod spec."""
    spec = pod.get("spec") or {}
    names: set[str] = set()
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for c in spec.get(key) or []:
            if isinstance(c, dict) and "name" in c:
                names.add(str(c["name"]))
    return names


def container_status(pod: JSON, container: str) -> JSON | None:
    status = pod.get("status") or {}
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or []:
            if isinstance(cs, dict) and cs.get("name") == container:
                return cs
    return None
