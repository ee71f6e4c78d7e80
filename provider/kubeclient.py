"""A thin raw-JSON Kubernetes API client on aiohttp.

kubernetes_asyncio loads the kubeconfig (certificates, tokens, exec plugins; provider/kubeconfig.py
imports just its loaders); requests and watches then go out as plain JSON over one aiohttp
session per client, so hot paths never deserialize into generated models. Several clients with
separate connection budgets can exist side by side (the node lease must not queue behind pod
traffic).
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from provider.kubeconfig import loaders
from provider.metrics import API_REQUESTS

log = logging.getLogger(__name__)

JSON = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
# how often a token file (in-cluster ServiceAccount) is re-read; kubelet refreshes it at 80% of
# its lifetime (>= 10 min), so a minute is plenty
TOKEN_REREAD_SECONDS = 60.0
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class ApiError(Exception):
    """A non-2xx answer from the API server, with its Status reason."""

    def __init__(self, status: int, reason: str, message: str, body: Any = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def gone(self) -> bool:
        return self.status == 410


class KubeClient:
    """Raw JSON access to one API server with its own connection budget."""

    def __init__(
        self,
        server: str,
        ssl_context: ssl.SSLContext | bool,
        token: str | None = None,
        max_connections: int = 32,
        request_timeout: float = 30.0,
        on_error: Any = None,
        token_file: str | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self._ssl = ssl_context
        self._token = token
        # In cluster the ServiceAccount token is a projected file the kubelet rotates (bound tokens
        # expire): re-read it now and then instead of keeping the first one forever.
        self._token_file = token_file
        self._token_read_at = time.monotonic()
        self._max_connections = max_connections
        self._timeout = request_timeout
        self._session: aiohttp.ClientSession | None = None
        self._on_error = on_error  # callable(verb, status) for metrics

    @classmethod
    async def from_kubeconfig(
        cls, path: str | None = None, context: str | None = None, **kwargs: Any
    ) -> KubeClient:
        k8s = loaders()
        cfg = k8s.configuration()
        if path is None:
            try:
                k8s.load_incluster_config(client_configuration=cfg)
                kwargs.setdefault("token_file", k8s.service_token_filename)
            except k8s.config_exception:
                await k8s.load_kube_config(client_configuration=cfg, context=context)
        else:
            await k8s.load_kube_config(config_file=path, context=context, client_configuration=cfg)
        return cls.from_configuration(cfg, **kwargs)

    @classmethod
    def from_configuration(cls, cfg: Any, **kwargs: Any) -> KubeClient:
        """From a loaded ``kubernetes_asyncio.client.Configuration``."""
        ctx: ssl.SSLContext | bool
        if cfg.host.startswith("https"):
            ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
            if not cfg.verify_ssl:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if cfg.cert_file:
                ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        else:
            ctx = False
        token = None
        auth = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
        if auth:
            token = auth.removeprefix("Bearer ").strip()
        return cls(cfg.host, ctx, token=token, **kwargs)

    def clone(self, max_connections: int) -> KubeClient:
        """Same server and credentials, separate connection pool."""
        return KubeClient(
            self.server,
            self._ssl,
            self._token,
            max_connections,
            self._timeout,
            self._on_error,
            token_file=self._token_file,
        )

    def _auth(self) -> dict[str, str]:
        """Per-request Authorization when the token comes from a rotated file (else: the session's)."""
        if self._token_file is None:
            return {}
        now = time.monotonic()
        if now - self._token_read_at >= TOKEN_REREAD_SECONDS:
            self._token_read_at = now
            try:
                with open(self._token_file) as f:
                    self._token = f.read().strip() or self._token
            except OSError as e:
                log.warning("service account token not re-read path=%s err=%s", self._token_file, e)
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ssl=self._ssl)
            headers = {"Accept": "application/json", "User-Agent": "warmlet"}
            if self._token:
                headers["Authorization"] = f"Bearer {self._token}"
            self._session = aiohttp.ClientSession(connector=connector, headers=headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,  # noqa: ASYNC109 - per-request override of the client timeout
    ) -> JSON:
        API_REQUESTS.labels(verb=method, resource=api_resource(path)).inc()
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        headers.update(self._auth())
        client_timeout = aiohttp.ClientTimeout(total=timeout or self._timeout)
        try:
            async with self.session.request(
                method,
                self.server + path,
                params=_params(params),
                data=data,
                headers=headers,
                timeout=client_timeout,
            ) as resp:
                raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            self._count(method, "transport")  # refused, reset, timed out: the apiserver is away
            raise
        if resp.status >= 300:
            raise self._error(method, resp.status, raw)
        if not raw:
            return {}
        result: JSON = json.loads(raw)
        return result

    def _count(self, verb: str, code: int | str) -> None:
        if self._on_error is not None:
            try:
                self._on_error(verb, code)
            except Exception:  # metrics must never break a request
                pass

    def _error(self, method: str, status: int, raw: bytes) -> ApiError:
        self._count(method, status)
        try:
            body = json.loads(raw)
            return ApiError(status, body.get("reason", ""), body.get("message", ""), body)
        except ValueError:
            return ApiError(status, "", raw.decode(errors="replace")[:500])

    async def get(self, path: str, **params: Any) -> JSON:
        return await self.request("GET", path, params=params)

    async def post(self, path: str, body: Any, **params: Any) -> JSON:
        return await self.request("POST", path, params=params, body=body)

    async def put(self, path: str, body: Any, **params: Any) -> JSON:
        return await self.request("PUT", path, params=params, body=body)

    async def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH, **params: Any) -> JSON:
        return await self.request("PATCH", path, params=params, body=body, content_type=content_type)

    async def delete(self, path: str, body: Any = None, **params: Any) -> JSON:
        return await self.request("DELETE", path, params=params, body=body)

    async def list_all(self, path: str, **params: Any) -> JSON:
        """List with pagination; returns {'items': [...], 'metadata': {...}} of the last page."""
        items: list[JSON] = []
        cont: str | None = None
        while True:
            p = dict(params)
            p.setdefault("limit", 500)
            if cont:
                p["continue"] = cont
            page = await self.get(path, **p)
            items.extend(page.get("items") or [])
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                page["items"] = items
                return page

    async def watch(
        self, path: str, resource_version: str, timeout_seconds: int = 300, **params: Any
    ) -> AsyncIterator[JSON]:
        """Yield raw watch events; raises ApiError(410) when the version is too old."""
        p = dict(params)
        p.update(
            watch="true",
            resourceVersion=resource_version,
            allowWatchBookmarks="true",
            timeoutSeconds=timeout_seconds,
        )
        client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_seconds + 30)
        API_REQUESTS.labels(verb="WATCH", resource=api_resource(path)).inc()
        try:
            resp = await self.session.get(
                self.server + path, params=_params(p), timeout=client_timeout, headers=self._auth()
            )
        except (aiohttp.ClientError, TimeoutError):
            self._count("WATCH", "transport")
            raise
        async with resp:
            if resp.status >= 300:
                raise self._error("WATCH", resp.status, await resp.read())
            async for line in _lines(resp.content):
                event = watch_event(line)
                if event is not None:
                    yield event


