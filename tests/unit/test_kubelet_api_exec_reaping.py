"""The kubelet API tells a backend's ExecSessionTracker about each exec session: started before
the session's URL is asked for, ended once the proxied connection is over (also when the runtime
refuses, and when the client leaves), never for attach or port-forward; a failing tracker never
fails the request; processes reaped are counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from provider.kubelet_api import StaticPods, build_app
from provider.kubelet_api.auth import AlwaysAllow, UserInfo
from sandbox.backend import (
    ContainerNotRunningError,
    ContainerSpec,
    ExecSessionTracker,
    PodSandboxSpec,
    PullPolicy,
)
from sandbox.simulated import SimulatedBackend

pytestmark = pytest.mark.unit


class Authn:
    async def authenticate(self, peercert: Any, authorization: str | None) -> UserInfo | None:
        return UserInfo("admin")


class TrackingSim(SimulatedBackend):
    """Sessions on a fake streaming server; the tracker's calls recorded in ``events``."""

    url = ""
    events: list[str]
    refuse_exec = False
    fail: str = ""  # "started" or "ended": that call raises
    reaped = 0

    async def exec_url(
        self, container_id: str, cmd: list[str], *, tty: bool, stdin: bool, stdout: bool, stderr: bool
    ) -> str:
        self.events.append("exec_url " + " ".join(cmd))
        if self.refuse_exec:
            raise ContainerNotRunningError("container is not running")
        return self.url + "/exec/tok"

    async def attach_url(
        self, container_id: str, *, tty: bool, stdin: bool, stdout: bool, stderr: bool
    ) -> str:
        self.events.append("attach_url")
        return self.url + "/exec/tok"

    async def port_forward_url(self, pod_uid: str, ports: list[int]) -> str:
        self.events.append("port_forward_url")
        return self.url + "/exec/tok"

    async def exec_session_started(self, container_id: str, cmd: list[str]) -> str:
        self.events.append(f"started {container_id} " + " ".join(cmd))
        if self.fail == "started":
            raise OSError("no /proc")
        return "k1"

    async def exec_session_ended(self, key: str) -> int:
        await asyncio.sleep(0.05)  # an end that takes a moment: it still completes
        self.events.append(f"ended {key}")
        if self.fail == "ended":
            raise OSError("no /proc")
        return self.reaped


class Runtime:
    """A 101 then an echo until the client leaves (or ``b"bye"``: the command ended)."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n")
        while (data := await reader.read(65536)) and data != b"bye":
            writer.write(data)
            await writer.drain()
        self.events.append("runtime closed")
        writer.close()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[TestClient, TrackingSim]]:
    backend = TrackingSim(tmp_path / "pods")
    backend.events = []
    server = await asyncio.start_server(Runtime(backend.events).handle, "127.0.0.1", 0)
    backend.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    await backend.start()
    spec = PodSandboxSpec(uid="u1", name="p1", namespace="default", workload_key="w", hostname="p1")
    sb = await backend.acquire_sandbox(spec)
    await backend.ensure_image("busybox", PullPolicy.IF_NOT_PRESENT)
    cid = await backend.create_container(sb, spec, ContainerSpec(name="main", image="busybox"), 0)
    await backend.start_container(cid)
    pod = {
        "metadata": {"name": "p1", "namespace": "default", "uid": "u1"},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    }
    client = TestClient(TestServer(build_app("vnode", backend, StaticPods([pod]), Authn(), AlwaysAllow())))
    await client.start_server()
    try:
        yield client, backend
    finally:
        await client.close()
        await backend.close()
        server.close()
        await server.wait_closed()


async def _open(client: TestClient, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n".encode()
    )
    return reader, writer, await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)


async def _until(events: list[str], entry: str) -> None:
    for _ in range(1000):
        if entry in events:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{entry!r} not in {events}")


def reaped() -> float:
    return REGISTRY.get_sample_value("warmlet_kubelet_api_exec_processes_reaped_total") or 0.0


def errors(stage: str) -> float:
    return REGISTRY.get_sample_value("warmlet_kubelet_api_exec_reaper_errors_total", {"stage": stage}) or 0.0


EXEC = "/exec/default/p1/main?command=sleep&command=4242&output=1"


async def test_started_before_the_url_and_ended_after_the_client_left(env: Any) -> None:
    client, backend = env
    assert isinstance(backend, ExecSessionTracker)
    backend.reaped = 1
    before = reaped()
    reader, writer, head = await _open(client, EXEC)
    assert head.startswith(b"HTTP/1.1 101 ")
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    cid = backend.events[0].split()[1]
    assert backend.events == [f"started {cid} sleep 4242", "exec_url sleep 4242"]
    writer.close()  # the client leaves
    await _until(backend.events, "ended k1")
    assert backend.events[2:] == ["runtime closed", "ended k1"]
    assert reaped() == before + 1


async def test_ended_when_the_command_ends_and_when_the_runtime_refuses(env: Any) -> None:
    client, backend = env
    reader, writer, _ = await _open(client, EXEC)
    writer.write(b"bye")  # the runtime closes: the command ended
    assert await asyncio.wait_for(reader.read(), 10) == b""
    await _until(backend.events, "ended k1")
    assert backend.events[-2:] == ["runtime closed", "ended k1"]
    writer.close()
    backend.events.clear()
    backend.refuse_exec = True
    _, writer, head = await _open(client, EXEC)
    assert head.startswith(b"HTTP/1.1 404 ")
    assert [e.split()[0] for e in backend.events] == ["started", "exec_url", "ended"]
    writer.close()


async def test_attach_and_port_forward_start_no_session(env: Any) -> None:
    client, backend = env
    for path in ("/attach/default/p1/main?output=1&input=1", "/portForward/default/p1?port=80"):
        reader, writer, head = await _open(client, path)
        assert head.startswith(b"HTTP/1.1 101 ")
        writer.write(b"bye")
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    await asyncio.sleep(0.1)
    assert not [e for e in backend.events if e.startswith(("started", "ended"))], backend.events


async def test_a_failing_tracker_never_fails_the_session(env: Any) -> None:
    client, backend = env
    backend.fail = "started"
    before = errors("started")
    reader, writer, head = await _open(client, EXEC)
    assert head.startswith(b"HTTP/1.1 101 ")
    writer.write(b"bye")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    assert errors("started") == before + 1
    await asyncio.sleep(0.1)
    assert not [e for e in backend.events if e.startswith("ended")]  # nothing to end
    backend.fail = "ended"
    before = errors("ended")
    reader, writer, head = await _open(client, EXEC)
    assert head.startswith(b"HTTP/1.1 101 ")
    writer.write(b"bye")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    await _until(backend.events, "ended k1")
    await asyncio.sleep(0.05)
    assert errors("ended") == before + 1
