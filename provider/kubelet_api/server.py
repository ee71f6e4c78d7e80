"""The aiohttp application and server of the kubelet API (routes, auth filter, start/stop)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import prometheus_client
from aiohttp import web

from common.clock import SYSTEM, Clock
from provider.config import ServerConfig
from provider.kubeclient import KubeClient
from provider.kubelet_api.auth import (
    AlwaysAllow,
    Authenticator,
    AuthError,
    Authorizer,
    KubeletAuthenticator,
    WebhookAuthorizer,
    forbidden_message,
    request_attributes,
)
from provider.kubelet_api.container_logs import (
    LogNotAvailable,
    LogReader,
    path_within,
    select_instance,
    stream_log,
)
from provider.kubelet_api.log_options import LogParamError, parse_log_options
from provider.kubelet_api.pods import JSON, PodsProvider, as_pods_provider, pod_container_names, pod_uid
from provider.kubelet_api.resource_metrics import CONTENT_TYPE as PROM_TEXT
from provider.kubelet_api.resource_metrics import render_resource_metrics
from provider.kubelet_api.streaming import StreamContext
from provider.kubelet_api.streaming import add_routes as add_stream_routes
from provider.kubelet_api.summary import build_summary
from provider.kubelet_api.tls import ServingCert, ensure_serving_cert, server_ssl_context
from provider.probes.metrics import render as render_probe_metrics
from sandbox.backend import Backend, ContainerState

log = logging.getLogger(__name__)

REQUESTS = prometheus_client.Counter(
    "warmlet_kubelet_api_requests_total",
    "Requests to the kubelet API by method, path bucket and status code.",
    ["method", "path", "code"],
)
DURATION = prometheus_client.Histogram(
    "warmlet_kubelet_api_request_duration_seconds",
    "Duration of kubelet API requests (for follow: until the stream ends).",
    ["method", "path"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300),
)

_BUCKETS = {
    "containerLogs",
    "stats",
    "metrics",
    "pods",
    "runningpods",
    "healthz",
    "exec",
    "attach",
    "portForward",
    "run",
}

KEY_CTX = web.AppKey("kubelet_api", object)

# Methods a kubelet API request may use; anything else is 405 before authentication (an unknown
# verb would otherwise reach the SubjectAccessReview as "" and fail as a 500).
ALLOWED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Kubernetes object names: namespace and container are DNS-1123 labels, pod a DNS-1123 subdomain.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")

TEXT = "text/plain; charset=utf-8"


def path_bucket(path: str) -> str:
    """kubelet's getURLRootPath: a bounded label for request metrics."""
    parts = path.lstrip("/").split("/", 2)
    if parts[0] == "metrics" and len(parts) > 1:
        return f"metrics/{parts[1]}" if parts[1] in ("resource", "cadvisor", "probes") else "metrics"
    return parts[0] if parts[0] in _BUCKETS else "other"


def _text(status: int, body: str) -> web.Response:
    return web.Response(status=status, body=body.encode(), headers={"Content-Type": TEXT})


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(data).encode(), content_type="application/json")


@dataclass
class _Ctx:
    node_name: str
    backend: Backend
    pods: PodsProvider
    authenticator: Authenticator
    authorizer: Authorizer
    log_limit_bytes_max: int
    log_root: str | None
    max_body_bytes: int = 64 * 1024
    clock: Clock = SYSTEM  # paces log follow polls


def _ctx(request: web.Request) -> _Ctx:
    ctx = request.app[KEY_CTX]
    assert isinstance(ctx, _Ctx)
    return ctx


