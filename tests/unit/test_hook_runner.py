"""Lifecycle hooks: the pure helpers, the runner (exec through a fake executor, httpGet against a
real aiohttp server on 127.0.0.1, sleep on a FakeClock), the kill path with preStop and the
postStart path of the pod worker on the simulated backend."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from hook_fakes import EXEC, ExecBackend, NoExecBackend, started
from hypothesis import given
from hypothesis import strategies as st
from pod_fakes import FakeRecorder

from common.clock import FakeClock
from provider.pods.hooks import (
    HTTP_USER_AGENT,
    POST_START,
    PRE_STOP,
    HookError,
    HookRunner,
    container_spec,
    failure_message,
    hook_handler,
    http_request,
    pre_stop_runs,
    resolve_port,
    run_unless,
    run_within,
    sim_hook_failure,
    stop_grace,
)
from provider.podspec import MIN_GRACE_SECONDS, termination_grace_seconds
from sandbox.backend import (
    BackendCapabilities,
    ContainerNotRunningError,
    ExecResult,
    ExecTimeoutError,
)

POD = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1", "annotations": {}}, "spec": {}}
C = {"name": "app", "image": "x", "ports": [{"name": "web", "containerPort": 8080}]}


# -- pure helpers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grace", "elapsed", "want"),
    [
        (30, 0.0, 30),
        (30, 0.99, 30),  # whole seconds only, as kubelet's int64 arithmetic
        (30, 1.0, 29),
        (30, 27.5, 3),
        (30, 28.0, 2),
        (30, 29.9, 2),  # never less than kubelet's minimum
        (30, 30.0, 2),
        (30, 100.0, 2),
        (5, 3.2, 2),
        (1, 0.0, 2),
        (0, 0.0, 2),
    ],
)
def test_stop_grace_table(grace: float, elapsed: float, want: float) -> None:
    assert stop_grace(grace, elapsed) == want


@given(st.integers(0, 3600), st.floats(0, 7200, allow_nan=False))
def test_stop_grace_properties(grace: int, elapsed: float) -> None:
    left = stop_grace(grace, elapsed)
    assert left >= MIN_GRACE_SECONDS
    assert left <= max(grace, MIN_GRACE_SECONDS)
    assert left == max(grace - int(elapsed), MIN_GRACE_SECONDS)
    assert stop_grace(grace, elapsed + 1) <= left  # more time in the hook never leaves more


@given(st.integers(0, 3600), st.floats(0, 3600, allow_nan=False), st.floats(0, 3600, allow_nan=False))
def test_stop_grace_monotone(grace: int, a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert stop_grace(grace, hi) <= stop_grace(grace, lo)


def test_pre_stop_runs_only_with_a_grace_period() -> None:
    assert pre_stop_runs(1) and pre_stop_runs(30)
    assert not pre_stop_runs(0) and not pre_stop_runs(-1)


def test_termination_grace_seconds() -> None:
    assert termination_grace_seconds({"metadata": {}, "spec": {}}) == MIN_GRACE_SECONDS
    assert termination_grace_seconds({"metadata": {}, "spec": {"terminationGracePeriodSeconds": 7}}) == 7
    pod = {"metadata": {"deletionGracePeriodSeconds": 3}, "spec": {"terminationGracePeriodSeconds": 7}}
    assert termination_grace_seconds(pod) == 3


def test_container_spec_and_handler() -> None:
    pod = {
        "spec": {
            "initContainers": [
                {
                    "name": "side",
                    "restartPolicy": "Always",
                    "lifecycle": {"preStop": {"sleep": {"seconds": 1}}},
                }
            ],
            "containers": [{"name": "app", "lifecycle": {"postStart": {"exec": {"command": ["true"]}}}}],
        }
    }
    assert hook_handler(container_spec(pod, "app"), POST_START) == {"exec": {"command": ["true"]}}
    assert hook_handler(container_spec(pod, "app"), PRE_STOP) is None
    assert hook_handler(container_spec(pod, "side"), PRE_STOP) == {"sleep": {"seconds": 1}}
    assert container_spec(pod, "nope") is None and hook_handler(None, PRE_STOP) is None


def test_resolve_port() -> None:
    assert resolve_port(80, C) == 80
    assert resolve_port("web", C) == 8080
    assert resolve_port("9090", C) == 9090  # kubelet's last try: a number written as a string
    with pytest.raises(HookError, match='parsing "nope"'):
        resolve_port("nope", C)
    for bad in (0, 65536, -1):
        with pytest.raises(HookError, match="invalid port number"):
            resolve_port(bad, C)
    with pytest.raises(HookError):
        resolve_port(None, C)


def test_http_request_defaults_and_headers() -> None:
    url, headers = http_request({"port": "web", "path": "healthz?x=1"}, C, "10.0.0.7")
    assert url == "http://10.0.0.7:8080/healthz?x=1"
    assert ("User-Agent", HTTP_USER_AGENT) in headers and ("Accept", "*/*") in headers
    url, headers = http_request(
        {
            "port": 443,
            "scheme": "HTTPS",
            "host": "fd00::1",
            "path": "/a",
            "httpHeaders": [{"name": "X-Token", "value": "t"}, {"name": "user-agent", "value": "me"}],
        },
        C,
        "10.0.0.7",
    )
    assert url == "https://[fd00::1]:443/a"
    assert ("X-Token", "t") in headers and ("user-agent", "me") in headers
    assert all(n != "User-Agent" for n, _ in headers)
    _, headers = http_request({"port": 1, "httpHeaders": [{"name": "Accept", "value": ""}]}, C, "h")
    assert all(n.lower() != "accept" for n, _ in headers)  # an empty Accept removes the header


def test_failure_messages_are_kubelets() -> None:
    msg = failure_message(
        "exec", {"exec": {"command": ["sh", "-c", "exit 3"]}}, "app", POD, "boom", 'out\n"q"'
    )
    assert msg == (
        'Exec lifecycle hook ([sh -c exit 3]) for Container "app" in Pod "p_ns(u1)" failed - error: boom, '
        'message: "out\\n\\"q\\""'
    )
    msg = failure_message("httpGet", {"httpGet": {"path": "/x"}}, "app", POD, "e")
    assert msg == 'HTTP lifecycle hook (/x) for Container "app" in Pod "p_ns(u1)" failed - error: e'
    msg = failure_message("sleep", {"sleep": {"seconds": 4}}, "app", POD, "e")
    assert msg.startswith("Sleep lifecycle hook (4) for Container")
    assert failure_message("tcpSocket", {"tcpSocket": {"port": 1}}, "app", POD, "e").startswith(
        "Cannot run handler: invalid handler"
    )


@pytest.mark.parametrize(
    ("annotations", "want"),
    [
        ({}, None),
        ({"warmlet.io/sim-hook-poststart": "fail"}, "fail"),
        ({"warmlet.io/sim-hook-poststart": "FAIL "}, "fail"),
        ({"warmlet.io/sim-hook-poststart": "succeed"}, "succeed"),
        (
            {"warmlet.io/sim-hook-poststart": "fail", "warmlet.io/sim-hook-poststart.app": "succeed"},
            "succeed",
        ),
        ({"warmlet.io/sim-hook-poststart.other": "fail"}, None),
        ({"warmlet.io/sim-hook-prestop": "fail"}, None),  # the other hook's annotation
        ({"warmlet.io/sim-hook-poststart": "maybe"}, "invalid"),
    ],
)
def test_sim_hook_failure(annotations: dict[str, str], want: str | None) -> None:
    got = sim_hook_failure(annotations, POST_START, "app")
    if want is None or want == "succeed":
        assert got == want
    elif want == "fail":
        assert got is not None and got.startswith("simulated postStart hook failure")
    else:
        assert got is not None and got.startswith("invalid annotation")


@given(
    st.sampled_from([POST_START, PRE_STOP]),
    st.text(min_size=1, max_size=8),
    st.sampled_from(["fail", "succeed"]),
)
def test_sim_hook_container_annotation_wins(hook: str, name: str, value: str) -> None:
    key = {"postStart": "warmlet.io/sim-hook-poststart", "preStop": "warmlet.io/sim-hook-prestop"}[hook]
    other = "succeed" if value == "fail" else "fail"
    got = sim_hook_failure({key: other, f"{key}.{name}": value}, hook, name)
    assert (got == "succeed") == (value == "succeed")


# -- the runner -----------------------------------------------------------------------------------


async def test_exec_hook_success_and_failures() -> None:
    b = ExecBackend()
    r = HookRunner(b)  # type: ignore[arg-type]
    assert await r.run(POD, C, "cid", POST_START, EXEC, "", 60) is None
    assert b.calls == [("cid", ["sh", "-c", "echo hi"], 60)]

    b.answer = ExecResult(exit_code=3, stdout=b"so", stderr=b"se")
    msg = await r.run(POD, C, "cid", POST_START, EXEC, "", 60)
    assert msg == (
        'Exec lifecycle hook ([sh -c echo hi]) for Container "app" in Pod "p_ns(u1)" failed - error: '
        "command 'sh -c echo hi' exited with 3: se, message: \"sose\""
    )
    b.answer = ExecTimeoutError("t")
    msg = await r.run(POD, C, "cid", PRE_STOP, EXEC, "", 5)
    assert msg is not None and 'command timed out: "sh -c echo hi" timed out after 5s' in msg
    b.answer = ContainerNotRunningError("container cid is not running")
    msg = await r.run(POD, C, "cid", PRE_STOP, EXEC, "", 5)
    assert msg is not None and "error: container cid is not running" in msg

    msg = await HookRunner(NoExecBackend()).run(POD, C, "cid", POST_START, EXEC, "", 5)  # type: ignore[arg-type]
    assert msg is not None and "not supported" in msg
    msg = await r.run(POD, C, "cid", POST_START, {"tcpSocket": {"port": 80}}, "", 5)
    assert msg is not None and msg.startswith("Cannot run handler")


@pytest.fixture
async def http_server() -> AsyncIterator[tuple[int, list[web.Request]]]:
    seen: list[web.Request] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request)
        status = 500 if request.path == "/error" else 200
        return web.Response(status=status, text="x" * 100)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port, seen
    finally:
        await runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_http_hook_against_a_real_server(http_server: tuple[int, list[web.Request]]) -> None:
    port, seen = http_server
    r = HookRunner(NoExecBackend())  # type: ignore[arg-type]
    container = {"name": "app", "ports": [{"name": "web", "containerPort": port}]}
    handler = {
        "httpGet": {"port": "web", "path": "/hook?a=b", "httpHeaders": [{"name": "X-Id", "value": "7"}]}
    }
    assert await r.run(POD, container, "cid", POST_START, handler, "127.0.0.1", 10) is None
    (req,) = seen
    assert req.path == "/hook" and req.query_string == "a=b"
    assert req.headers["X-Id"] == "7" and req.headers["User-Agent"] == HTTP_USER_AGENT
    # any HTTP answer is a success for a lifecycle hook (kubelet does not check the status)
    assert (
        await r.run(
            POD, container, "cid", PRE_STOP, {"httpGet": {"port": port, "path": "/error"}}, "127.0.0.1", 10
        )
        is None
    )
    # an explicit host wins over the pod IP
    handler = {"httpGet": {"port": port, "host": "127.0.0.1", "path": "/h"}}
    assert await r.run(POD, container, "cid", POST_START, handler, "192.0.2.1", 10) is None
    assert seen[-1].path == "/h"


async def test_http_hook_failures() -> None:
    r = HookRunner(NoExecBackend())  # type: ignore[arg-type]
    dead = free_port()
    msg = await r.run(POD, C, "cid", POST_START, {"httpGet": {"port": dead, "path": "/x"}}, "127.0.0.1", 5)
    head = 'HTTP lifecycle hook (/x) for Container "app" in Pod "p_ns(u1)" failed - error: '
    assert msg is not None and msg.startswith(f'{head}Get "http://127.0.0.1:{dead}/x": ')
    msg = await r.run(POD, C, "cid", POST_START, {"httpGet": {"port": "nope"}}, "127.0.0.1", 5)
    assert msg is not None and 'parsing "nope"' in msg
    msg = await r.run(POD, C, "cid", POST_START, {"httpGet": {"port": 80}}, "", 5)
    assert msg is not None and "failed to find networking container" in msg


async def test_https_to_a_plain_http_server_falls_back_with_an_event(
    http_server: tuple[int, list[web.Request]],
) -> None:
    port, seen = http_server
    rec = FakeRecorder()
    r = HookRunner(NoExecBackend(), rec)  # type: ignore[arg-type]
    handler = {
        "httpGet": {
            "port": port,
            "scheme": "HTTPS",
            "path": "/tls",
            "httpHeaders": [{"name": "Authorization", "value": "secret"}],
        }
    }
    assert await r.run(POD, C, "cid", POST_START, handler, "127.0.0.1", 5) is None
    assert seen[-1].path == "/tls" and "Authorization" not in seen[-1].headers
    assert rec.reasons() == ["LifecycleHTTPFallback"]


async def test_sleep_hook_waits_on_the_clock() -> None:
    clock = FakeClock()
    r = HookRunner(NoExecBackend(), clock=clock)  # type: ignore[arg-type]
    task = asyncio.create_task(r.run(POD, C, "cid", POST_START, {"sleep": {"seconds": 5}}, "", 60))
    await started(clock)
    await clock.advance(4.9)
    assert not task.done()
    await clock.advance(0.1)
    assert task.done() and task.result() is None


async def test_run_within_cuts_a_hook_short_and_leaves_no_task() -> None:
    clock = FakeClock()
    r = HookRunner(NoExecBackend(), clock=clock)  # type: ignore[arg-type]
    before = len(asyncio.all_tasks())
    job = asyncio.create_task(
        run_within(clock, 3, r.run(POD, C, "cid", PRE_STOP, {"sleep": {"seconds": 60}}, "", 3))
    )
    await started(clock, 2)
    await clock.advance(2.9)
    assert not job.done()
    await clock.advance(0.1)
    assert job.done() and job.result() == (False, None)
    assert len(asyncio.all_tasks()) == before
    finished, result = await run_within(clock, 3, asyncio.sleep(0, result="x"))
    assert (finished, result) == (True, "x")


async def test_run_unless_stops_when_asked_and_leaves_no_task() -> None:
    clock = FakeClock()
    r = HookRunner(NoExecBackend(), clock=clock)  # type: ignore[arg-type]
    stop = False
    before = len(asyncio.all_tasks())
    job = asyncio.create_task(
        run_unless(
            clock, r.run(POD, C, "cid", POST_START, {"sleep": {"seconds": 60}}, "", 60), lambda: stop, 1
        )
    )
    await started(clock, 2)
    await clock.advance(5)
    assert not job.done()
    stop = True
    await clock.advance(1)
    assert job.done() and job.result() == (False, None)
    assert len(asyncio.all_tasks()) == before
    job = asyncio.create_task(
        run_unless(
            clock, r.run(POD, C, "cid", POST_START, {"sleep": {"seconds": 2.5}}, "", 60), lambda: False, 1
        )
    )
    await started(clock, 2)
    await clock.advance(3)
    assert job.done() and job.result() == (True, None)


async def test_simulated_hooks_follow_the_annotation() -> None:
    class Sim:
        capabilities = BackendCapabilities(runs_processes=False)

    r = HookRunner(Sim())  # type: ignore[arg-type]
    pod = {**POD, "metadata": {**POD["metadata"], "annotations": {"warmlet.io/sim-hook-prestop.app": "fail"}}}
    # no network, no executor: succeed unless the annotation says otherwise
    assert await r.run(POD, C, "cid", PRE_STOP, {"httpGet": {"port": 1}}, "", 5) is None
    assert await r.run(POD, C, "cid", PRE_STOP, EXEC, "", 5) is None
    for handler in ({"httpGet": {"port": 1}}, EXEC, {"sleep": {"seconds": 0}}):
        msg = await r.run(pod, C, "cid", PRE_STOP, handler, "", 5)
        assert msg is not None and "simulated preStop hook failure" in msg
    assert await r.run(pod, C, "cid", POST_START, EXEC, "", 5) is None
