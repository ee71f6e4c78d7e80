"""A thin asyncio gRPC client for the CRI v1 runtime and image services over a unix socket.

Why a wrapper and not the raw stubs: every call gets a deadline, idempotent calls are retried with
backoff while the runtime restarts (UNAVAILABLE), and failures surface as ``BackendError``
subclasses the rest of warmlet understands (``RuntimeUnavailableError`` when the socket cannot be
reached at all). Metrics are not recorded here: ``metered.MeteredCriClient`` decorates a client
with them. Messages are the generated ``proto.cri_pb2`` types; nothing outside ``sandbox/`` sees
them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
import grpc.aio

from common.clock import SYSTEM, Clock
from proto import cri_pb2 as pb
from proto import cri_pb2_grpc as pbg
from sandbox.backend import BackendError, RuntimeUnavailableError

log = logging.getLogger("warmlet.cri")

T = TypeVar("T")

# Calls that may be retried blindly: reads, and the calls CRI requires to be idempotent.
IDEMPOTENT = frozenset(
    {
        "Version",
        "Status",
        "PodSandboxStatus",
        "ListPodSandbox",
        "ListContainers",
        "ContainerStatus",
        "ContainerStats",
        "ListContainerStats",
        "PodSandboxStats",
        "ListPodSandboxStats",
        "ImageStatus",
        "ListImages",
        "ImageFsInfo",
        "StopPodSandbox",
        "RemovePodSandbox",
        "StopContainer",
        "RemoveContainer",
        "RemoveImage",
    }
)


class CriCallError(BackendError):
    """A CRI call answered with a gRPC error other than 'runtime unreachable'."""

    reason = "RuntimeError"

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{method}: {code.name}: {details}")
        self.method = method
        self.code = code
        self.details = details

    @property
    def not_found(self) -> bool:
        # containerd answers NotFound for unknown ids; some paths answer Unknown with "not found".
        return self.code == grpc.StatusCode.NOT_FOUND or "not found" in self.details.lower()


def to_target(endpoint: str) -> str:
    """Accept ``unix:///path``, ``unix:path`` or a bare socket path; return a grpc target."""
    if endpoint.startswith("unix:"):
        return endpoint
    if endpoint.startswith("/"):
        return "unix://" + endpoint
    raise ValueError(f"unsupported CRI endpoint {endpoint!r}: only unix sockets are supported")


