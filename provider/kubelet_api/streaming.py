"""Interactive sessions on the kubelet API: /exec, /attach, /portForward and /run, as kubelet serves them.

For exec, attach and port-forward warmlet does what kubelet's getExec/getAttach/getPortForward
do: parse the query, find the pod (and the running container), ask the runtime for the URL of
one session on its streaming server (the backend's optional ``ContainerStreamer``), and proxy
the client's upgraded connection there unchanged (kubelet's upgrade-aware proxy): the request
goes to the runtime with the client's headers, the runtime's ``101 Switching Protocols`` (with
its Upgrade, X-Stream-Protocol-Version, Sec-WebSocket-* headers) comes back to the client, and
then bytes are spliced both ways until either side closes. Whatever the runtime negotiates (SPDY/
3.1, the WebSocket channel protocols) is what the client gets; the runtime handles stdin/stdout/
stderr, tty resize and the exit status. A non-101 answer of the runtime is relayed as it is
(status >= 400) or turned into a 500 (kubelet's "invalid upgrade response").

How the connection is taken over from aiohttp: an upgrade request leaves aiohttp's HTTP parser,
and every byte the client sends afterwards goes to the payload parser set with
``request.protocol.set_parser`` (what aiohttp's own WebSocketResponse does). The parser is set
before the 101 is written (a client sends nothing before it), so not a byte is parsed as HTTP,
whatever the Upgrade token is (aiohttp itself only knows ``websocket``). Its bytes are queued for
the runtime with back-pressure (the client's transport pauses reading while the runtime lags);
the runtime's bytes are written to the client with aiohttp's drain. The handler owns both copy
tasks: they end together, on either side's EOF or error or on cancellation, and the connection
is closed after the handler returns (``force_close``).

/run runs a command to completion through the backend's ``ContainerExecutor`` (kubelet's getRun).
A backend without ``ContainerStreamer`` (the simulated one) answers exec/attach/port-forward with
a 501 Status saying it runs no processes. An exec session is reported to a backend with the
optional ``ExecSessionTracker`` (``exec_reaping``), which ends the session's process if it still
runs when the connection is over (a client that left).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from dataclasses import dataclass
from typing import Any, cast

import prometheus_client
from aiohttp import web

from provider.kubelet_api.exec_reaping import exec_session
from provider.kubelet_api.pods import JSON, PodsProvider, pod_uid
from provider.kubelet_api.stream_options import (
    ResponseHead,
    StreamOptions,
    StreamParamError,
    Upstream,
    exec_command,
    is_tunneling_request,
    is_upgrade_request,
    parse_ports,
    parse_response_head,
    parse_stream_options,
    parse_stream_url,
    request_head,
    run_command,
)
from sandbox.backend import (
    Backend,
    BackendError,
    ContainerExecutor,
    ContainerNotRunningError,
    ContainerState,
    ContainerStreamer,
)

log = logging.getLogger(__name__)

SESSIONS = prometheus_client.Counter(
    "warmlet_kubelet_api_stream_sessions_total",
    "Interactive requests (exec, attach, portforward, run) by result: proxied (upgraded to the "
    "runtime's streaming server), runtime_refused, runtime_unreachable, invalid, not_found, "
    "unsupported (backend runs no processes), error; run: ok, failed.",
    ["kind", "result"],
)
ACTIVE = prometheus_client.Gauge(
    "warmlet_kubelet_api_stream_sessions_active", "Interactive sessions being proxied now.", ["kind"]
)
BYTES = prometheus_client.Counter(
    "warmlet_kubelet_api_stream_bytes_total",
    "Bytes proxied between clients and the runtime's streaming server, by direction.",
    ["kind", "direction"],
)

DIAL_TIMEOUT = 10.0  # connect + the runtime's answer to the upgrade request
ERROR_BODY_MAX = 1024 * 1024
CHUNK = 256 * 1024  # largest read from the runtime per write to the client
READ_LIMIT = 256 * 1024  # the runtime's bytes buffered (up to twice that) before its reads pause
CLIENT_BUFFER_HIGH = 256 * 1024  # queued client bytes above which the client's reads pause
# kubelet runs /run commands without a timeout; warmlet bounds them (the request would otherwise
# hold a connection for as long as the command runs).
RUN_TIMEOUT_SECONDS = 300.0
TEXT = "text/plain; charset=utf-8"

KEY_STREAMS = web.AppKey("kubelet_api_streams", object)


@dataclass
class StreamContext:
    node_name: str
    backend: Backend
    pods: PodsProvider


def _ctx(request: web.Request) -> StreamContext:
    ctx = request.app[KEY_STREAMS]
    assert isinstance(ctx, StreamContext)
    return ctx


def _query(request: web.Request) -> dict[str, list[str]]:
    return {k: request.query.getall(k) for k in request.query}


def _text(status: int, body: str) -> web.Response:
    return web.Response(status=status, body=body.encode(), headers={"Content-Type": TEXT})


def _no_pod(kind: str) -> web.Response:
    """kubelet's answer for a pod it does not have (every stream kind)."""
    SESSIONS.labels(kind, "not_found").inc()
    return _text(404, "pod does not exist")


