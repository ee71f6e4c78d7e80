"""Probe handlers against real servers on 127.0.0.1 (HTTP, TCP, gRPC health) and an executor."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import grpc
import grpc.aio
import pytest
from aiohttp import web

from provider.probes import grpc_health, handlers
from provider.probes.outcome import ProbeResult
from provider.probes.spec import ExecAction, GRPCAction, HTTPGetAction, TCPSocketAction
from sandbox.backend import ContainerNotRunningError, ExecResult, ExecTimeoutError

LOCAL = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def http_server() -> AsyncIterator[tuple[int, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        path = request.path
        if path == "/ok":
            return web.Response(text="fine")
        if path == "/big":
            return web.Response(text="x" * 50_000)
        if path == "/redirect-same":
            raise web.HTTPFound("/ok")
        if path == "/redirect-other":
            raise web.HTTPFound("http://localhost.invalid:1/ok")
        if path == "/slow":
            await asyncio.sleep(3)
            return web.Response(text="late")
        return web.Response(status=503, text="down")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, LOCAL, port)
    await site.start()
    yield port, seen
    await runner.cleanup()


async def test_http_outcomes(http_server: tuple[int, list[dict[str, str]]]) -> None:
    port, seen = http_server
    async with aiohttp.ClientSession() as session:

        async def probe(path: str, headers: tuple[tuple[str, str], ...] = ()) -> handlers.Outcome:
            return await handlers.run_http(session, HTTPGetAction("http", "", port, path, headers), LOCAL, 1)

        ok = await probe("/ok", (("Host", "example.test"), ("X-Probe", "a")))
        assert ok.result == ProbeResult.SUCCESS and ok.output == "fine"
        assert seen[-1]["User-Agent"] == "kube-probe/1.36" and seen[-1]["Accept"] == "*/*"
        assert seen[-1]["Host"] == "example.test" and seen[-1]["X-Probe"] == "a"
        assert (await probe("/ok", (("User-Agent", "mine"),))).result == ProbeResult.SUCCESS
        assert seen[-1]["User-Agent"] == "mine"
        down = await probe("/down")
        assert (down.result, down.output) == (ProbeResult.FAILURE, "HTTP probe failed with statuscode: 503")
        assert (await probe("/redirect-same")).result == ProbeResult.SUCCESS
        other = await probe("/redirect-other")
        assert other.result == ProbeResult.WARNING and other.output.startswith("Probe terminated redirects")
        assert len((await probe("/big")).output) <= 10 * 1024
        slow = await probe("/slow")
        assert slow.result == ProbeResult.FAILURE and "deadline exceeded" in slow.output
        refused = await handlers.run_http(session, HTTPGetAction("http", "", free_port(), "/", ()), LOCAL, 1)
        assert refused.result == ProbeResult.FAILURE and refused.output.startswith('Get "http://127.0.0.1:')


async def test_tcp_outcomes() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), LOCAL, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        assert (await handlers.run_tcp(TCPSocketAction("", port), LOCAL, 1)).result == ProbeResult.SUCCESS
    closed = await handlers.run_tcp(TCPSocketAction(LOCAL, port), "10.255.255.1", 1)
    assert closed.result == ProbeResult.FAILURE and closed.output.startswith(f"dial tcp 127.0.0.1:{port}")


@pytest.fixture
async def grpc_server() -> AsyncIterator[tuple[int, dict[str, int]]]:
    statuses = {"": 1, "db": 2}

    async def check(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        service = request[2:].decode() if request else ""
        if service not in statuses:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return b"\x08" + bytes([statuses[service]])

    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{LOCAL}:0")
    await server.start()
    yield port, statuses
    await server.stop(None)


async def test_grpc_outcomes(grpc_server: tuple[int, dict[str, int]]) -> None:
    port, _ = grpc_server
    ok = await handlers.run_grpc(GRPCAction(port, ""), LOCAL, 2)
    assert (ok.result, ok.output) == (ProbeResult.SUCCESS, "service healthy")
    bad = await handlers.run_grpc(GRPCAction(port, "db"), LOCAL, 2)
    assert (bad.result, bad.output) == (
        ProbeResult.FAILURE,
        'service unhealthy (responded with "NOT_SERVING")',
    )
    unknown = await handlers.run_grpc(GRPCAction(port, "nope"), LOCAL, 2)
    assert unknown.result == ProbeResult.FAILURE and "NOT_FOUND" in unknown.output
    gone = await handlers.run_grpc(GRPCAction(free_port(), ""), LOCAL, 1)
    assert gone.result == ProbeResult.FAILURE and gone.output.startswith("timeout: failed to connect service")


def test_grpc_messages_round_trip() -> None:
    assert grpc_health.encode_request("") == b""
    assert grpc_health.encode_request("a" * 200)[:3] == b"\x0a\xc8\x01"
    assert grpc_health.decode_status(b"") == 0
    assert grpc_health.decode_status(b"\x12\x02hi\x08\x02") == 2  # unknown field skipped


class FakeExecutor:
    def __init__(self, outcome: ExecResult | Exception) -> None:
        self.outcome = outcome
        self.calls: list[tuple[str, list[str], float]] = []

    async def exec_sync(self, container_id: str, cmd: list[str], timeout_seconds: float) -> ExecResult:
        self.calls.append((container_id, cmd, timeout_seconds))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


async def test_exec_outcomes() -> None:
    action = ExecAction(("sh", "-c", "x"))
    ex = FakeExecutor(ExecResult(exit_code=0, stdout=b"out", stderr=b"err"))
    ok = await handlers.run_exec(ex, "cid", action, 3)
    assert (ok.result, ok.output) == (ProbeResult.SUCCESS, "outerr")
    assert ex.calls == [("cid", ["sh", "-c", "x"], 3)]
    bad = await handlers.run_exec(FakeExecutor(ExecResult(exit_code=2, stdout=b"no")), "cid", action, 1)
    assert (bad.result, bad.output) == (ProbeResult.FAILURE, "no")
    slow = await handlers.run_exec(FakeExecutor(ExecTimeoutError("t")), "cid", action, 1)
    assert (slow.result, slow.output) == (
        ProbeResult.FAILURE,
        'command timed out: "sh -c x" timed out after 1s',
    )
    gone = await handlers.run_exec(FakeExecutor(ContainerNotRunningError("not running")), "cid", action, 1)
    assert gone.errored and gone.result == ProbeResult.UNKNOWN