class CriClient:
    """Async CRI client. ``connect()`` once, then call methods; ``close()`` at shutdown."""

    def __init__(
        self,
        runtime_endpoint: str,
        image_endpoint: str = "",
        call_timeout: float = 30.0,
        pull_timeout: float = 600.0,
        retries: int = 4,
        backoff_base: float = 0.1,
        backoff_max: float = 2.0,
        clock: Clock = SYSTEM,
    ) -> None:
        self.runtime_target = to_target(runtime_endpoint)
        self.image_target = to_target(image_endpoint) if image_endpoint else self.runtime_target
        self.call_timeout = call_timeout
        self.pull_timeout = pull_timeout
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.clock = clock
        self.dial_target = ""  # set by dial_through: the runtime service is reached via a relay
        self._channels: list[grpc.aio.Channel] = []
        self._rt: pbg.RuntimeServiceStub | None = None
        self._img: pbg.ImageServiceStub | None = None

    # ------------------------------------------------------------------ lifecycle

    def dial_through(self, target: str) -> None:
        """Reach the runtime service through ``target`` (a relay to it); before ``connect()``.
        The image service keeps its own direct channel."""
        assert self._rt is None, "dial_through after connect"
        self.dial_target = target

    def connect(self) -> None:
        """Create the channels (lazy: nothing is dialled until the first call)."""
        if self._rt is not None:
            return
        opts = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
            ("grpc.enable_http_proxy", 0),
        ]
        rt_ch = grpc.aio.insecure_channel(self.dial_target or self.runtime_target, options=opts)
        self._channels.append(rt_ch)
        img_ch = rt_ch
        # Image calls never go through the relay: a pull cut short by a kill is simply made again,
        # and the next warmlet need not wait minutes for one before it adopts the runtime's state.
        if self.image_target != self.runtime_target or self.dial_target:
            img_ch = grpc.aio.insecure_channel(self.image_target, options=opts)
            self._channels.append(img_ch)
        self._rt = pbg.RuntimeServiceStub(rt_ch)
        self._img = pbg.ImageServiceStub(img_ch)

    async def close(self) -> None:
        channels, self._channels = self._channels, []
        self._rt = self._img = None
        for ch in channels:
            await ch.close()

    @property
    def rt(self) -> pbg.RuntimeServiceStub:
        if self._rt is None:
            self.connect()
        assert self._rt is not None
        return self._rt

    @property
    def img(self) -> pbg.ImageServiceStub:
        if self._img is None:
            self.connect()
        assert self._img is not None
        return self._img

    # ------------------------------------------------------------------ core

    async def _call(
        self,
        method: str,
        fn: Callable[..., Awaitable[T]],
        request: Any,
        deadline: float | None = None,
    ) -> T:
        """One CRI call with deadline, and retries of idempotent calls on UNAVAILABLE."""
        timeout = self.call_timeout if deadline is None else deadline
        attempts = 1 + (self.retries if method in IDEMPOTENT else 0)
        delay = self.backoff_base
        for attempt in range(1, attempts + 1):
            try:
                resp = await fn(request, timeout=timeout)
            except grpc.aio.AioRpcError as e:
                code = e.code()
                details = e.details() or ""
                if code == grpc.StatusCode.UNAVAILABLE:
                    if attempt < attempts:
                        log.debug(
                            "cri call unavailable method=%s attempt=%d retry_in=%.2f", method, attempt, delay
                        )
                        await self.clock.sleep(delay * (0.5 + random.random() / 2))
                        delay = min(delay * 2, self.backoff_max)
                        continue
                    raise RuntimeUnavailableError(
                        f"container runtime unreachable at {self.runtime_target}: {details}"
                    ) from e
                raise CriCallError(method, code, details) from e
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ runtime service

    async def version(self) -> pb.VersionResponse:
        return await self._call("Version", self.rt.Version, pb.VersionRequest(version="v1"))

    async def status(self, verbose: bool = False) -> pb.StatusResponse:
        return await self._call("Status", self.rt.Status, pb.StatusRequest(verbose=verbose))

    async def run_pod_sandbox(self, config: pb.PodSandboxConfig, runtime_handler: str = "") -> str:
        req = pb.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        # Sandbox creation includes CNI setup: allow more than a plain call.
        resp = await self._call(
            "RunPodSandbox", self.rt.RunPodSandbox, req, deadline=max(self.call_timeout, 120)
        )
        return str(resp.pod_sandbox_id)

    async def stop_pod_sandbox(self, sandbox_id: str) -> None:
        req = pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id)
        await self._call("StopPodSandbox", self.rt.StopPodSandbox, req, deadline=max(self.call_timeout, 60))

    async def remove_pod_sandbox(self, sandbox_id: str) -> None:
        req = pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id)
        await self._call(
            "RemovePodSandbox", self.rt.RemovePodSandbox, req, deadline=max(self.call_timeout, 60)
        )

    async def pod_sandbox_status(self, sandbox_id: str, verbose: bool = False) -> pb.PodSandboxStatusResponse:
        req = pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=verbose)
        return await self._call("PodSandboxStatus", self.rt.PodSandboxStatus, req)

    async def list_pod_sandbox(
        self, labels: dict[str, str] | None = None, state: int | None = None, sandbox_id: str = ""
    ) -> list[pb.PodSandbox]:
        f = pb.PodSandboxFilter(id=sandbox_id, label_selector=labels or {})
        if state is not None:
            f.state.CopyFrom(pb.PodSandboxStateValue(state=state))  # type: ignore[arg-type]
        resp = await self._call("ListPodSandbox", self.rt.ListPodSandbox, pb.ListPodSandboxRequest(filter=f))
        return list(resp.items)

    async def create_container(
        self, sandbox_id: str, config: pb.ContainerConfig, sandbox_config: pb.PodSandboxConfig
    ) -> str:
        req = pb.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config
        )
        resp = await self._call("CreateContainer", self.rt.CreateContainer, req)
        return str(resp.container_id)

    async def start_container(self, container_id: str) -> None:
        await self._call(
            "StartContainer", self.rt.StartContainer, pb.StartContainerRequest(container_id=container_id)
        )

    async def stop_container(self, container_id: str, timeout_seconds: int) -> None:
        req = pb.StopContainerRequest(container_id=container_id, timeout=timeout_seconds)
        # The call itself lasts up to the grace period: give the deadline that much more.
        await self._call(
            "StopContainer", self.rt.StopContainer, req, deadline=self.call_timeout + timeout_seconds
        )

    async def remove_container(self, container_id: str) -> None:
        req = pb.RemoveContainerRequest(container_id=container_id)
        await self._call("RemoveContainer", self.rt.RemoveContainer, req)

    async def list_containers(
        self, labels: dict[str, str] | None = None, sandbox_id: str = "", state: int | None = None
    ) -> list[pb.Container]:
        f = pb.ContainerFilter(pod_sandbox_id=sandbox_id, label_selector=labels or {})
        if state is not None:
            f.state.CopyFrom(pb.ContainerStateValue(state=state))  # type: ignore[arg-type]
        resp = await self._call("ListContainers", self.rt.ListContainers, pb.ListContainersRequest(filter=f))
        return list(resp.containers)

    async def container_status(self, container_id: str, verbose: bool = False) -> pb.ContainerStatusResponse:
        req = pb.ContainerStatusRequest(container_id=container_id, verbose=verbose)
        return await self._call("ContainerStatus", self.rt.ContainerStatus, req)

    async def update_container_resources(self, container_id: str, linux: pb.LinuxContainerResources) -> None:
        req = pb.UpdateContainerResourcesRequest(container_id=container_id, linux=linux)
        await self._call("UpdateContainerResources", self.rt.UpdateContainerResources, req)

    async def reopen_container_log(self, container_id: str) -> None:
        """After the log file was renamed (rotation): the runtime opens a new one at the log path."""
        req = pb.ReopenContainerLogRequest(container_id=container_id)
        await self._call("ReopenContainerLog", self.rt.ReopenContainerLog, req)

    async def exec_sync(
        self, container_id: str, cmd: list[str], timeout_seconds: int = 10
    ) -> pb.ExecSyncResponse:
        req = pb.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout_seconds)
        return await self._call(
            "ExecSync", self.rt.ExecSync, req, deadline=self.call_timeout + timeout_seconds
        )

    async def exec(self, req: pb.ExecRequest) -> str:
        """The URL of one exec session on the runtime's streaming server."""
        return str((await self._call("Exec", self.rt.Exec, req)).url)

    async def attach(self, req: pb.AttachRequest) -> str:
        """The URL of one attach session on the runtime's streaming server."""
        return str((await self._call("Attach", self.rt.Attach, req)).url)

    async def port_forward(self, sandbox_id: str, ports: list[int]) -> str:
        """The URL of one port-forward session to the sandbox's network namespace."""
        req = pb.PortForwardRequest(pod_sandbox_id=sandbox_id, port=ports)
        return str((await self._call("PortForward", self.rt.PortForward, req)).url)

    async def container_stats(self, container_id: str) -> pb.ContainerStats:
        req = pb.ContainerStatsRequest(container_id=container_id)
        resp = await self._call("ContainerStats", self.rt.ContainerStats, req)
        return resp.stats

    async def list_container_stats(
        self, labels: dict[str, str] | None = None, sandbox_id: str = ""
    ) -> list[pb.ContainerStats]:
        f = pb.ContainerStatsFilter(pod_sandbox_id=sandbox_id, label_selector=labels or {})
        req = pb.ListContainerStatsRequest(filter=f)
        resp = await self._call("ListContainerStats", self.rt.ListContainerStats, req)
        return list(resp.stats)

    async def list_pod_sandbox_stats(self, labels: dict[str, str] | None = None) -> list[pb.PodSandboxStats]:
        req = pb.ListPodSandboxStatsRequest(filter=pb.PodSandboxStatsFilter(label_selector=labels or {}))
        resp = await self._call("ListPodSandboxStats", self.rt.ListPodSandboxStats, req)
        return list(resp.stats)

    # ------------------------------------------------------------------ image service

    async def pull_image(
        self,
        image: str,
        sandbox_config: pb.PodSandboxConfig | None = None,
        auth: pb.AuthConfig | None = None,
    ) -> str:
        req = pb.PullImageRequest(image=pb.ImageSpec(image=image))
        if auth is not None:
            req.auth.CopyFrom(auth)
        if sandbox_config is not None:
            req.sandbox_config.CopyFrom(sandbox_config)
        resp = await self._call("PullImage", self.img.PullImage, req, deadline=self.pull_timeout)
        return str(resp.image_ref)

    async def image_status(self, image: str) -> pb.Image | None:
        """The image if present, else None (CRI answers an empty image, not an error)."""
        req = pb.ImageStatusRequest(image=pb.ImageSpec(image=image))
        resp = await self._call("ImageStatus", self.img.ImageStatus, req)
        return resp.image if resp.HasField("image") and resp.image.id else None

    async def list_images(self) -> list[pb.Image]:
        resp = await self._call("ListImages", self.img.ListImages, pb.ListImagesRequest())
        return list(resp.images)

    async def remove_image(self, image: str) -> None:
        req = pb.RemoveImageRequest(image=pb.ImageSpec(image=image))
        await self._call("RemoveImage", self.img.RemoveImage, req)

    async def image_fs_info(self) -> pb.ImageFsInfoResponse:
        return await self._call("ImageFsInfo", self.img.ImageFsInfo, pb.ImageFsInfoRequest())


