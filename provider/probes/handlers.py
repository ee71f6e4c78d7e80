"""Running one probe: exec (through the backend's ExecSync), httpGet, tcpSocket, grpc.

Each handler returns an :class:`Outcome` like kubelet's ``pkg/probe`` probers: exec succeeds on exit
code 0 and a timeout is a failure (``command timed out``); httpGet succeeds on 2xx/3xx, follows
redirects on the same host and stops (a warning) at another host, sends ``User-Agent:
kube-probe/1.36`` and ``Accept: */*`` unless the probe sets them; tcpSocket succeeds when a
connection opens within the timeout; grpc calls ``grpc.health.v1.Health/Check``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from urllib.parse import urljoin, urlsplit

import aiohttp

from provider.probes import grpc_health
from provider.probes.outcome import MAX_OUTPUT, Outcome, ProbeResult, go_duration
from provider.probes.spec import ExecAction, GRPCAction, HTTPGetAction, TCPSocketAction
from sandbox.backend import BackendError, ContainerExecutor, ExecTimeoutError

USER_AGENT = "kube-probe/1.36"
MAX_REDIRECTS = 10


def _text(data: bytes) -> str:
    return data[:MAX_OUTPUT].decode("utf-8", "replace")


async def run_exec(
    executor: ContainerExecutor, container_id: str, action: ExecAction, timeout_seconds: float
) -> Outcome:
    cmd = list(action.command)
    try:
        r = await executor.exec_sync(container_id, cmd, timeout_seconds)
    except ExecTimeoutError:
        return Outcome(
            ProbeResult.FAILURE,
            f'command timed out: "{" ".join(cmd)}" timed out after {go_duration(timeout_seconds)}',
        )
    except BackendError as e:
        return Outcome(ProbeResult.UNKNOWN, error=e.message)
    output = _text(r.stdout + r.stderr)
    return Outcome(ProbeResult.SUCCESS if r.exit_code == 0 else ProbeResult.FAILURE, output)


def _join_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def http_url(action: HTTPGetAction, pod_ip: str) -> str:
    path = action.path
    if path and not path.startswith("/"):
        path = "/" + path
    return f"{action.scheme}://{_join_host(action.host or pod_ip, action.port)}{path}"


def http_headers(action: HTTPGetAction) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in action.headers:
        key = next((k for k in headers if k.lower() == name.lower()), name)
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    lower = {k.lower(): k for k in headers}
    if "user-agent" not in lower:
        headers["User-Agent"] = USER_AGENT
    if "accept" not in lower:
        headers["Accept"] = "*/*"
    elif headers[lower["accept"]] == "":
        del headers[lower["accept"]]
    return headers


_INSECURE = ssl.create_default_context()
_INSECURE.check_hostname = False
_INSECURE.verify_mode = ssl.CERT_NONE


async def run_http(
    session: aiohttp.ClientSession, action: HTTPGetAction, pod_ip: str, timeout_seconds: float
) -> Outcome:
    url = http_url(action, pod_ip)
    headers = http_headers(action)
    try:
        async with asyncio.timeout(timeout_seconds):
            for _ in range(MAX_REDIRECTS + 1):
                async with session.get(
                    url,
                    headers=headers,
                    allow_redirects=False,
                    ssl=_INSECURE if url.startswith("https") else True,
                ) as res:
                    body = _text(await res.content.read(MAX_OUTPUT))
                    location = res.headers.get("Location")
                    if res.status in (301, 302, 303, 307, 308) and location:
                        nxt = urljoin(url, location)
                        if urlsplit(nxt).hostname != urlsplit(url).hostname:
                            return Outcome(
                                ProbeResult.WARNING, f"Probe terminated redirects, Response body: {body}"
                            )
                        url = nxt
                        continue
                    if 200 <= res.status < 400:
                        return Outcome(ProbeResult.SUCCESS, body)
                    return Outcome(ProbeResult.FAILURE, f"HTTP probe failed with statuscode: {res.status}")
            return Outcome(ProbeResult.FAILURE, f'Get "{url}": stopped after {MAX_REDIRECTS} redirects')
    except TimeoutError:
        return Outcome(
            ProbeResult.FAILURE,
            f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)',
        )
    except (aiohttp.ClientError, OSError) as e:
        return Outcome(ProbeResult.FAILURE, f'Get "{url}": {e}')


async def run_tcp(action: TCPSocketAction, pod_ip: str, timeout_seconds: float) -> Outcome:
    host = action.host or pod_ip
    addr = _join_host(host, action.port)
    try:
        async with asyncio.timeout(timeout_seconds):
            _, writer = await asyncio.open_connection(host, action.port)
    except TimeoutError:
        return Outcome(ProbeResult.FAILURE, f"dial tcp {addr}: i/o timeout")
    except OSError as e:
        return Outcome(ProbeResult.FAILURE, f"dial tcp {addr}: {e.strerror or e}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Outcome(ProbeResult.SUCCESS)


async def run_grpc(action: GRPCAction, pod_ip: str, timeout_seconds: float) -> Outcome:
    return await grpc_health.check(pod_ip, action.port, action.service, timeout_seconds, USER_AGENT)