def _unsupported(ctx: StreamContext, kind: str) -> web.Response:
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'{kind} is not available on node "{ctx.node_name}": its backend runs no processes '
        "(containers are simulated), so there is nothing to exec into, attach to or forward to; "
        "kubectl logs shows what the simulated containers report",
        "reason": "NotImplemented",
        "code": 501,
    }
    SESSIONS.labels(kind, "unsupported").inc()
    return web.Response(status=501, body=json.dumps(status).encode(), content_type="application/json")


def add_routes(app: web.Application, ctx: StreamContext) -> None:
    """kubelet's routes (each with and without the ``{uid}`` segment; GET and POST)."""
    app[KEY_STREAMS] = ctx
    r = app.router
    for method in ("GET", "POST"):
        for prefix, handler in (("exec", _exec), ("attach", _attach)):
            r.add_route(method, f"/{prefix}/{{namespace}}/{{pod}}/{{container}}", handler)
            r.add_route(method, f"/{prefix}/{{namespace}}/{{pod}}/{{uid}}/{{container}}", handler)
        r.add_route(method, "/portForward/{namespace}/{pod}", _port_forward)
        r.add_route(method, "/portForward/{namespace}/{pod}/{uid}", _port_forward)
    r.add_post("/run/{namespace}/{pod}/{container}", _run)
    r.add_post("/run/{namespace}/{pod}/{uid}/{container}", _run)


# ---------------------------------------------------------------------------------- lookups


def container_spec(pod: JSON, name: str) -> JSON | None:
    spec = pod.get("spec") or {}
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for c in spec.get(key) or []:
            if isinstance(c, dict) and c.get("name") == name:
                return c
    return None


async def _running_container(ctx: StreamContext, pod: JSON, uid_in_path: str, name: str) -> str | None:
    """kubelet's findContainer: the running instance of ``name`` in the pod (uid must match)."""
    uid = pod_uid(pod)
    if (uid_in_path and uid_in_path != uid) or container_spec(pod, name) is None:
        return None
    running = [
        s
        for s in await ctx.backend.pod_containers(uid)
        if s.name == name and s.state == ContainerState.RUNNING
    ]
    return max(running, key=lambda s: s.attempt).container_id if running else None


# ---------------------------------------------------------------------------------- handlers


async def _exec(request: web.Request) -> web.StreamResponse:
    return await _remote_command(request, "exec")


async def _attach(request: web.Request) -> web.StreamResponse:
    return await _remote_command(request, "attach")


async def _remote_command(request: web.Request, kind: str) -> web.StreamResponse:
    ctx = _ctx(request)
    ns, name, container = (request.match_info[k] for k in ("namespace", "pod", "container"))
    try:
        opts = parse_stream_options(_query(request))
    except StreamParamError as e:
        SESSIONS.labels(kind, "invalid").inc()
        return _text(400, str(e))
    pod = ctx.pods.get_pod(ns, name)
    if pod is None:
        return _no_pod(kind)
    backend = ctx.backend
    if not isinstance(backend, ContainerStreamer):
        return _unsupported(ctx, kind)
    if not is_upgrade_request(request.headers.items()):
        SESSIONS.labels(kind, "invalid").inc()
        return _text(400, "Upgrade request required")
    cid = await _running_container(ctx, pod, request.match_info.get("uid", ""), container)
    if cid is None:
        SESSIONS.labels(kind, "not_found").inc()
        if kind == "attach":
            return _text(500, f"container {container} not found in pod {name}_{ns}")
        return _text(500, f'container not found ("{container}")')
    cmd = exec_command(_query(request)) if kind == "exec" else []
    # An exec's process must not outlive its session (a client that left): the backend is told.
    session: contextlib.AbstractAsyncContextManager[None] = (
        exec_session(backend, cid, cmd, f"{ns}/{name}/{container}")
        if kind == "exec"
        else contextlib.nullcontext()
    )
    async with session:
        try:
            if kind == "exec":
                url = await backend.exec_url(cid, cmd, **_flags(opts))
            else:
                # Whether attach has a tty is the container's, fixed when it started (as kubelet).
                tty = bool((container_spec(pod, container) or {}).get("tty"))
                url = await backend.attach_url(
                    cid, tty=tty, stdin=opts.stdin, stdout=opts.stdout, stderr=opts.stderr
                )
        except ContainerNotRunningError as e:
            SESSIONS.labels(kind, "not_found").inc()
            return _text(404, e.message)
        except BackendError as e:
            SESSIONS.labels(kind, "error").inc()
            return _text(500, e.message)
        log.info(
            "stream session kind=%s pod=%s/%s container=%s tty=%s upgrade=%s",
            kind,
            ns,
            name,
            container,
            opts.tty,
            request.headers.get("Upgrade", "")[:32],
        )
        return await proxy_upgrade(request, url, kind)


