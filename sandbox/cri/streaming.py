"""The CRI side of interactive sessions: kubelet's GetExec, GetAttach and GetPortForward.

Each call asks the runtime (CRI ``Exec``, ``Attach``, ``PortForward``) for the URL of one session
on its streaming server; the kubelet API proxies the client's upgraded connection there. The
runtime does the rest (SPDY or WebSocket, stdin/stdout/stderr, tty resize, exit status). Tokens
in these URLs are single-use and expire after about a minute on the runtime's side.

Errors: an unknown container or sandbox (gRPC NotFound) or a container the runtime refuses as
not running (FailedPrecondition) is ``ContainerNotRunningError``; a pod without a sandbox here
too. Anything else stays the client's ``CriCallError``/``RuntimeUnavailableError``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from proto import cri_pb2 as pb
from sandbox.backend import ContainerNotRunningError
from sandbox.cri.client import CriApi, CriCallError

log = logging.getLogger("warmlet.cri")

T = TypeVar("T")


class CriStreamer:
    """``ContainerStreamer`` over a CRI runtime; ``sandbox_of`` maps a pod uid to its sandbox id."""

    def __init__(self, client: CriApi, sandbox_of: Callable[[str], str | None]) -> None:
        self.client = client
        self.sandbox_of = sandbox_of

    async def exec_url(
        self, container_id: str, cmd: list[str], *, tty: bool, stdin: bool, stdout: bool, stderr: bool
    ) -> str:
        req = pb.ExecRequest(
            container_id=container_id, cmd=cmd, tty=tty, stdin=stdin, stdout=stdout, stderr=stderr
        )
        return await _not_running_as_error(f"container {container_id[:12]}", self.client.exec(req))

    async def attach_url(
        self, container_id: str, *, tty: bool, stdin: bool, stdout: bool, stderr: bool
    ) -> str:
        req = pb.AttachRequest(container_id=container_id, tty=tty, stdin=stdin, stdout=stdout, stderr=stderr)
        return await _not_running_as_error(f"container {container_id[:12]}", self.client.attach(req))

    async def port_forward_url(self, pod_uid: str, ports: list[int]) -> str:
        sandbox_id = self.sandbox_of(pod_uid)
        if not sandbox_id:
            raise ContainerNotRunningError(f"pod {pod_uid} has no running sandbox on this node")
        call = self.client.port_forward(sandbox_id, ports)
        return await _not_running_as_error(f"sandbox {sandbox_id[:12]}", call)


async def _not_running_as_error(what: str, call: Awaitable[T]) -> T:
    try:
        return await call
    except CriCallError as e:
        if e.not_found or e.code == grpc.StatusCode.FAILED_PRECONDITION:
            raise ContainerNotRunningError(f"{what} is not running: {e.details}") from e
        raise
