"""Authentication and authorization of kubelet API requests, like kubelet's auth filter.

Authentication: a verified client certificate (CN = user, O = groups), else a bearer
token checked with a TokenReview, else anonymous if allowed. Authorization: the request
maps to attributes on ``nodes/<subresource>`` (kubelet's auth.go, fine-grained variant)
that are checked with SubjectAccessReviews; decisions are cached with a TTL.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cachetools import TTLCache

from provider.kubeclient import KubeClient

log = logging.getLogger(__name__)

ANONYMOUS = "system:anonymous"
UNAUTHENTICATED = "system:unauthenticated"
AUTHENTICATED = "system:authenticated"

_VERBS = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}


@dataclass(frozen=True)
class UserInfo:
    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Attributes:
    user: UserInfo
    verb: str
    subresource: str
    name: str
    path: str
    resource: str = "nodes"
    api_version: str = "v1"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


class AuthError(Exception):
    """The authenticator or authorizer could not decide (e.g. the API server is down)."""


class Authenticator(Protocol):
    async def authenticate(
        self, peercert: Mapping[str, Any] | None, authorization: str | None
    ) -> UserInfo | None:
        """The user of a request, None if unauthenticated; AuthError if undecidable."""


class Authorizer(Protocol):
    async def authorize(self, attrs: Attributes) -> Decision: ...


def _is_subpath(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return path == prefix or (path.startswith(prefix) and path[len(prefix)] == "/")


def request_attributes(user: UserInfo, method: str, path: str, node_name: str) -> list[Attributes]:
    """kubelet's GetRequestAttributes with KubeletFineGrainedAuthz: any of them allows."""
    verb = _VERBS.get(method.upper(), "")
    subresources: list[str] = []
    if _is_subpath(path, "/pods") or _is_subpath(path, "/runningpods/"):
        subresources.append("pods")
    elif _is_subpath(path, "/healthz"):
        subresources.append("healthz")
    elif _is_subpath(path, "/configz"):
        subresources.append("configz")
    elif _is_subpath(path, "/statusz"):
        subresources.append("statusz")
    if _is_subpath(path, "/stats/"):
        subresources.append("stats")
    elif _is_subpath(path, "/metrics"):
        subresources.append("metrics")
    elif _is_subpath(path, "/logs/"):
        subresources.append("log")
    elif _is_subpath(path, "/checkpoint/"):
        subresources.append("checkpoint")
    else:
        subresources.append("proxy")
    return [Attributes(user=user, verb=verb, subresource=s, name=node_name, path=path) for s in subresources]


def forbidden_message(attrs: list[Attributes]) -> str:
    a = attrs[0]
    subs = " ".join(x.subresource for x in attrs)
    return f"Forbidden (user={a.user.name}, verb={a.verb}, resource={a.resource}, subresource(s)=[{subs}])\n"


def user_from_peercert(peercert: Mapping[str, Any] | None) -> UserInfo | None:
    """CN is the user name and every O a group, as Kubernetes x509 authentication does."""
    if not peercert:
        return None
    cn = ""
    groups: list[str] = []
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and not cn:
                cn = value
            elif key == "organizationName":
                groups.append(value)
    if not cn:
        return None
    return UserInfo(name=cn, groups=(*groups, AUTHENTICATED))


class AlwaysAllow:
    async def authorize(self, attrs: Attributes) -> Decision:
        return Decision(True, "AlwaysAllow")


class KubeletAuthenticator:
    """x509 client certificates, then TokenReview for bearer tokens, then anonymous."""

    def __init__(
        self,
        kube: KubeClient | None,
        client_certs: bool,
        anonymous: bool,
        cache_ttl: float = 120.0,
        negative_ttl: float = 10.0,
    ) -> None:
        self.kube = kube
        self.client_certs = client_certs
        self.anonymous = anonymous
        self._ok: TTLCache[str, UserInfo] = TTLCache(maxsize=4096, ttl=cache_ttl)
        self._bad: TTLCache[str, bool] = TTLCache(maxsize=4096, ttl=negative_ttl)
        self.reviews = 0

    async def authenticate(
        self, peercert: Mapping[str, Any] | None, authorization: str | None
    ) -> UserInfo | None:
        if self.client_certs:
            user = user_from_peercert(peercert)
            if user is not None:
                return user
        if authorization:
            scheme, _, token = authorization.partition(" ")
            token = token.strip()
            if scheme.lower() == "bearer" and token:
                if not token.isascii() or not token.isprintable() or len(token) > 16384:
                    return None  # never a Kubernetes token: no TokenReview for it
                return await self._token(token)
        if self.anonymous:
            return UserInfo(name=ANONYMOUS, groups=(UNAUTHENTICATED,))
        return None

    async def _token(self, token: str) -> UserInfo | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._ok.get(key)
        if cached is not None:
            return cached
        if key in self._bad or self.kube is None:
            return None
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        self.reviews += 1
        try:
            review = await self.kube.post("/apis/authentication.k8s.io/v1/tokenreviews", body)
        except Exception as e:
            raise AuthError(f"token review failed: {e}") from e
        status = review.get("status") or {}
        if not status.get("authenticated"):
            self._bad[key] = True
            return None
        u = status.get("user") or {}
        user = UserInfo(
            name=str(u.get("username", "")),
            uid=str(u.get("uid", "")),
            groups=tuple(u.get("groups") or ()),
            extra={k: tuple(v) for k, v in (u.get("extra") or {}).items()},
        )
        self._ok[key] = user
        return user


class WebhookAuthorizer:
    """SubjectAccessReview per (user, verb, subresource), allow and deny cached separately."""

    def __init__(self, kube: KubeClient, allow_ttl: float = 300.0, deny_ttl: float = 30.0) -> None:
        self.kube = kube
        self._allow: TTLCache[tuple[Any, ...], Decision] = TTLCache(maxsize=8192, ttl=allow_ttl)
        self._deny: TTLCache[tuple[Any, ...], Decision] = TTLCache(maxsize=8192, ttl=deny_ttl)
        self.reviews = 0

    async def authorize(self, attrs: Attributes) -> Decision:
        u = attrs.user
        key = (
            u.name,
            u.uid,
            u.groups,
            tuple(sorted((k, v) for k, v in u.extra.items())),
            attrs.verb,
            attrs.resource,
            attrs.subresource,
            attrs.name,
        )
        cached = self._allow.get(key) or self._deny.get(key)
        if cached is not None:
            return cached
        spec: dict[str, Any] = {
            "user": u.name,
            "groups": list(u.groups),
            "resourceAttributes": {
                "verb": attrs.verb,
                "group": "",
                "version": attrs.api_version,
                "resource": attrs.resource,
                "subresource": attrs.subresource,
                "name": attrs.name,
            },
        }
        if u.uid:
            spec["uid"] = u.uid
        if u.extra:
            spec["extra"] = {k: list(v) for k, v in u.extra.items()}
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        self.reviews += 1
        try:
            review = await self.kube.post("/apis/authorization.k8s.io/v1/subjectaccessreviews", body)
        except Exception as e:
            raise AuthError(f"subject access review failed: {e}") from e
        status = review.get("status") or {}
        decision = Decision(
            bool(status.get("allowed")) and not status.get("denied"), str(status.get("reason", ""))
        )
        (self._allow if decision.allowed else self._deny)[key] = decision
        return decision
