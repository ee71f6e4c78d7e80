"""CriClient against an in-process fake CRI server on a unix socket: wire compat, retries, errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from fake_cri import serve_runtime

from proto import cri_pb2 as pb
from proto import cri_pb2_grpc as pbg
from sandbox.backend import RuntimeUnavailableError
from sandbox.cri.client import CriCallError, CriClient, to_target


class FakeRuntime(pbg.RuntimeServiceServicer):
    def __init__(self) -> None:
        self.fail_unavailable = 0
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    async def Version(
        self, request: pb.VersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.VersionResponse:
        self._count("Version")
        if self.fail_unavailable > 0:
            self.fail_unavailable -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        return pb.VersionResponse(
            version="0.1.0", runtime_name="fake", runtime_version="1", runtime_api_version="v1"
        )

    async def RunPodSandbox(
        self, request: pb.RunPodSandboxRequest, context: grpc.aio.ServicerContext
    ) -> pb.RunPodSandboxResponse:
        self._count("RunPodSandbox")
        if self.fail_unavailable > 0:
            self.fail_unavailable -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        return pb.RunPodSandboxResponse(pod_sandbox_id="sb-" + request.config.metadata.uid)

    async def ContainerStatus(
        self, request: pb.ContainerStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.ContainerStatusResponse:
        await context.abort(
            grpc.StatusCode.NOT_FOUND,
            f'an error occurred when try to find container "{request.container_id}": not found',
        )
        raise AssertionError


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[FakeRuntime, str]]:
    fake = FakeRuntime()
    async with serve_runtime(fake, tmp_path / "cri.sock") as endpoint:
        yield fake, endpoint


def test_to_target() -> None:
    assert to_target("unix:///run/x.sock") == "unix:///run/x.sock"
    assert to_target("/run/x.sock") == "unix:///run/x.sock"
    with pytest.raises(ValueError):
        to_target("tcp://127.0.0.1:1")


async def test_idempotent_call_retried_on_unavailable(server: tuple[FakeRuntime, str]) -> None:
    fake, target = server
    c = CriClient(target, backoff_base=0.01)
    try:
        fake.fail_unavailable = 2
        v = await c.version()
        assert v.runtime_name == "fake" and fake.calls["Version"] == 3
    finally:
        await c.close()


async def test_non_idempotent_call_not_retried(server: tuple[FakeRuntime, str]) -> None:
    fake, target = server
    c = CriClient(target, backoff_base=0.01)
    try:
        fake.fail_unavailable = 1
        with pytest.raises(RuntimeUnavailableError):
            await c.run_pod_sandbox(pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(uid="u")))
        assert fake.calls["RunPodSandbox"] == 1
        assert await c.run_pod_sandbox(pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(uid="u"))) == "sb-u"
    finally:
        await c.close()


async def test_other_errors_are_cri_call_errors(server: tuple[FakeRuntime, str]) -> None:
    _, target = server
    c = CriClient(target)
    try:
        with pytest.raises(CriCallError) as ei:
            await c.container_status("abc")
        assert ei.value.code == grpc.StatusCode.NOT_FOUND and ei.value.not_found
        assert "abc" in ei.value.message
    finally:
        await c.close()


async def test_unreachable_socket_is_runtime_unavailable(tmp_path: Path) -> None:
    c = CriClient(f"unix://{tmp_path}/nothing.sock", retries=2, backoff_base=0.01, call_timeout=2)
    t0 = time.monotonic()
    try:
        with pytest.raises(RuntimeUnavailableError) as ei:
            await c.version()
        assert ei.value.reason == "ContainerRuntimeUnavailable"
        assert "nothing.sock" in ei.value.message
        assert time.monotonic() - t0 < 5
    finally:
        await c.close()


async def test_concurrent_calls_share_channel(server: tuple[FakeRuntime, str]) -> None:
    fake, target = server
    c = CriClient(target)
    try:
        await asyncio.gather(*(c.version() for _ in range(50)))
        assert fake.calls["Version"] == 50
    finally:
        await c.close()
