"""Container lifecycle hooks (kubelet's lifecycle handler runner): ``postStart`` and ``preStop``.

A hook's handler is ``exec`` (run in the container through the backend's optional
:class:`~sandbox.backend.ContainerExecutor`, kubelet's ExecSync), ``httpGet`` (host defaulting to
the pod IP, port by number or by name, scheme, path, headers; TLS not verified, any HTTP answer
is a success, as kubelet's lifecycle HTTP client) or ``sleep`` (on the injected clock). A hook
returns ``None`` when it succeeded, else kubelet's failure message (which goes into the
container's status, never into an event: the event only says ``PostStartHook failed``).

On a backend whose containers are not processes (``runs_processes`` False) hooks are simulated
with the same semantics: ``sleep`` really waits on the clock, ``exec`` goes to the backend's
ContainerExecutor when it has one, and the pod annotation ``warmlet.io/sim-hook-poststart`` /
``warmlet.io/sim-hook-prestop`` (``.<container>`` suffix: one container) set to ``fail`` makes
the hook fail (:func:`sim_hook_failure`).

The grace-period arithmetic of a stop with a preStop hook is the pure :func:`stop_grace`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import yarl

from common.clock import SYSTEM, Clock
from common.retry import sleep_or_wake
from provider.events import WARNING, EventRecorder
from provider.metrics import LIFECYCLE_HOOKS
from provider.pods.state import JSON
from provider.podspec import MIN_GRACE_SECONDS
from sandbox.backend import (
    Backend,
    BackendError,
    ContainerExecutor,
    ExecTimeoutError,
)

log = logging.getLogger(__name__)

POST_START, PRE_STOP = "postStart", "preStop"
# Kubelet runs a postStart exec/httpGet with no timeout at all (a hung hook holds the pod until it
# is deleted); warmlet bounds it so that a hung hook cannot hold the pod's worker forever.
POST_START_TIMEOUT_SECONDS = 600.0
HTTP_USER_AGENT = "kube-lifecycle/1.36"
SIM_HOOK_ANNOTATIONS = {POST_START: "warmlet.io/sim-hook-poststart", PRE_STOP: "warmlet.io/sim-hook-prestop"}
SIM_FAIL, SIM_SUCCEED = "fail", "succeed"


class HookError(Exception):
    """A hook that could not be carried out (the message is kubelet's error text)."""


# -- pure helpers --------------------------------------------------------------------------------


def stop_grace(grace_seconds: float, pre_stop_elapsed: float) -> float:
    """The grace period StopContainer gets after a preStop hook ran for ``pre_stop_elapsed``
    seconds out of ``grace_seconds`` (kubelet's killContainer): the time the hook took, in whole
    seconds, comes off the grace period, and at least MIN_GRACE_SECONDS are always left."""
    left = grace_seconds - math.floor(max(pre_stop_elapsed, 0.0))
    return max(left, MIN_GRACE_SECONDS)


def pre_stop_runs(grace_seconds: float) -> bool:
    """Kubelet runs a preStop hook only when there is a grace period to run it in."""
    return grace_seconds > 0


def pod_deleting(pod: Mapping[str, Any] | None) -> bool:
    """The pod is gone or being deleted: a postStart hook still running is abandoned (kubelet
    cancels the sync that runs it)."""
    return pod is None or bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def container_spec(pod: Mapping[str, Any], name: str) -> JSON | None:
    """The spec of the pod's container (regular, init or sidecar) called ``name``."""
    spec = pod.get("spec") or {}
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if c.get("name") == name:
                return dict(c)
    return None


def hook_handler(container: Mapping[str, Any] | None, hook: str) -> JSON | None:
    """The container's ``lifecycle.<hook>`` handler, if it has one."""
    if container is None:
        return None
    handler = (container.get("lifecycle") or {}).get(hook)
    return dict(handler) if handler else None


def handler_kind(handler: Mapping[str, Any]) -> str:
    for kind in ("exec", "httpGet", "sleep", "tcpSocket"):
        if handler.get(kind) is not None:
            return kind
    return "unknown"


def format_pod(pod: Mapping[str, Any]) -> str:
    """A pod as kubelet names it in messages: ``name_namespace(uid)``."""
    meta = pod.get("metadata") or {}
    return f"{meta.get('name')}_{meta.get('namespace')}({meta.get('uid')})"


def go_quote(s: str) -> str:
    """A string quoted as Go's ``%q`` (close enough: JSON escaping)."""
    return json.dumps(s, ensure_ascii=False)


def resolve_port(port: int | str | None, container: Mapping[str, Any]) -> int:
    """A handler's port: a number, or the name of one of the container's ports (kubelet's
    ResolveContainerPort, including its last try of a number written as a string)."""
    value: int
    if isinstance(port, int):
        value = port
    elif isinstance(port, str):
        named = [p.get("containerPort") for p in container.get("ports") or [] if p.get("name") == port]
        if named and isinstance(named[0], int):
            value = named[0]
        elif port.isdigit():
            value = int(port)
        else:
            raise HookError(f'strconv.Atoi: parsing "{port}": invalid syntax')
    else:
        raise HookError(f"intOrString had no kind: {port!r}")
    if 0 < value < 65536:
        return value
    raise HookError(f"invalid port number: {value}")


def http_request(
    http_get: Mapping[str, Any], container: Mapping[str, Any], pod_ip: str
) -> tuple[str, list[tuple[str, str]]]:
    """(URL, headers) of an httpGet handler (kubelet's NewRequestForHTTPGetAction)."""
    scheme = str(http_get.get("scheme") or "http").lower()
    host = str(http_get.get("host") or pod_ip)
    port = resolve_port(http_get.get("port"), container)
    path = str(http_get.get("path") or "")
    if not path.startswith("/"):
        path = "/" + path
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    headers = [(str(h.get("name", "")), str(h.get("value", ""))) for h in http_get.get("httpHeaders") or []]
    names = {n.lower() for n, _ in headers}
    if "user-agent" not in names:
        headers.append(("User-Agent", HTTP_USER_AGENT))
    if "accept" not in names:
        headers.append(("Accept", "*/*"))
    headers = [(n, v) for n, v in headers if not (n.lower() == "accept" and v == "")]
    return f"{scheme}://{hostport}{path}", headers


def failure_message(
    kind: str,
    handler: Mapping[str, Any],
    container: str,
    pod: Mapping[str, Any],
    error: str,
    output: str = "",
) -> str:
    """Kubelet's message for a failed hook (it goes into the container's status)."""
    where = f'for Container "{container}" in Pod "{format_pod(pod)}" failed - error: {error}'
    if kind == "exec":
        cmd = " ".join(str(a) for a in (handler.get("exec") or {}).get("command") or [])
        return f"Exec lifecycle hook ([{cmd}]) {where}, message: {go_quote(output)}"
    if kind == "httpGet":
        return f"HTTP lifecycle hook ({(handler.get('httpGet') or {}).get('path', '')}) {where}"
    if kind == "sleep":
        return f"Sleep lifecycle hook ({(handler.get('sleep') or {}).get('seconds', 0)}) {where}"
    return f"Cannot run handler: invalid handler: {json.dumps(dict(handler), sort_keys=True)}"


def sim_hook_failure(annotations: Mapping[str, str], hook: str, container: str) -> str | None:
    """What the simulated runtime's hook annotation says: None (unset: the hook succeeds unless its
    handler fails), SIM_SUCCEED, or an error text (``fail``, or an invalid value: never ignored)."""
    key = SIM_HOOK_ANNOTATIONS[hook]
    value = annotations.get(f"{key}.{container}", annotations.get(key))
    if value is None:
        return None
    v = value.strip().lower()
    if v == SIM_SUCCEED:
        return SIM_SUCCEED
    if v == SIM_FAIL:
        return f"simulated {hook} hook failure ({key})"
    return f"invalid annotation {key}={value!r}: expected {SIM_FAIL!r} or {SIM_SUCCEED!r}"


# -- the runner -----------------------------------------------------------------------------------


class HookRunner:
    """Runs one container's hook to completion; returns None on success, else kubelet's message."""

    def __init__(
        self,
        backend: Backend,
        events: EventRecorder | None = None,
        clock: Clock = SYSTEM,
        session: Callable[[], aiohttp.ClientSession] | None = None,
    ) -> None:
        self.backend = backend
        self.events = events
        self.clock = clock
        self._session = session or (lambda: aiohttp.ClientSession())

    async def run(
        self,
        pod: JSON,
        container: Mapping[str, Any],
        container_id: str,
        hook: str,
        handler: Mapping[str, Any],
        pod_ip: str,
        timeout_seconds: float,
    ) -> str | None:
        kind = handler_kind(handler)
        name = str(container.get("name", ""))
        try:
            error, output = await self._run(
                pod, container, container_id, hook, kind, handler, pod_ip, timeout_seconds
            )
        except asyncio.CancelledError:
            LIFECYCLE_HOOKS.labels(hook=hook, handler=kind, result="cancelled").inc()
            raise
        result = "success" if error is None else "failure"
        LIFECYCLE_HOOKS.labels(hook=hook, handler=kind, result=result).inc()
        if error is None:
            return None
        log.info(
            "lifecycle hook failed pod=%s container=%s hook=%s handler=%s error=%s",
            format_pod(pod),
            name,
            hook,
            kind,
            error,
        )
        return failure_message(kind, handler, name, pod, error, output)

    async def _run(
        self,
        pod: JSON,
        container: Mapping[str, Any],
        container_id: str,
        hook: str,
        kind: str,
        handler: Mapping[str, Any],
        pod_ip: str,
        limit: float,
    ) -> tuple[str | None, str]:
        simulated = not self.backend.capabilities.runs_processes
        sim = None
        if simulated:
            annotations = (pod.get("metadata") or {}).get("annotations") or {}
            sim = sim_hook_failure(annotations, hook, str(container.get("name", "")))
        if kind == "sleep":
            await self.clock.sleep(float((handler.get("sleep") or {}).get("seconds") or 0))
            return (sim if sim != SIM_SUCCEED else None), ""
        if kind not in ("exec", "httpGet"):
            return "invalid handler", ""
        if sim is not None:
            return (sim if sim != SIM_SUCCEED else None), ""
        if kind == "exec":
            cmd = [str(a) for a in (handler.get("exec") or {}).get("command") or []]
            if isinstance(self.backend, ContainerExecutor):
                return await self._exec(self.backend, container_id, cmd, limit)
            if simulated:
                return None, ""
            return "exec lifecycle hooks are not supported by this container runtime", ""
        if simulated:
            return None, ""
        try:
            url, headers = http_request(handler.get("httpGet") or {}, container, pod_ip)
        except HookError as e:
            return str(e), ""
        if not (handler.get("httpGet") or {}).get("host") and not pod_ip:
            return "failed to find networking container: the pod has no IP", ""
        return await self._http(pod, url, headers, limit), ""

    @staticmethod
    async def _exec(
        executor: ContainerExecutor, container_id: str, cmd: list[str], limit: float
    ) -> tuple[str | None, str]:
        joined = " ".join(cmd)
        try:
            res = await executor.exec_sync(container_id, cmd, limit)
        except ExecTimeoutError:
            return f'command timed out: "{joined}" timed out after {limit:g}s', ""
        except BackendError as e:
            return e.message, ""
        output = (res.stdout + res.stderr).decode(errors="replace")
        if res.exit_code != 0:
            stderr = res.stderr.decode(errors="replace")
            return f"command '{joined}' exited with {res.exit_code}: {stderr}", output
        return None, output

    async def _http(self, pod: JSON, url: str, headers: list[tuple[str, str]], limit: float) -> str | None:
        error = await self._get(url, headers, limit)
        if error is None or not url.startswith("https://") or not error[1]:
            return None if error is None else error[0]
        # TLS to a server that speaks plain HTTP: kubelet retries with HTTP (without any
        # Authorization header) and reports the fallback with an event when it worked.
        plain = "http://" + url[len("https://") :]
        retry = await self._get(plain, [(n, v) for n, v in headers if n.lower() != "authorization"], limit)
        if retry is not None:
            return error[0]
        if self.events is not None:
            host = yarl.URL(url, encoded=True).raw_authority
            self.events.record(
                pod,
                WARNING,
                "LifecycleHTTPFallback",
                f"request to HTTPS lifecycle hook {host} got HTTP response, retry with HTTP succeeded",
            )
        return None

    async def _get(self, url: str, headers: list[tuple[str, str]], limit: float) -> tuple[str, bool] | None:
        """None when the server answered (any status: kubelet only fails a hook it could not
        reach), else (Go-like error text, whether it was a TLS handshake failure)."""
        try:
            async with (
                self._session() as s,
                s.get(
                    yarl.URL(url, encoded=False),
                    headers=headers,
                    ssl=False,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=limit),
                ) as r,
            ):
                await r.content.read(10 * 1024)
                return None
        except TimeoutError:
            return (
                f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)',
                False,
            )
        except aiohttp.ClientSSLError as e:
            return f'Get "{url}": {e}', True
        except (aiohttp.ClientError, OSError, ValueError) as e:
            return f'Get "{url}": {e}', False


async def run_unless(clock: Clock, work: Any, stop: Callable[[], bool], every: float) -> tuple[bool, Any]:
    """Run the coroutine ``work`` to completion unless ``stop()`` turns true (checked every
    ``every`` seconds on ``clock``): (finished, its result). Stopped, it is cancelled and awaited."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            finished, _ = await run_within(clock, every, asyncio.shield(task))
            if not finished and stop():
                break
    finally:
        await _settle(task)
    return _outcome(task)


async def run_within(clock: Clock, seconds: float, work: Any) -> tuple[bool, Any]:
    """Run the coroutine ``work`` for at most ``seconds`` on ``clock``: (finished, its result).
    Cut short, it is cancelled and awaited (no task outlives the call)."""
    done = asyncio.Event()
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda _: done.set())
    try:
        await sleep_or_wake(clock, seconds, done)
    finally:
        await _settle(task)
    return _outcome(task)


async def _settle(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` unless it is done, and wait until it is (no task outlives its caller)."""
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _outcome(task: asyncio.Future[Any]) -> tuple[bool, Any]:
    """(finished, result) of a settled task: (False, None) when it was cut short."""
    if task.cancelled():
        return False, None
    return True, task.result()
