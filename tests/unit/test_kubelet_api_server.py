"""The kubelet API app over aiohttp's test client, against a SimulatedBackend (no services)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from common.clock import FakeClock
from common.crilog import CRILogWriter, encode_line
from provider.kubelet_api import StaticPods, build_app
from provider.kubelet_api.auth import AlwaysAllow, Attributes, AuthError, Decision, UserInfo
from provider.kubelet_api.container_logs import FOLLOW_POLL
from sandbox.backend import ContainerRuntimeState, ContainerSpec, ContainerState, PodSandboxSpec, PullPolicy
from sandbox.simulated import SimulatedBackend

pytestmark = pytest.mark.unit

NODE = "vnode"


class FakeAuthn:
    """Bearer tokens from a dict; 'boom' raises like an unreachable TokenReview."""

    def __init__(self, users: Mapping[str, UserInfo]) -> None:
        self.users = users

    async def authenticate(
        self, peercert: Mapping[str, Any] | None, authorization: str | None
    ) -> UserInfo | None:
        token = (authorization or "").removeprefix("Bearer ")
        if token == "boom":
            raise AuthError("apiserver down")
        return self.users.get(token)


class FakeAuthz:
    """Allows (user, subresource) pairs; user 'err' makes the authorizer fail."""

    def __init__(self, allowed: set[tuple[str, str]]) -> None:
        self.allowed = allowed
        self.seen: list[Attributes] = []

    async def authorize(self, attrs: Attributes) -> Decision:
        self.seen.append(attrs)
        if attrs.user.name == "err":
            raise AuthError("webhook down")
        return Decision((attrs.user.name, attrs.subresource) in self.allowed)


ADMIN = {"Authorization": "Bearer admin"}


def pod_json(
    name: str = "p1", uid: str = "u1", containers: tuple[str, ...] = ("main", "side")
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": uid},
        "spec": {"nodeName": NODE, "containers": [{"name": c, "image": "busybox"} for c in containers]},
        "status": {"phase": "Running"},
    }


def append_raw(path: str, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def replace_with_symlink(path: str, target: Path) -> None:
    p = Path(path)
    p.unlink()
    p.symlink_to(target)


def spec(uid: str = "u1", name: str = "p1", **ann: str) -> PodSandboxSpec:
    return PodSandboxSpec(
        uid=uid, namespace="default", name=name, workload_key="k", hostname=name, annotations=ann
    )


class Env:
    def __init__(
        self, backend: SimulatedBackend, pods: StaticPods, client: TestClient, authz: FakeAuthz
    ) -> None:
        self.backend, self.pods, self.client, self.authz = backend, pods, client, authz

    async def start(
        self,
        uid: str = "u1",
        name: str = "p1",
        containers: tuple[str, ...] = ("main",),
        attempt: int = 0,
        ann: dict[str, str] | None = None,
    ) -> list[str]:
        s = spec(uid, name, **(ann or {}))
        sb = await self.backend.acquire_sandbox(s)
        ids = []
        for c in containers:
            await self.backend.ensure_image("busybox", PullPolicy.IF_NOT_PRESENT)
            cid = await self.backend.create_container(sb, s, ContainerSpec(name=c, image="busybox"), attempt)
            await self.backend.start_container(cid)
            ids.append(cid)
        return ids

    def log(
        self, container: str = "main", attempt: int = 0, uid: str = "u1", name: str = "p1"
    ) -> CRILogWriter:
        return CRILogWriter(self.backend.log_path("default", name, uid, container, attempt))

    async def get(self, path: str, headers: Mapping[str, str] = ADMIN, **params: str) -> tuple[int, bytes]:
        async with self.client.get(path, params=params, headers=headers) as r:
            return r.status, await r.read()


@contextlib.asynccontextmanager
async def make_env(tmp_path: Path, clock: FakeClock | None = None) -> AsyncIterator[Env]:
    backend = SimulatedBackend(tmp_path / "pods")
    await backend.start()
    pods = StaticPods([pod_json()])
    authz = FakeAuthz({("admin", s) for s in ("proxy", "stats", "metrics", "log", "pods", "healthz")})
    users = {
        "admin": UserInfo("admin"),
        "viewer": UserInfo("viewer"),
        "err": UserInfo("err"),
        "proxyonly": UserInfo("proxyonly"),
    }
    authz.allowed.add(("proxyonly", "proxy"))
    app = build_app(
        NODE,
        backend,
        pods,
        FakeAuthn(users),
        authz,
        log_limit_bytes_max=1 << 20,
        **({} if clock is None else {"clock": clock}),
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Env(backend, pods, client, authz)
    finally:
        await client.close()
        await backend.close()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with make_env(tmp_path) as e:
        yield e


# -- containerLogs -------------------------------------------------------------------------


async def test_logs_plain_and_options(env: Env) -> None:
    await env.start(ann={"warmlet.io/sim-log": "one\ntwo"})
    env.log().write(b"err\n", "stderr")
    status, body = await env.get("/containerLogs/default/p1/main")
    assert status == 200
    assert body == b"simulated container main started\none\ntwo\nerr\n"
    assert (await env.get("/containerLogs/default/p1/main", tailLines="2"))[1] == b"two\nerr\n"
    assert (await env.get("/containerLogs/default/p1/main", tailLines="0"))[1] == b""
    assert (await env.get("/containerLogs/default/p1/main", tail="1"))[1] == b"err\n"
    assert (await env.get("/containerLogs/default/p1/main", stream="Stderr"))[1] == b"err\n"
    assert (await env.get("/containerLogs/default/p1/main", stream="Stdout"))[1].count(b"\n") == 3
    assert (await env.get("/containerLogs/default/p1/main", limitBytes="5"))[1] == b"simul"
    assert (await env.get("/containerLogs/default/p1/main", sinceSeconds="60"))[1].count(b"\n") == 4
    assert (await env.get("/containerLogs/default/p1/main", sinceTime="2999-01-01T00:00:00Z"))[1] == b""
    status, body = await env.get("/containerLogs/default/p1/main", timestamps="true")
    first = body.split(b"\n")[0]
    ts, _, rest = first.partition(b" ")
    assert rest == b"simulated container main started" and ts.endswith(b"Z") and b"T" in ts


async def test_logs_sincetime_filters_old_lines(env: Env) -> None:
    await env.start()
    w = env.log()
    append_raw(
        w.path,
        encode_line(1_000_000_000, "stdout", b"old")
        + encode_line(4_000_000_000_000_000_000, "stdout", b"new"),
    )
    _, body = await env.get("/containerLogs/default/p1/main", sinceTime="2000-01-01T00:00:00Z")
    assert body.endswith(b"new\n") and b"old" not in body


async def test_logs_errors(env: Env) -> None:
    await env.start()
    assert await env.get("/containerLogs/default/nope/main") == (404, b'pod "nope" does not exist')
    assert await env.get("/containerLogs/other/p1/main") == (404, b'pod "p1" does not exist')
    assert await env.get("/containerLogs/default/p1/zzz") == (404, b'container "zzz" not found in pod "p1"')
    status, body = await env.get("/containerLogs/default/p1/main", previous="true")
    assert (status, body) == (400, b'previous terminated container "main" in pod "p1" not found')
    status, body = await env.get("/containerLogs/default/p1/side")
    assert status == 400 and body == b'container "side" in pod "p1" is waiting to start - no logs yet'
    assert await env.get(
        "/containerLogs/default/p1/main", sinceSeconds="1", sinceTime="2020-01-01T00:00:00Z"
    ) == (
        422,
        b'{"message": "Invalid request."}',
    )
    assert (await env.get("/containerLogs/default/p1/main", tailLines="-1"))[0] == 422
    assert (await env.get("/containerLogs/default/p1/main", limitBytes="0"))[0] == 422
    assert (await env.get("/containerLogs/default/p1/main", tailLines="many")) == (
        400,
        b'{"message": "Unable to decode query."}',
    )


async def test_logs_previous_after_restart(env: Env) -> None:
    ann = {
        "warmlet.io/sim-run-seconds": "0",
        "warmlet.io/sim-exit-code": "1",
        "warmlet.io/sim-log": "attempt",
    }
    await env.start(ann=ann)
    for _ in range(100):  # sim-run-seconds 0: it exits at the loop's next turn
        if [s.state for s in await env.backend.pod_containers("u1")] == [ContainerState.EXITED]:
            break
        await asyncio.sleep(0)
    assert [s.state for s in await env.backend.pod_containers("u1")] == [ContainerState.EXITED]
    env.log(attempt=0).write("first run\n")
    await env.start(attempt=1, ann=ann)
    env.log(attempt=1).write("second run\n")
    assert (await env.get("/containerLogs/default/p1/main", previous="true"))[1].endswith(b"first run\n")
    assert (await env.get("/containerLogs/default/p1/main"))[1].endswith(b"second run\n")


async def test_follow_streams_until_container_exits(env: Env) -> None:
    [cid] = await env.start()
    w = env.log()
    async with env.client.get(
        "/containerLogs/default/p1/main", params={"follow": "true"}, headers=ADMIN
    ) as r:
        assert r.status == 200
        assert r.headers.get("Transfer-Encoding") == "chunked"
        first = await r.content.readline()
        assert first == b"simulated container main started\n"
        for i in range(3):
            w.write(f"line {i}\n")
            assert await asyncio.wait_for(r.content.readline(), 3) == f"line {i}\n".encode()
        w.write("last words\n")
        await env.backend.stop_container(cid, 0)
        rest = await asyncio.wait_for(r.content.read(), 3)
        assert rest == b"last words\n"


async def test_follow_with_limit_ends_at_limit(env: Env) -> None:
    await env.start()
    status, body = await asyncio.wait_for(
        env.get("/containerLogs/default/p1/main", follow="true", limitBytes="9"), 3
    )
    assert (status, body) == (200, b"simulated")


async def test_follow_client_disconnect_releases_handler(tmp_path: Path) -> None:
    clock = FakeClock()
    async with make_env(tmp_path, clock) as env:
        await env.start()
        before = len(asyncio.all_tasks())
        for _ in range(3):
            async with env.client.get(
                "/containerLogs/default/p1/main", params={"follow": "1"}, headers=ADMIN
            ) as r:
                await r.content.readline()
        for _ in range(200):  # each handler notices its client left at its next poll (on the clock)
            if len(asyncio.all_tasks()) <= before + 1:
                break
            await clock.advance(FOLLOW_POLL.cap)
        assert len(asyncio.all_tasks()) <= before + 1


async def test_log_path_outside_log_dir_is_refused(env: Env, tmp_path: Path) -> None:
    await env.start()
    secret = tmp_path / "secret.log"
    secret.write_bytes(encode_line(1, "stdout", b"secret"))
    real = env.backend.pod_containers

    async def evil(uid: str) -> list[ContainerRuntimeState]:
        return [dataclasses.replace(s, log_path=str(secret)) for s in await real(uid)]

    env.backend.pod_containers = evil  # type: ignore[method-assign,assignment]
    status, body = await env.get("/containerLogs/default/p1/main")
    assert status == 400 and b"secret" not in body
    replace_with_symlink(env.backend.log_path("default", "p1", "u1", "main", 0), secret)

    async def real_path(uid: str) -> list[ContainerRuntimeState]:
        return await real(uid)

    env.backend.pod_containers = real_path  # type: ignore[method-assign,assignment]
    status, body = await env.get("/containerLogs/default/p1/main")
    assert status == 400 and b"secret" not in body


async def test_partial_lines_are_joined(env: Env) -> None:
    await env.start()
    w = env.log()
    append_raw(w.path, encode_line(5, "stdout", b"hel", partial=True) + encode_line(6, "stdout", b"lo"))
    assert (await env.get("/containerLogs/default/p1/main", tailLines="1"))[1] == b"hello\n"


# -- stats, metrics, pods, healthz, unsupported --------------------------------------------


async def test_stats_summary(env: Env) -> None:
    await env.start(containers=("main", "side"))
    status, body = await env.get("/stats/summary")
    assert status == 200
    s = json.loads(body)
    assert s["node"]["nodeName"] == NODE
    [p] = s["pods"]
    assert p["podRef"] == {"name": "p1", "namespace": "default", "uid": "u1"}
    assert [c["name"] for c in p["containers"]] == ["main", "side"]
    assert p["containers"][0]["memory"]["workingSetBytes"] == 8 * 1024 * 1024
    status, body = await env.get("/stats/summary", only_cpu_and_memory="true")
    assert "fs" not in json.loads(body)["node"]


async def test_resource_metrics_endpoint(env: Env) -> None:
    await env.start(containers=("main", "side"))
    async with env.client.get("/metrics/resource", headers=ADMIN) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await r.text()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert {s.labels["container"] for s in fams["container_cpu_usage_seconds"].samples} == {"main", "side"}
    assert fams["pod_memory_working_set_bytes"].samples[0].value == 16 * 1024 * 1024
    assert fams["resource_scrape_error"].samples[0].value == 0


async def test_resource_metrics_on_stats_failure(env: Env) -> None:
    async def broken() -> Any:
        raise RuntimeError("runtime down")

    env.backend.stats = broken  # type: ignore[method-assign,assignment]
    status, body = await env.get("/metrics/resource")
    assert status == 200 and body.endswith(b"resource_scrape_error 1\n")


async def test_metrics_pods_healthz(env: Env) -> None:
    await env.get("/healthz")
    status, body = await env.get("/metrics")
    assert status == 200 and b"warmlet_kubelet_api_requests_total" in body
    assert await env.get("/healthz") == (200, b"ok")
    assert await env.get("/healthz/ping") == (200, b"ok")
    status, body = await env.get("/pods")
    doc = json.loads(body)
    assert doc["kind"] == "PodList" and [p["metadata"]["name"] for p in doc["items"]] == ["p1"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/exec/default/p1/main?command=ls&output=1"),
        ("POST", "/exec/default/p1/u1/main?command=ls&output=1"),
        ("POST", "/attach/default/p1/main?input=1"),
        ("GET", "/portForward/default/p1"),
        ("POST", "/portForward/default/p1/u1"),
        ("POST", "/run/default/p1/main?cmd=ls"),
    ],
)
async def test_streaming_endpoints_on_simulated_backend(env: Env, method: str, path: str) -> None:
    """The simulated backend runs no processes: a 501 Status that says so (the pod exists)."""
    headers = {**ADMIN, "Connection": "Upgrade", "Upgrade": "SPDY/3.1"}
    async with env.client.request(method, path, headers=headers) as r:
        assert r.status == 501
        doc = await r.json()
    assert doc["kind"] == "Status" and doc["code"] == 501 and doc["reason"] == "NotImplemented"
    assert "runs no processes" in doc["message"] and f'node "{NODE}"' in doc["message"]


@pytest.mark.parametrize(
    ("method", "path", "status", "body"),
    [
        (
            "GET",
            "/exec/default/p1/main?command=ls",
            400,
            b"you must specify at least 1 of stdin, stdout, stderr",
        ),
        ("GET", "/exec/default/nope/main?output=1", 404, b"pod does not exist"),
        ("POST", "/attach/default/nope/main?input=1", 404, b"pod does not exist"),
        ("GET", "/portForward/default/nope", 404, b"pod does not exist"),
        ("GET", "/portForward/default/p1/other-uid", 404, b"pod not found"),
        ("POST", "/run/default/nope/main?cmd=ls", 404, b"pod does not exist"),
        ("GET", "/run/default/p1/main?cmd=ls", 405, None),
        ("PUT", "/exec/default/p1/main?output=1", 405, None),
    ],
)
async def test_streaming_endpoints_refusals(
    env: Env, method: str, path: str, status: int, body: bytes | None
) -> None:
    async with env.client.request(method, path, headers=ADMIN) as r:
        assert r.status == status
        if body is not None:
            assert await r.read() == body


# -- auth ----------------------------------------------------------------------------------


async def test_auth(env: Env) -> None:
    await env.start()
    assert await env.get("/stats/summary", headers={}) == (401, b"Unauthorized")
    assert await env.get("/stats/summary", headers={"Authorization": "Bearer unknown"}) == (
        401,
        b"Unauthorized",
    )
    assert await env.get("/stats/summary", headers={"Authorization": "Bearer boom"}) == (401, b"Unauthorized")
    viewer = {"Authorization": "Bearer viewer"}
    assert await env.get("/stats/summary", headers=viewer) == (
        403,
        b"Forbidden (user=viewer, verb=get, resource=nodes, subresource(s)=[stats])\n",
    )
    assert (await env.get("/containerLogs/default/p1/main", headers=viewer))[1].startswith(
        b"Forbidden (user=viewer, verb=get, resource=nodes, subresource(s)=[proxy])"
    )
    status, body = await env.get("/stats/summary", headers={"Authorization": "Bearer err"})
    assert status == 500 and body.startswith(b"Authorization error (user=err, verb=get")
    # Fine-grained authz falls back to nodes/proxy for /pods and /healthz.
    proxy = {"Authorization": "Bearer proxyonly"}
    assert (await env.get("/pods", headers=proxy))[0] == 200
    assert (await env.get("/healthz", headers=proxy))[0] == 200
    assert (await env.get("/metrics/resource", headers=proxy))[0] == 403
    seen = [(a.subresource, a.verb, a.name) for a in env.authz.seen if a.user.name == "proxyonly"]
    assert ("pods", "get", NODE) in seen and ("proxy", "get", NODE) in seen


async def test_always_allow_still_needs_authentication(tmp_path: Path) -> None:
    backend = SimulatedBackend(tmp_path)
    app = build_app(NODE, backend, lambda: [pod_json()], FakeAuthn({"a": UserInfo("a")}), AlwaysAllow())
    async with TestClient(TestServer(app)) as client:
        async with client.get("/pods") as r:
            assert r.status == 401
        async with client.get("/pods", headers={"Authorization": "Bearer a"}) as r:
            assert r.status == 200 and len((await r.json())["items"]) == 1


# -- fuzzing the query string against a live app --------------------------------------------


class _LoopThread:
    """An event loop in a thread hosting the app, so hypothesis' sync tests can call it."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client: TestClient = self.call(self._setup(tmp))

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _setup(self, tmp: Path) -> TestClient:
        backend = SimulatedBackend(tmp)
        s = spec(**{"warmlet.io/sim-log": "a\nb\nc"})
        sb = await backend.acquire_sandbox(s)
        cid = await backend.create_container(sb, s, ContainerSpec(name="main", image="busybox"), 0)
        await backend.start_container(cid)
        authz = FakeAuthz({("admin", "proxy")})
        app = build_app(
            NODE, backend, StaticPods([pod_json()]), FakeAuthn({"admin": UserInfo("admin")}), authz
        )
        client = TestClient(TestServer(app))
        await client.start_server()
        return client

    async def fetch(self, query: list[tuple[str, str]]) -> tuple[int, bytes]:
        async with self.client.get("/containerLogs/default/p1/main", params=query, headers=ADMIN) as r:
            return r.status, await r.read()

    def close(self) -> None:
        self.call(self.client.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Any:
    lt = _LoopThread(tmp_path_factory.mktemp("fuzz"))
    yield lt
    lt.close()


PARAMS = [
    "follow",
    "previous",
    "timestamps",
    "tailLines",
    "tail",
    "limitBytes",
    "sinceSeconds",
    "sinceTime",
    "stream",
]
VALUES = st.one_of(
    st.sampled_from(
        [
            "",
            "0",
            "1",
            "-1",
            "true",
            "false",
            "All",
            "Stdout",
            "Stderr",
            "all",
            "2020-01-01T00:00:00Z",
            "9223372036854775807",
            "9223372036854775808",
            "1e9",
        ]
    ),
    st.text(max_size=20),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.lists(st.tuples(st.sampled_from(PARAMS), VALUES), max_size=5))
def test_fuzz_container_logs_query(live: _LoopThread, query: list[tuple[str, str]]) -> None:
    # Never follow forever in the fuzzer: the container runs until stopped.
    query = [(k, v) for k, v in query if k != "follow"]
    status, body = live.call(live.fetch(query))
    assert status in (200, 400, 422), (status, body)
    if status == 200:
        assert len(body) <= len(b"simulated container main started\na\nb\nc\n") + 4 * 40


async def test_bad_input_is_refused_before_any_work(tmp_path: Path) -> None:
    """Unknown methods 405, oversized or chunked bodies 413, non-names in containerLogs 400."""
    backend = SimulatedBackend(tmp_path / "logs")
    authz = FakeAuthz({("admin", "proxy")})
    app = build_app(
        NODE,
        backend,
        StaticPods([pod_json()]),
        FakeAuthn({"admin": UserInfo("admin")}),
        authz,
        max_body_bytes=1024,
    )
    async with TestClient(TestServer(app)) as c:
        r = await c.request("PROPFIND", "/pods", headers=ADMIN)
        assert r.status == 405
        r = await c.post("/exec/default/p1/main", data=b"x" * 4096, headers=ADMIN)
        assert r.status == 413
        assert "1024 bytes" in await r.text()

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(8):
                yield b"y" * 512

        r = await c.post("/exec/default/p1/main", data=chunks(), headers=ADMIN)
        assert r.status == 413
        for bad in ("..", "%2e%2e", "a%2Fb", "A", "x%00y"):
            url = c.make_url("/").with_path(f"/containerLogs/default/{bad}/main", encoded=True)
            r = await c.session.get(url, headers=ADMIN)
            # the server resolves a ".." segment itself (-> /containerLogs/main: no such route)
            assert r.status in ((400, 404) if bad in ("..", "%2e%2e") else (400,)), (bad, r.status)
            r = await c.get(f"/containerLogs/{bad}/p1/main", headers=ADMIN)
            assert r.status in (400, 404), (bad, r.status)
    assert not [a for a in authz.seen if a.verb == ""]  # no SAR with an empty verb
