"""Where env/volume resolution reads ConfigMaps, Secrets and service-account tokens from.

A protocol so resolution is testable with plain dicts; the API implementation caches
found objects briefly (many pods of one workload read the same ConfigMap) and never
caches misses, so a ConfigMap created later is seen on the next retry.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from cachetools import TTLCache

from provider.kubeclient import ApiError, KubeClient

JSON = dict[str, Any]


class ObjectSource(Protocol):
    async def configmap(self, namespace: str, name: str) -> JSON | None: ...

    async def secret(self, namespace: str, name: str) -> JSON | None: ...

    async def token(
        self,
        namespace: str,
        service_account: str,
        audiences: Sequence[str],
        expiration: int,
        pod: Mapping[str, Any],
    ) -> str: ...


@runtime_checkable
class ServiceEnvSource(Protocol):
    """Where the service-link variables of a pod come from (kubelet's service lister)."""

    def service_env(self, namespace: str, enable_links: bool) -> dict[str, str] | None:
        """The variables (provider.service_env); None while Services were never listed yet."""
        ...


class ApiObjectSource:
    """ObjectSource over the API server, with a short TTL cache of objects that exist."""

    def __init__(
        self, client: KubeClient, ttl: float = 5.0, services: ServiceEnvSource | None = None
    ) -> None:
        self._client = client
        self._services = services
        self._cache: TTLCache[tuple[str, str, str], JSON] = TTLCache(4096, ttl)
        self._tokens: TTLCache[tuple[Any, ...], tuple[str, float]] = TTLCache(16384, 3600)

    async def _get(self, kind: str, namespace: str, name: str) -> JSON | None:
        key = (kind, namespace, name)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        try:
            obj = await self._client.get(f"/api/v1/namespaces/{namespace}/{kind}/{name}")
        except ApiError as e:
            if e.not_found:
                return None
            raise
        self._cache[key] = obj
        return obj

    async def configmap(self, namespace: str, name: str) -> JSON | None:
        return await self._get("configmaps", namespace, name)

    def service_env(self, namespace: str, enable_links: bool) -> dict[str, str] | None:
        """Service-link variables from the Service informer; none without one (like a kubelet
        without an API server)."""
        if self._services is None:
            return {}
        return self._services.service_env(namespace, enable_links)

    async def secret(self, namespace: str, name: str) -> JSON | None:
        return await self._get("secrets", namespace, name)

    async def serviceaccount(self, namespace: str, name: str) -> JSON | None:
        """The ServiceAccount (its imagePullSecrets: provider/pods/pull_secrets.py)."""
        return await self._get("serviceaccounts", namespace, name)

    async def token(
        self,
        namespace: str,
        service_account: str,
        audiences: Sequence[str],
        expiration: int,
        pod: Mapping[str, Any],
    ) -> str:
        """A TokenRequest bound to the pod; reused until 80% of its lifetime like kubelet."""
        meta = pod.get("metadata") or {}
        key = (namespace, service_account, tuple(audiences), expiration, meta.get("uid"))
        hit = self._tokens.get(key)
        now = time.time()
        if hit is not None and now < hit[1]:
            return hit[0]
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": list(audiences),
                "expirationSeconds": expiration,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta.get("name"),
                    "uid": meta.get("uid"),
                },
            },
        }
        resp = await self._client.post(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token", body
        )
        status = resp.get("status") or {}
        token = str(status.get("token", ""))
        self._tokens[key] = (token, now + 0.8 * expiration)
        return token
