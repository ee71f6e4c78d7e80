"""A CRI client decorated with Prometheus metrics: the duration of every call, and its errors.

Why a decorator: the client (``client.CriClient``) is about calls, deadlines and retries; what is
recorded about them is another concern, kept here so a client can be used bare (benchmarks,
tests) or wrapped (the backend). One observation per call, by CRI method name:
``warmlet_cri_call_duration_seconds`` (retries of an idempotent call included) and
``warmlet_cri_call_errors_total`` by gRPC code (``UNAVAILABLE`` when the runtime stayed away).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TypeVar

from proto import cri_pb2 as pb
from sandbox import metrics
from sandbox.backend import RuntimeUnavailableError
from sandbox.cri.client import CriApi, CriCallError

T = TypeVar("T")


class MeteredCriClient:
    """``CriApi`` that forwards every call to ``inner`` and records its metrics."""

    def __init__(self, inner: CriApi) -> None:
        self.inner = inner

    async def _timed(self, method: str, call: Awaitable[T]) -> T:
        t0 = time.perf_counter()
        try:
            resp = await call
        except CriCallError as e:
            self._observe(method, t0, e.code.name)
            raise
        except RuntimeUnavailableError:
            self._observe(method, t0, "UNAVAILABLE")
            raise
        self._observe(method, t0, "")
        return resp

    @staticmethod
    def _observe(method: str, t0: float, error_code: str) -> None:
        metrics.CRI_CALL_SECONDS.labels(method).observe(time.perf_counter() - t0)
        if error_code:
            metrics.CRI_CALL_ERRORS.labels(method, error_code).inc()

    # ------------------------------------------------------------------ lifecycle

    def dial_through(self, target: str) -> None:
        self.inner.dial_through(target)

    def connect(self) -> None:
        self.inner.connect()

    async def close(self) -> None:
        await self.inner.close()

    # ------------------------------------------------------------------ runtime service

    async def version(self) -> pb.VersionResponse:
        return await self._timed("Version", self.inner.version())

    async def status(self, verbose: bool = False) -> pb.StatusResponse:
        return await self._timed("Status", self.inner.status(verbose))

    async def run_pod_sandbox(self, config: pb.PodSandboxConfig, runtime_handler: str = "") -> str:
        return await self._timed("RunPodSandbox", self.inner.run_pod_sandbox(config, runtime_handler))

    async def stop_pod_sandbox(self, sandbox_id: str) -> None:
        await self._timed("StopPodSandbox", self.inner.stop_pod_sandbox(sandbox_id))

    async def remove_pod_sandbox(self, sandbox_id: str) -> None:
        await self._timed("RemovePodSandbox", self.inner.remove_pod_sandbox(sandbox_id))

    async def pod_sandbox_status(self, sandbox_id: str, verbose: bool = False) -> pb.PodSandboxStatusResponse:
        return await self._timed("PodSandboxStatus", self.inner.pod_sandbox_status(sandbox_id, verbose))

    async def list_pod_sandbox(
        self, labels: dict[str, str] | None = None, state: int | None = None, sandbox_id: str = ""
    ) -> list[pb.PodSandbox]:
        return await self._timed("ListPodSandbox", self.inner.list_pod_sandbox(labels, state, sandbox_id))

    async def create_container(
        self, sandbox_id: str, config: pb.ContainerConfig, sandbox_config: pb.PodSandboxConfig
    ) -> str:
        return await self._timed(
            "CreateContainer", self.inner.create_container(sandbox_id, config, sandbox_config)
        )

    async def start_container(self, container_id: str) -> None:
        await self._timed("StartContainer", self.inner.start_container(container_id))

    async def stop_container(self, container_id: str, timeout_seconds: int) -> None:
        await self._timed("StopContainer", self.inner.stop_container(container_id, timeout_seconds))

    async def remove_container(self, container_id: str) -> None:
        await self._timed("RemoveContainer", self.inner.remove_container(container_id))

    async def list_containers(
        self, labels: dict[str, str] | None = None, sandbox_id: str = "", state: int | None = None
    ) -> list[pb.Container]:
        return await self._timed("ListContainers", self.inner.list_containers(labels, sandbox_id, state))

    async def container_status(self, container_id: str, verbose: bool = False) -> pb.ContainerStatusResponse:
        return await self._timed("ContainerStatus", self.inner.container_status(container_id, verbose))

    async def update_container_resources(self, container_id: str, linux: pb.LinuxContainerResources) -> None:
        await self._timed(
            "UpdateContainerResources", self.inner.update_container_resources(container_id, linux)
        )

    async def reopen_container_log(self, container_id: str) -> None:
        await self._timed("ReopenContainerLog", self.inner.reopen_container_log(container_id))

    async def exec_sync(
        self, container_id: str, cmd: list[str], timeout_seconds: int = 10
    ) -> pb.ExecSyncResponse:
        return await self._timed("ExecSync", self.inner.exec_sync(container_id, cmd, timeout_seconds))

    async def exec(self, req: pb.ExecRequest) -> str:
        return await self._timed("Exec", self.inner.exec(req))

    async def attach(self, req: pb.AttachRequest) -> str:
        return await self._timed("Attach", self.inner.attach(req))

    async def port_forward(self, sandbox_id: str, ports: list[int]) -> str:
        return await self._timed("PortForward", self.inner.port_forward(sandbox_id, ports))

    async def container_stats(self, container_id: str) -> pb.ContainerStats:
        return await self._timed("ContainerStats", self.inner.container_stats(container_id))

    async def list_container_stats(
        self, labels: dict[str, str] | None = None, sandbox_id: str = ""
    ) -> list[pb.ContainerStats]:
        return await self._timed("ListContainerStats", self.inner.list_container_stats(labels, sandbox_id))

    async def list_pod_sandbox_stats(self, labels: dict[str, str] | None = None) -> list[pb.PodSandboxStats]:
        return await self._timed("ListPodSandboxStats", self.inner.list_pod_sandbox_stats(labels))

    # ------------------------------------------------------------------ image service

    async def pull_image(
        self,
        image: str,
        sandbox_config: pb.PodSandboxConfig | None = None,
        auth: pb.AuthConfig | None = None,
    ) -> str:
        return await self._timed("PullImage", self.inner.pull_image(image, sandbox_config, auth))

    async def image_status(self, image: str) -> pb.Image | None:
        return await self._timed("ImageStatus", self.inner.image_status(image))

    async def list_images(self) -> list[pb.Image]:
        return await self._timed("ListImages", self.inner.list_images())

    async def remove_image(self, image: str) -> None:
        await self._timed("RemoveImage", self.inner.remove_image(image))

    async def image_fs_info(self) -> pb.ImageFsInfoResponse:
        return await self._timed("ImageFsInfo", self.inner.image_fs_info())