def api_resource(path: str) -> str:
    """The resource[/subresource] a request path names (``/api/v1/namespaces/ns/pods/p/status``:
    ``pods/status``; ``/apis/coordination.k8s.io/v1/namespaces/ns/leases/n``: ``leases``), for
    metrics: bounded labels, never a name. A path outside the resource API: its first segment."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if not parts:
        return ""
    if parts[0] == "api":
        rest = parts[2:]
    elif parts[0] == "apis":
        rest = parts[3:]
    else:
        return parts[0]
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]  # a namespaced resource ("/namespaces/<ns>" alone is the namespace)
    if not rest:
        return ""
    return f"{rest[0]}/{rest[2]}" if len(rest) >= 3 else rest[0]


def watch_event(line: bytes) -> JSON | None:
    """One line of a watch stream: the event, None for a blank line; an ERROR event (410 Expired
    when the resourceVersion is too old) raises its Status as :class:`ApiError`."""
    if not line.strip():
        return None
    event: JSON = json.loads(line)
    if event.get("type") == "ERROR":
        obj = event.get("object") or {}
        code = int(obj.get("code", 500))
        raise ApiError(code, obj.get("reason", ""), obj.get("message", ""), obj)
    return event


# One watch event is one JSON line holding a whole object. aiohttp's line iterator gives up at
# 512 KiB, but an object may legally be bigger (a pod with a ~1 MB env is accepted by the
# apiserver): failing there would break this node's whole pod watch for as long as that pod
# exists. The cap is far above what the apiserver stores (etcd's request limit is 1.5 MiB).
MAX_WATCH_EVENT_BYTES = 64 * 1024 * 1024


async def _lines(content: aiohttp.StreamReader, limit: int = MAX_WATCH_EVENT_BYTES) -> AsyncIterator[bytes]:
    """Newline-delimited lines of a stream, of any length up to ``limit``."""
    buf = bytearray()
    async for chunk in content.iter_any():
        scan = len(buf)  # only the new bytes can hold the next newline
        buf += chunk
        while True:
            i = buf.find(b"\n", scan)
            if i < 0:
                break
            yield bytes(buf[:i])
            del buf[: i + 1]
            scan = 0
        if len(buf) > limit:
            raise ValueError(f"watch event longer than {limit} bytes")
    if buf:
        yield bytes(buf)


def _params(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    out: dict[str, str] = {}
    for k, v in params.items():
        if v is None:
            continue
        out[k] = ("true" if v else "false") if isinstance(v, bool) else str(v)
    return out
