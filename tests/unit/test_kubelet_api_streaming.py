"""The kubelet API's upgrade-aware proxy against a fake streaming server (in-process, plain TCP):
the 101 and its headers relayed, bytes spliced both ways intact (with back-pressure), the request
the runtime sees, refusals relayed, and a client that leaves closes the runtime's connection."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from provider.kubelet_api import StaticPods, build_app
from provider.kubelet_api.auth import AlwaysAllow, UserInfo
from sandbox.backend import ContainerSpec, ContainerStreamer, PodSandboxSpec, PullPolicy
from sandbox.simulated import SimulatedBackend

pytestmark = pytest.mark.unit

NODE = "vnode"


class Authn:
    async def authenticate(self, peercert: Any, authorization: str | None) -> UserInfo | None:
        return UserInfo("admin") if authorization == "Bearer admin" else None


class StreamingSim(SimulatedBackend):
    """A simulated backend whose sessions live on a fake streaming server."""

    url = ""
    asked: list[tuple[str, Any]]

    async def exec_url(
        self, container_id: str, cmd: list[str], *, tty: bool, stdin: bool, stdout: bool, stderr: bool
    ) -> str:
        self.asked.append(("exec", (container_id, cmd, tty, stdin, stdout, stderr)))
        return self.url + "/exec/tok"

    async def attach_url(
        self, container_id: str, *, tty: bool, stdin: bool, stdout: bool, stderr: bool
    ) -> str:
        self.asked.append(("attach", (container_id, tty, stdin, stdout, stderr)))
        return self.url + "/refuse"

    async def port_forward_url(self, pod_uid: str, ports: list[int]) -> str:
        self.asked.append(("portforward", (pod_uid, ports)))
        return self.url + "/ok200"


class FakeStreamingServer:
    """Answers /exec/* with a 101 then echoes every byte; /refuse with 404; /ok200 with 200."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.closed = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        target = head.split(b" ")[1]
        if target.startswith(b"/refuse"):
            writer.write(
                b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nnope!"
            )
        elif target.startswith(b"/ok200"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        else:
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\nhello"
            )
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            self.closed.set()
        await writer.drain()
        writer.close()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[TestClient, StreamingSim, FakeStreamingServer]]:
    fake = FakeStreamingServer()
    fake.server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = fake.server.sockets[0].getsockname()[1]
    backend = StreamingSim(tmp_path / "pods")
    backend.url, backend.asked = f"http://127.0.0.1:{port}", []
    await backend.start()
    spec = PodSandboxSpec(uid="u1", name="p1", namespace="default", workload_key="w", hostname="p1")
    sb = await backend.acquire_sandbox(spec)
    await backend.ensure_image("busybox", PullPolicy.IF_NOT_PRESENT)
    cid = await backend.create_container(sb, spec, ContainerSpec(name="main", image="busybox"), 0)
    await backend.start_container(cid)
    pod = {
        "metadata": {"name": "p1", "namespace": "default", "uid": "u1"},
        "spec": {"containers": [{"name": "main", "image": "busybox", "tty": True}]},
    }
    app = build_app(NODE, backend, StaticPods([pod]), Authn(), AlwaysAllow())
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, backend, fake
    finally:
        await client.close()
        await backend.close()
        fake.server.close()
        await fake.server.wait_closed()


async def _open(client: TestClient, path: str, extra: str = "") -> tuple[asyncio.StreamReader, Any, bytes]:
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(
        (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin\r\nConnection: Upgrade\r\n"
            f"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n{extra}\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return reader, writer, head


def active(kind: str) -> float:
    return REGISTRY.get_sample_value("warmlet_kubelet_api_stream_sessions_active", {"kind": kind}) or 0.0


async def test_exec_is_spliced_both_ways_and_the_runtime_sees_the_request(env: Any) -> None:
    client, backend, fake = env
    assert isinstance(backend, ContainerStreamer)
    path = "/exec/default/p1/main?command=sh&command=-c&command=cat&input=1&output=1&tty=1&error=1"
    reader, writer, head = await _open(client, path, "X-Forwarded-For: 10.0.0.9\r\n")
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Upgrade: SPDY/3.1\r\n" in head and b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n" in head
    assert await reader.readexactly(5) == b"hello"  # sent by the runtime right behind its 101
    # tty drops stderr (remotecommand's NewOptions); the command keeps its order
    kind, args = backend.asked[0]
    assert kind == "exec" and args[1:] == (["sh", "-c", "cat"], True, True, True, False)
    # 8 MiB through the echo: intact, in order (back-pressure, no loss)
    blob = os.urandom(8 * 1024 * 1024)
    got = hashlib.sha256()
    received = 0

    async def drain() -> None:
        nonlocal received
        while received < len(blob):
            data = await reader.read(1 << 16)
            assert data
            got.update(data)
            received += len(data)

    consumer = asyncio.create_task(drain())
    for i in range(0, len(blob), 1 << 20):
        writer.write(blob[i : i + (1 << 20)])
        await writer.drain()
    await asyncio.wait_for(consumer, 30)
    assert got.hexdigest() == hashlib.sha256(blob).hexdigest()
    sent = fake.heads[0].decode()
    assert (
        sent.startswith("POST /exec/tok HTTP/1.1\r\n")
        and f"Host: 127.0.0.1:{backend.url.rsplit(':', 1)[1]}" in sent
    )
    assert "Authorization" not in sent and "Upgrade: SPDY/3.1" in sent
    assert "X-Forwarded-For: 10.0.0.9, 127.0.0.1" in sent
    assert active("exec") == 1
    # the client leaves: the runtime's connection is closed, the session ends
    writer.close()
    await asyncio.wait_for(fake.closed.wait(), 10)
    for _ in range(100):
        if active("exec") == 0:
            break
        await asyncio.sleep(0.05)
    assert active("exec") == 0


async def test_runtime_refusal_is_relayed_and_non_upgrade_is_refused(env: Any) -> None:
    client, backend, _ = env
    reader, writer, head = await _open(client, "/attach/default/p1/main?input=1&output=1")
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert await reader.read() == b"nope!"
    writer.close()
    # attach's tty is the container's (spec tty: true), not the query's
    assert backend.asked[0] == ("attach", (backend.asked[0][1][0], True, True, True, False))
    _, writer, head = await _open(client, "/portForward/default/p1")
    assert head.startswith(b"HTTP/1.1 500 ")
    writer.close()
    async with client.post("/exec/default/p1/main?output=1", headers={"Authorization": "Bearer admin"}) as r:
        assert r.status == 400 and await r.text() == "Upgrade request required"
    async with client.post("/exec/default/p1/main?output=1", headers={"Connection": "Upgrade"}) as r:
        assert r.status == 401


async def test_container_not_running_is_kubelets_error(env: Any) -> None:
    client, _, _ = env
    _, writer, head = await _open(client, "/exec/default/p1/u-other/main?output=1")
    assert head.startswith(b"HTTP/1.1 500 ")
    writer.close()
    async with client.post(
        "/exec/default/p1/side?output=1", headers={"Authorization": "Bearer admin", "Connection": "Upgrade"}
    ) as r:
        assert r.status == 500 and await r.text() == 'container not found ("side")'