def _flags(opts: StreamOptions) -> dict[str, bool]:
    return {"tty": opts.tty, "stdin": opts.stdin, "stdout": opts.stdout, "stderr": opts.stderr}


async def _port_forward(request: web.Request) -> web.StreamResponse:
    kind = "portforward"
    ctx = _ctx(request)
    ns, name = request.match_info["namespace"], request.match_info["pod"]
    headers = list(request.headers.items())
    ports: list[int] = []
    if not is_tunneling_request(headers):
        try:
            ports = parse_ports(_query(request), headers)
        except StreamParamError as e:
            SESSIONS.labels(kind, "invalid").inc()
            return _text(400, str(e))
    pod = ctx.pods.get_pod(ns, name)
    if pod is None:
        return _no_pod(kind)
    uid_in_path = request.match_info.get("uid", "")
    if uid_in_path and uid_in_path != pod_uid(pod):
        SESSIONS.labels(kind, "not_found").inc()
        return _text(404, "pod not found")
    backend = ctx.backend
    if not isinstance(backend, ContainerStreamer):
        return _unsupported(ctx, kind)
    if not is_upgrade_request(headers):
        SESSIONS.labels(kind, "invalid").inc()
        return _text(400, "Upgrade request required")
    try:
        url = await backend.port_forward_url(pod_uid(pod), ports)
    except ContainerNotRunningError:
        SESSIONS.labels(kind, "not_found").inc()
        return _text(500, f'pod not found ("{name}_{ns}")')
    except BackendError as e:
        SESSIONS.labels(kind, "error").inc()
        return _text(500, e.message)
    log.info(
        "stream session kind=%s pod=%s/%s ports=%s upgrade=%s",
        kind,
        ns,
        name,
        ports,
        request.headers.get("Upgrade", "")[:32],
    )
    return await proxy_upgrade(request, url, kind)


async def _run(request: web.Request) -> web.StreamResponse:
    """kubelet's getRun: the command's stdout then stderr, 500 when it fails."""
    kind = "run"
    ctx = _ctx(request)
    ns, name, container = (request.match_info[k] for k in ("namespace", "pod", "container"))
    pod = ctx.pods.get_pod(ns, name)
    if pod is None:
        return _no_pod(kind)
    backend = ctx.backend
    # The same rule as exec: a backend without interactive sessions runs no processes to run in.
    if not isinstance(backend, ContainerStreamer) or not isinstance(backend, ContainerExecutor):
        return _unsupported(ctx, kind)
    cid = await _running_container(ctx, pod, request.match_info.get("uid", ""), container)
    if cid is None:
        SESSIONS.labels(kind, "not_found").inc()
        return _text(500, f'container not found ("{container}")')
    cmd = run_command(_query(request))
    try:
        res = await backend.exec_sync(cid, cmd, RUN_TIMEOUT_SECONDS)
    except BackendError as e:
        SESSIONS.labels(kind, "failed").inc()
        return _text(500, e.message)
    if res.exit_code != 0:
        SESSIONS.labels(kind, "failed").inc()
        stderr = res.stderr.decode(errors="replace")
        return _text(500, f"command '{' '.join(cmd)}' exited with {res.exit_code}: {stderr}")
    SESSIONS.labels(kind, "ok").inc()
    data = res.stdout + res.stderr
    if not data:
        return web.Response(status=200)
    return web.Response(status=200, body=data, content_type="application/json")


# ---------------------------------------------------------------------------------- the proxy


async def _dial(up: Upstream) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if up.scheme == "https":
        # As kubelet's proxy without a transport: the system's trust and the URL's host name.
        return await asyncio.open_connection(
            up.host,
            up.port,
            ssl=ssl.create_default_context(),
            server_hostname=up.host,
            limit=READ_LIMIT,
        )
    return await asyncio.open_connection(up.host, up.port, limit=READ_LIMIT)