@web.middleware
async def _observe(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> Any:
    start = time.perf_counter()
    bucket = path_bucket(request.path)
    code = 500
    try:
        resp = await handler(request)
        code = resp.status
        return resp
    except web.HTTPException as e:
        code = e.status
        raise
    finally:
        REQUESTS.labels(request.method, bucket, str(code)).inc()
        DURATION.labels(request.method, bucket).observe(time.perf_counter() - start)


@web.middleware
async def _limits(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> Any:
    """Cheap refusals before any authentication work: unknown methods and oversized bodies.

    No kubelet endpoint served here reads a body, so a body above the limit is refused with 413
    without reading it (and the connection closed: the rest of the body is never drained).
    """
    if request.method not in ALLOWED_METHODS:
        return _text(405, f"Method Not Allowed: {request.method[:32]!r} is not a kubelet API method")
    limit = _ctx(request).max_body_bytes
    length = request.content_length
    if (length is not None and length > limit) or (length is None and request.body_exists):
        if length is None:  # chunked: read at most limit + 1 bytes to decide
            data = await request.content.read(limit + 1)
            if len(data) <= limit:
                return await handler(request)
        resp = _text(413, f"Request Entity Too Large: bodies are limited to {limit} bytes")
        resp.force_close()
        return resp
    return await handler(request)


@web.middleware
async def _auth(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    ctx = _ctx(request)
    transport = request.transport
    peercert = transport.get_extra_info("peercert") if transport is not None else None
    try:
        user = await ctx.authenticator.authenticate(peercert, request.headers.get("Authorization"))
    except AuthError as e:
        log.warning("unable to authenticate request path=%s error=%s", request.path, e)
        return _text(401, "Unauthorized")
    if user is None:
        return _text(401, "Unauthorized")
    attrs = request_attributes(user, request.method, request.path, ctx.node_name)
    for a in attrs:
        try:
            decision = await ctx.authorizer.authorize(a)
        except AuthError as e:
            log.error("authorization error user=%s subresource=%s error=%s", user.name, a.subresource, e)
            return _text(
                500,
                f"Authorization error (user={user.name}, verb={a.verb}, resource={a.resource}, "
                f"subresource={a.subresource})",
            )
        if decision.allowed:
            return await handler(request)
    log.info("forbidden user=%s verb=%s path=%s", user.name, attrs[0].verb, request.path)
    return _text(403, forbidden_message(attrs))


async def _healthz(request: web.Request) -> web.Response:
    return _text(200, "ok")


async def _pods(request: web.Request) -> web.Response:
    items = _ctx(request).pods.list_pods()
    return _json({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})


async def _summary(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    only = request.query.get("only_cpu_and_memory", "").lower() == "true"
    usage = await ctx.backend.stats()
    return _json(build_summary(ctx.node_name, usage, only_cpu_and_memory=only))


async def _resource_metrics(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    try:
        usage = await ctx.backend.stats()
    except Exception as e:
        log.error("error getting stats for resource metrics error=%s", e)
        usage = None
    body = render_resource_metrics(usage)
    return web.Response(body=body.encode(), headers={"Content-Type": PROM_TEXT})


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=prometheus_client.generate_latest(prometheus_client.REGISTRY),
        headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
    )


async def _probe_metrics(request: web.Request) -> web.Response:
    """kubelet's prober metrics (prober_probe_total, prober_probe_duration_seconds)."""
    return web.Response(
        body=render_probe_metrics(), headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST}
    )


async def _empty_metrics(request: web.Request) -> web.Response:
    return web.Response(body=b"", headers={"Content-Type": PROM_TEXT})


async def _container_logs(request: web.Request) -> web.StreamResponse:
    ctx = _ctx(request)
    ns = request.match_info["namespace"]
    pod_name = request.match_info["pod"]
    container = request.match_info["container"]
    for what, value, pattern in (
        ("namespace", ns, _DNS_LABEL),
        ("pod name", pod_name, _DNS_SUBDOMAIN),
        ("container name", container, _DNS_LABEL),
    ):
        if not pattern.match(value):
            # "..", "%2e%2e", encoded slashes, NUL: never a Kubernetes name, never a file lookup.
            return _text(400, f"invalid {what} {value[:64]!r}: not a valid Kubernetes name")
    try:
        opts = parse_log_options({k: request.query.getall(k) for k in request.query})
    except LogParamError as e:
        log.info("invalid containerLogs query pod=%s/%s detail=%s", ns, pod_name, e.detail)
        return _text(e.status, e.body)
    pod = ctx.pods.get_pod(ns, pod_name)
    if pod is None:
        return _text(404, f'pod "{pod_name}" does not exist')
    if container not in pod_container_names(pod):
        return _text(404, f'container "{container}" not found in pod "{pod_name}"')
    uid = pod_uid(pod)
    states = await ctx.backend.pod_containers(uid)
    try:
        inst = select_instance(states, pod, pod_name, container, opts.previous)
    except LogNotAvailable as e:
        return _text(400, str(e))
    root = ctx.log_root or os.path.dirname(
        os.path.dirname(os.path.dirname(ctx.backend.log_path(ns, pod_name, uid, container, inst.attempt)))
    )
    path = inst.log_path
    if not path or not path_within(path, root):
        log.warning("container log path outside the log dir pod=%s/%s path=%r", ns, pod_name, path)
        return _text(400, f'container "{container}" in pod "{pod_name}" has no log file')
    try:
        reader = await asyncio.to_thread(LogReader, path, opts, ctx.log_limit_bytes_max)
    except OSError as e:
        return _text(
            400, f'failed to open log file of container "{container}" in pod "{pod_name}": {e.strerror}'
        )

    resp = web.StreamResponse(status=200, headers={"Content-Type": TEXT})
    resp.enable_chunked_encoding()
    await resp.prepare(request)

    async def still_running() -> bool:
        for s in await ctx.backend.pod_containers(uid):
            if s.container_id == inst.container_id:
                return s.state == ContainerState.RUNNING
        return False

    def client_gone() -> bool:
        t = request.transport
        return t is None or t.is_closing()

    try:
        await stream_log(reader, opts, resp.write, still_running, client_gone, clock=ctx.clock)
        await resp.write_eof()
    except ConnectionResetError:
        log.debug("log stream ended by client pod=%s/%s container=%s", ns, pod_name, container)
    return resp


def build_app(
    node_name: str,
    backend: Backend,
    pods_provider: PodsProvider | Callable[[], Iterable[JSON]],
    authenticator: Authenticator,
    authorizer: Authorizer,
    log_limit_bytes_max: int = 1024**3,
    log_root: str | None = None,
    max_body_bytes: int = 64 * 1024,
    clock: Clock = SYSTEM,
) -> web.Application:
    """The application without TLS (tests drive it directly; start_kubelet_api adds TLS)."""
    app = web.Application(middlewares=[_observe, _limits, _auth], client_max_size=max_body_bytes)
    app[KEY_CTX] = ctx = _Ctx(
        node_name,
        backend,
        as_pods_provider(pods_provider),
        authenticator,
        authorizer,
        log_limit_bytes_max,
        log_root,
        max_body_bytes,
        clock,
    )
    r = app.router
    r.add_get("/containerLogs/{namespace}/{pod}/{container}", _container_logs)
    r.add_get("/stats/summary", _summary)
    r.add_get("/stats/summary/", _summary)
    r.add_get("/metrics/resource", _resource_metrics)
    r.add_get("/metrics", _metrics)
    r.add_get("/metrics/cadvisor", _empty_metrics)
    r.add_get("/metrics/probes", _probe_metrics)
    r.add_get("/pods", _pods)
    r.add_get("/pods/", _pods)
    r.add_get("/runningpods/", _pods)
    r.add_get("/healthz", _healthz)
    r.add_get("/healthz/{check}", _healthz)
    add_stream_routes(app, StreamContext(node_name, backend, ctx.pods))
    return app


@dataclass
class KubeletApiServer:
    """A running kubelet API; ``port`` is the bound port (useful with port 0)."""

    runner: web.AppRunner
    address: str
    port: int
    serving: ServingCert
    ssl_context: ssl.SSLContext | None = None  # live: a new chain loaded here serves new handshakes

    @property
    def url(self) -> str:
        return f"https://{self.address}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()
        log.info("kubelet api stopped port=%d", self.port)


async def start_kubelet_api(
    cfg: ServerConfig,
    node_name: str,
    backend: Backend,
    pods_provider: PodsProvider | Callable[[], Iterable[JSON]],
    kube: KubeClient | None,
    *,
    authenticator: Authenticator | None = None,
    authorizer: Authorizer | None = None,
    log_root: str | None = None,
    node_addresses: tuple[str, ...] = (),
) -> KubeletApiServer:
    """Serve the kubelet API over HTTPS on cfg.address:cfg.port (0 = any free port)."""
    serving = await asyncio.to_thread(
        ensure_serving_cert,
        cfg.tls_cert_file,
        cfg.tls_key_file,
        cfg.cert_dir,
        node_name,
        (cfg.address, *node_addresses),
    )
    ssl_ctx = server_ssl_context(serving, cfg.client_ca_file)
    if authenticator is None:
        authenticator = KubeletAuthenticator(
            kube,
            client_certs=cfg.client_ca_file is not None,
            anonymous=cfg.anonymous_auth,
            cache_ttl=cfg.auth_cache_ttl_seconds,
        )
    if authorizer is None:
        if cfg.authorization_mode == "AlwaysAllow":
            authorizer = AlwaysAllow()
        else:
            if kube is None:
                raise ValueError("Webhook authorization needs a KubeClient")
            authorizer = WebhookAuthorizer(
                kube, allow_ttl=cfg.auth_cache_ttl_seconds, deny_ttl=min(30.0, cfg.auth_cache_ttl_seconds)
            )
    app = build_app(
        node_name,
        backend,
        pods_provider,
        authenticator,
        authorizer,
        cfg.log_limit_bytes_max,
        log_root,
        cfg.max_request_body_bytes,
    )
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=2.0,
        # Bounded request heads (a longer line or header is a 400 from the parser) and a deadline
        # for idle and slow clients: a connection that has not sent a complete request head within
        # idle_timeout_seconds (slowloris) or sits idle between requests that long is closed.
        keepalive_timeout=cfg.idle_timeout_seconds,
        max_line_size=cfg.max_header_line_bytes,
        max_field_size=cfg.max_header_line_bytes,
        max_headers=cfg.max_headers,
    )
    await runner.setup()
    site = web.TCPSite(runner, cfg.address, cfg.port, ssl_context=ssl_ctx, reuse_address=True)
    await site.start()
    port = cfg.port
    sockets = getattr(site._server, "sockets", None)
    if sockets:
        port = sockets[0].getsockname()[1]
    log.info(
        "kubelet api listening address=%s port=%d cert=%s authz=%s",
        cfg.address,
        port,
        serving.cert_file,
        cfg.authorization_mode,
    )
    return KubeletApiServer(runner, cfg.address, port, serving, ssl_ctx)