class CriApi(Protocol):
    """What the CRI backend calls: :class:`CriClient`, or a client decorated with metrics
    (``metered.MeteredCriClient``). Signatures and errors are :class:`CriClient`'s."""

    def dial_through(self, target: str) -> None: ...
    def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def version(self) -> pb.VersionResponse: ...
    async def status(self, verbose: bool = False) -> pb.StatusResponse: ...
    async def run_pod_sandbox(self, config: pb.PodSandboxConfig, runtime_handler: str = "") -> str: ...
    async def stop_pod_sandbox(self, sandbox_id: str) -> None: ...
    async def remove_pod_sandbox(self, sandbox_id: str) -> None: ...
    async def pod_sandbox_status(
        self, sandbox_id: str, verbose: bool = False
    ) -> pb.PodSandboxStatusResponse: ...
    async def list_pod_sandbox(
        self, labels: dict[str, str] | None = None, state: int | None = None, sandbox_id: str = ""
    ) -> list[pb.PodSandbox]: ...
    async def create_container(
        self, sandbox_id: str, config: pb.ContainerConfig, sandbox_config: pb.PodSandboxConfig
    ) -> str: ...
    async def start_container(self, container_id: str) -> None: ...
    async def stop_container(self, container_id: str, timeout_seconds: int) -> None: ...
    async def remove_container(self, container_id: str) -> None: ...
    async def list_containers(
        self, labels: dict[str, str] | None = None, sandbox_id: str = "", state: int | None = None
    ) -> list[pb.Container]: ...
    async def container_status(
        self, container_id: str, verbose: bool = False
    ) -> pb.ContainerStatusResponse: ...
    async def update_container_resources(
        self, container_id: str, linux: pb.LinuxContainerResources
    ) -> None: ...
    async def reopen_container_log(self, container_id: str) -> None: ...
    async def exec_sync(
        self, container_id: str, cmd: list[str], timeout_seconds: int = 10
    ) -> pb.ExecSyncResponse: ...
    async def exec(self, req: pb.ExecRequest) -> str: ...
    async def attach(self, req: pb.AttachRequest) -> str: ...
    async def port_forward(self, sandbox_id: str, ports: list[int]) -> str: ...
    async def container_stats(self, container_id: str) -> pb.ContainerStats: ...
    async def list_container_stats(
        self, labels: dict[str, str] | None = None, sandbox_id: str = ""
    ) -> list[pb.ContainerStats]: ...
    async def list_pod_sandbox_stats(
        self, labels: dict[str, str] | None = None
    ) -> list[pb.PodSandboxStats]: ...
    async def pull_image(
        self,
        image: str,
        sandbox_config: pb.PodSandboxConfig | None = None,
        auth: pb.AuthConfig | None = None,
    ) -> str: ...
    async def image_status(self, image: str) -> pb.Image | None: ...
    async def list_images(self) -> list[pb.Image]: ...
    async def remove_image(self, image: str) -> None: ...
    async def image_fs_info(self) -> pb.ImageFsInfoResponse: ...