async def proxy_upgrade(request: web.Request, url: str, kind: str) -> web.StreamResponse:
    """Kubelet's UpgradeAwareHandler (upgrade required) towards the runtime's session ``url``."""
    try:
        up = parse_stream_url(url)
    except ValueError as e:
        SESSIONS.labels(kind, "error").inc()
        return _text(500, str(e))
    peer = request.remote or ""
    try:
        reader, writer = await asyncio.wait_for(_dial(up), DIAL_TIMEOUT)
    except (OSError, TimeoutError) as e:
        SESSIONS.labels(kind, "runtime_unreachable").inc()
        log.warning("streaming server unreachable kind=%s host=%s:%d error=%r", kind, up.host, up.port, e)
        return _text(500, f"error dialing backend: {e!r}")
    try:
        writer.write(request_head(request.method, up, request.headers.items(), peer))
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DIAL_TIMEOUT)
            head = parse_response_head(raw)
        except (
            OSError,
            ValueError,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as e:
            SESSIONS.labels(kind, "runtime_unreachable").inc()
            return _text(500, f"error reading the streaming server's answer: {e!r}")
        if head.status != 101:
            return await _relay_refusal(kind, head, reader)
        return await _splice(request, head, reader, writer, kind)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _relay_refusal(kind: str, head: ResponseHead, reader: asyncio.StreamReader) -> web.Response:
    SESSIONS.labels(kind, "runtime_refused").inc()
    log.info("streaming server refused the upgrade kind=%s status=%d", kind, head.status)
    if head.status < 400:
        return _text(500, f"invalid upgrade response: status code {head.status}")
    length = head.get("Content-Length")
    body = b""
    with contextlib.suppress(OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
        if length is not None:
            body = await asyncio.wait_for(reader.readexactly(min(int(length), ERROR_BODY_MAX)), DIAL_TIMEOUT)
        else:
            body = await asyncio.wait_for(reader.read(ERROR_BODY_MAX), DIAL_TIMEOUT)
    resp = web.Response(status=head.status, reason=head.reason or None, body=body)
    ctype = head.get("Content-Type")
    if ctype:
        resp.headers["Content-Type"] = ctype
    resp.force_close()
    return resp


class ClientBytes:
    """What aiohttp feeds the client's raw bytes to once the connection is taken over (its
    payload-parser interface: ``feed_data``/``feed_eof``), queued for the runtime. Reading from
    the client pauses while more than ``high`` bytes wait (the runtime lags)."""

    def __init__(self, transport: asyncio.Transport | None, high: int = CLIENT_BUFFER_HIGH) -> None:
        self.transport = transport
        self.high = high
        self.buf = bytearray()
        self.eof = False
        self.paused = False
        self._ready = asyncio.Event()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.buf += data
        self._ready.set()
        if len(self.buf) > self.high and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        return False, b""

    def feed_eof(self) -> None:
        self.eof = True
        self._ready.set()

    async def read(self) -> bytes:
        """Everything queued so far; b"" once the client is gone and the queue is empty."""
        while not self.buf and not self.eof:
            self._ready.clear()
            await self._ready.wait()
        data = bytes(self.buf)
        self.buf.clear()
        if self.paused and self.transport is not None and not self.transport.is_closing():
            self.paused = False
            self.transport.resume_reading()
        return data


async def _splice(
    request: web.Request,
    head: ResponseHead,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    kind: str,
) -> web.StreamResponse:
    resp = web.StreamResponse(status=101, reason=head.reason or "Switching Protocols")
    for k, v in head.headers:
        if k.lower() not in ("content-length", "transfer-encoding"):
            resp.headers.add(k, v)
    resp.force_close()
    client = ClientBytes(request.transport)
    # The payload parser goes in before the 101 goes out: from now on aiohttp parses nothing.
    request.protocol.set_parser(cast(Any, client))
    await resp.prepare(request)
    # Bytes the runtime sent right behind its 101 stay in ``reader``: the first read returns them.

    async def to_runtime() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await client.read():
                writer.write(data)
                BYTES.labels(kind, "to_runtime").inc(len(data))
                await writer.drain()

    async def to_client() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(CHUNK):
                await resp.write(data)
                BYTES.labels(kind, "to_client").inc(len(data))

    SESSIONS.labels(kind, "proxied").inc()
    ACTIVE.labels(kind).inc()
    tasks = [
        asyncio.create_task(to_runtime(), name=f"stream-{kind}-to-runtime"),
        asyncio.create_task(to_client(), name=f"stream-{kind}-to-client"),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        ended = "client" if tasks[0] in done else "runtime"
        log.info("stream session ended kind=%s closed_by=%s", kind, ended)
    finally:
        ACTIVE.labels(kind).dec()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return resp
