"""CriBackend against the test bed's real containerd (CRI) and loopback registry, busybox images.

Each test uses its own warmlet instance label, log and state dirs, so it only ever sees (and cleans
up) the sandboxes it created, even when other tests share the containerd.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from provider.config import CRIConfig, PoolConfig
from sandbox.backend import (
    ContainerSpec,
    ContainerState,
    ImagePullError,
    InvalidImageNameError,
    PodSandboxSpec,
    PullPolicy,
    RegistryCredential,
)
from sandbox.cri import mapping as m
from sandbox.cri.backend import CriBackend
from sandbox.cri.client import CriClient
from testbed.wait import wait_for

pytestmark = pytest.mark.integration


class Env:
    def __init__(self, socket: str, tmp: Path, images: Any, registry: str) -> None:
        self.socket = socket
        self.tmp = tmp
        self.instance = f"test-{uuid.uuid4().hex[:10]}"
        self.busybox: str = images["busybox"]
        self.fat: str = images["fat"]
        self.registry = registry
        self.backends: list[CriBackend] = []

    def backend(self, **pool: Any) -> CriBackend:
        cri = CRIConfig(
            runtime_endpoint=f"unix://{self.socket}", poll_interval_seconds=0.1, call_timeout_seconds=30
        )
        b = CriBackend.from_config(
            cri,
            PoolConfig(**pool),
            self.tmp / "logs",
            self.tmp / "state",
            instance=self.instance,
            maintenance_interval=3600,
        )
        self.backends.append(b)
        return b

    def pod(self, name: str, ns: str = "ns1", key: str = "k1", **kw: Any) -> PodSandboxSpec:
        return PodSandboxSpec(
            uid=str(uuid.uuid4()),
            namespace=ns,
            name=name,
            workload_key=key,
            hostname=name,
            images=[self.busybox],
            **kw,
        )

    def container(self, script: str, name: str = "main") -> ContainerSpec:
        return ContainerSpec(name=name, image=self.busybox, command=["sh", "-c", script])


@pytest.fixture
async def env(containerd_socket: Path, registry: str, images: Any, tmp_path: Path) -> AsyncIterator[Env]:
    e = Env(str(containerd_socket), tmp_path, images, registry)
    try:
        yield e
    finally:
        for b in e.backends:
            await b.close()
        # Remove everything this test's instance created, whatever state it was left in.
        c = CriClient(f"unix://{e.socket}")
        try:
            sel = m.managed_selector(e.instance)
            for ct in await c.list_containers(labels=sel):
                await c.stop_container(ct.id, 0)
                await c.remove_container(ct.id)
            for sb in await c.list_pod_sandbox(labels=sel):
                await c.stop_pod_sandbox(sb.id)
                await c.remove_pod_sandbox(sb.id)
        finally:
            await c.close()


async def run_container(
    b: CriBackend, pod: PodSandboxSpec, script: str, name: str = "main", attempt: int = 0
) -> str:
    sb = await b.acquire_sandbox(pod)
    cid = await b.create_container(
        sb, pod, ContainerSpec(name=name, image=pod.images[0], command=["sh", "-c", script]), attempt
    )
    await b.start_container(cid)
    return cid


async def exited(b: CriBackend, uid: str, cid: str) -> bool:
    return any(
        s.container_id == cid and s.state == ContainerState.EXITED for s in await b.pod_containers(uid)
    )


def read_text(path: str) -> str:
    return Path(path).read_text()


def real_path(path: str) -> str:
    return os.path.realpath(path)


def pids_with_arg(marker: str) -> list[int]:
    out = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        out.append(int(e))
            except OSError:
                pass
    return out


async def test_pod_runs_logs_and_exit_codes(env: Env) -> None:
    b = env.backend()
    await b.start()
    health = await b.health()
    assert health.ok and health.runtime_name == "containerd", health
    changed: list[str] = []
    b.subscribe(changed.append)
    await b.ensure_image(env.busybox, PullPolicy.IF_NOT_PRESENT)
    pod = env.pod("logs-1")
    sb = await b.acquire_sandbox(pod)
    assert sb.sandbox_id and sb.pod_ip and not sb.from_pool and sb.pod_uid == pod.uid
    fail = await b.create_container(
        sb, pod, env.container("echo hello-out; echo hello-err >&2; exit 3", "fail"), 0
    )
    ok = await b.create_container(sb, pod, env.container("echo fine; exit 0", "ok"), 0)
    await b.start_container(fail)
    await b.start_container(ok)
    await wait_for(lambda: exited(b, pod.uid, fail), 20, 0.1, what="fail exit")
    await wait_for(lambda: exited(b, pod.uid, ok), 20, 0.1, what="ok exit")
    states = {s.name: s for s in await b.pod_containers(pod.uid)}
    assert states["fail"].exit_code == 3 and states["fail"].reason == "Error"
    assert states["ok"].exit_code == 0 and states["ok"].reason == "Completed"
    path = b.log_path(pod.namespace, pod.name, pod.uid, "fail", 0)
    assert states["fail"].log_path == path
    text = read_text(path)
    assert " stdout F hello-out" in text and " stderr F hello-err" in text
    await wait_for(lambda: asyncio.sleep(0, pod.uid in changed), 20, 0.1, what="PLEG notification")
    assert [s.sandbox_id for s in await b.list_sandboxes()] == [sb.sandbox_id]
    await b.release_sandbox(pod.uid, reusable=False)
    assert await b.list_sandboxes() == []


async def test_reuse_same_key_scrubs_everything(env: Env, tmp_path: Path) -> None:
    b = env.backend()
    await b.start()
    scratch = tmp_path / "emptydir-a"
    scratch.mkdir()
    (scratch / "secret.txt").write_text("from pod a")
    a = env.pod("reuse-a", scratch_dirs=[str(scratch)])
    marker = "31337"
    cid = await run_container(b, a, f"sleep {marker} & sleep {marker}1 & echo started; wait")
    sb_a = b.pool.get_by_pod(a.uid)
    assert sb_a is not None
    await wait_for(lambda: asyncio.sleep(0, len(pids_with_arg(marker)) >= 2), 20, 0.1, what="pod a processes")
    t0 = time.perf_counter()
    await b.stop_container(cid, 0)
    await b.release_sandbox(a.uid, reusable=True)
    release_s = time.perf_counter() - t0
    assert pids_with_arg(marker) == []
    assert list(scratch.iterdir()) == []
    assert await b.client.list_containers(sandbox_id=sb_a.sandbox_id) == []
    # the finished pod's final states (and log files) stay readable until the pod object is gone
    assert all(s.state == ContainerState.EXITED for s in await b.pod_containers(a.uid))
    await b.pod_gone(a.uid)
    assert await b.pod_containers(a.uid) == []

    bpod = env.pod("reuse-b")
    t0 = time.perf_counter()
    sb_b = await b.acquire_sandbox(bpod)
    warm_s = time.perf_counter() - t0
    assert sb_b.from_pool and sb_b.sandbox_id == sb_a.sandbox_id and sb_b.pod_uid == bpod.uid
    cid_b = await run_container(b, bpod, "hostname; ls /; exit 0")
    await wait_for(lambda: exited(b, bpod.uid, cid_b), 20, 0.1, what="pod b exit")
    states = await b.pod_containers(bpod.uid)
    assert [s.container_id for s in states] == [cid_b]
    path = b.log_path(bpod.namespace, bpod.name, bpod.uid, "main", 0)
    assert states[0].log_path == path and real_path(path) == path
    assert "reuse-b" in read_text(path)  # the new pod's hostname, not the first pod's
    print(f"release+scrub={release_s:.3f}s warm acquire={warm_s:.3f}s")


async def test_never_reused_across_keys_or_namespaces(env: Env) -> None:
    b = env.backend()
    await b.start()
    a = env.pod("iso-a", ns="ns1", key="k1")
    sb_a = await b.acquire_sandbox(a)
    await b.release_sandbox(a.uid, reusable=True)
    other_ns = await b.acquire_sandbox(env.pod("iso-b", ns="ns2", key="k1"))
    other_key = await b.acquire_sandbox(env.pod("iso-c", ns="ns1", key="k2"))
    assert not other_ns.from_pool and not other_key.from_pool
    assert sb_a.sandbox_id not in {other_ns.sandbox_id, other_key.sandbox_id}
    same = await b.acquire_sandbox(env.pod("iso-d", ns="ns1", key="k1"))
    assert same.from_pool and same.sandbox_id == sb_a.sandbox_id


async def test_concurrent_ensure_image_pulls_once(env: Env) -> None:
    b = env.backend()
    await b.start()
    client = b.client
    if await client.image_status(env.fat) is not None:
        await client.remove_image(env.fat)
    pulls: list[str] = []
    real_pull = b.images.runtime.pull

    async def counting_pull(image: str, credential: RegistryCredential | None = None) -> str:
        pulls.append(image)
        return await real_pull(image, credential)

    b.images.runtime.pull = counting_pull  # type: ignore[method-assign]
    t0 = time.perf_counter()
    results = await asyncio.gather(*(b.ensure_image(env.fat, PullPolicy.IF_NOT_PRESENT) for _ in range(8)))
    elapsed = time.perf_counter() - t0
    assert pulls == [env.fat]
    assert all(r.pulled for r in results) and len({r.image_ref for r in results}) == 1
    assert results[0].size_bytes > 10 * 1024 * 1024
    again = await b.ensure_image(env.fat, PullPolicy.IF_NOT_PRESENT)
    assert not again.pulled and pulls == [env.fat]
    print(f"cold pull of {results[0].size_bytes} bytes: {elapsed:.3f}s")


async def test_missing_and_invalid_images(env: Env) -> None:
    b = env.backend()
    await b.start()
    missing = f"{env.registry}/warmlet-does-not-exist:1"
    with pytest.raises(ImagePullError) as ei:
        await b.ensure_image(missing, PullPolicy.IF_NOT_PRESENT)
    assert ei.value.reason == "ErrImagePull"
    assert "not found" in ei.value.message and missing in ei.value.message
    with pytest.raises(InvalidImageNameError):
        await b.ensure_image(f"{env.registry}/Bad Name", PullPolicy.IF_NOT_PRESENT)


async def test_adoption_keeps_running_pods_and_pool(env: Env) -> None:
    b1 = env.backend()
    await b1.start()
    pod = env.pod("adopt-a", key="adopt")
    cid = await run_container(b1, pod, "while :; do sleep 1; done")
    before = {s.container_id: s for s in await b1.pod_containers(pod.uid)}
    assert before[cid].state == ContainerState.RUNNING
    assert await b1.prewarm(env.pod("tpl", key="adopt"), 1) == 1
    sb_ids = {r.sandbox_id for r in b1.pool.records.values()}
    await b1.close()

    b2 = env.backend()
    await b2.start()
    after = {s.container_id: s for s in await b2.pod_containers(pod.uid)}
    assert set(after) == {cid}
    assert after[cid].state == ContainerState.RUNNING and after[cid].started_at == before[cid].started_at
    assert {r.sandbox_id for r in b2.pool.records.values()} == sb_ids
    assert [s.pod_uid for s in await b2.list_sandboxes()] == [pod.uid]
    assert len(b2.pool.idle("adopt")) == 1
    again = await b2.acquire_sandbox(pod)  # idempotent: its own sandbox, nothing created
    assert again.pod_uid == pod.uid and not again.from_pool and again.sandbox_id in sb_ids
    assert len(await b2.client.list_pod_sandbox(labels=b2.selector)) == 2
    # The pod vanished while warmlet was away: reconcile releases its sandbox. The workload's peak
    # concurrency is 1 and one warm sandbox is already idle, so the released one is destroyed.
    await b2.reconcile(set())
    assert await b2.list_sandboxes() == [] and len(b2.pool.idle("adopt")) == 1
    assert await b2.pod_containers(pod.uid) == []
    assert len(await b2.client.list_pod_sandbox(labels=b2.selector)) == 1


async def test_prewarm_and_stats(env: Env) -> None:
    b = env.backend()
    await b.start()
    tpl = env.pod("cron-tpl", key="cron")
    t0 = time.perf_counter()
    assert await b.prewarm(tpl, 2) == 2
    prewarm_s = time.perf_counter() - t0
    pod = env.pod("cron-1", key="cron")
    sb = await b.acquire_sandbox(pod)
    assert sb.from_pool
    await run_container(b, pod, "i=0; while :; do i=$((i+1)); done")
    done = await run_container(b, pod, "exit 0", name="short")
    await wait_for(lambda: exited(b, pod.uid, done), 20, 0.1, what="short exit")
    await asyncio.sleep(1.0)
    await b.stats()
    usage = await b.stats()
    assert (
        usage.cpu_usage_core_nanoseconds > 0
        and usage.memory_available_bytes > 0
        and usage.fs_capacity_bytes > 0
    )
    [pu] = [p for p in usage.pods if p.uid == pod.uid]
    assert (pu.namespace, pu.name) == (pod.namespace, pod.name)
    names = [c.name for c in pu.containers]
    assert names == ["main"]  # the exited container is left out, without an error
    assert pu.containers[0].cpu_usage_core_nanoseconds > 0 and pu.containers[0].memory_working_set_bytes > 0
    print(f"prewarm of 2 sandboxes: {prewarm_s:.3f}s")


async def test_task_never_started_on_containerds_real_layout(env: Env) -> None:
    """What warmlet reads to decide about a container left UNKNOWN by a runtime restart: the
    task's bundle directory (none before StartContainer) and the processes in its cgroup."""
    from sandbox.cri.host import task_never_started

    b = env.backend()
    await b.start()
    assert b.relay is not None and b.relay.proc is not None  # cri.call_relay is on by default
    await b.ensure_image(env.busybox, PullPolicy.IF_NOT_PRESENT)
    pod = env.pod("unknown-1")
    sb = await b.acquire_sandbox(pod)
    cid = await b.create_container(sb, pod, env.container("sleep 60"), 0)
    task_dir = b.ctx.runtime.task_dir(cid)
    assert task_dir is not None and not await asyncio.to_thread(os.path.isdir, task_dir)
    assert await asyncio.to_thread(task_never_started, cid, task_dir) is True  # created only
    await b.start_container(cid)
    assert await asyncio.to_thread(os.path.isdir, task_dir)
    assert await asyncio.to_thread(task_never_started, cid, task_dir) is False  # it runs
    await b.stop_container(cid, 0)
    assert await asyncio.to_thread(task_never_started, cid, task_dir) in (None, True)


async def test_start_waits_for_the_previous_warmlets_relay(env: Env) -> None:
    """A restarted warmlet adopts the runtime's state only once the previous process's relay
    (finishing that process's calls in flight) has exited; then it records its own."""
    import json

    from sandbox.cri.relay import RELAY_FILE, RelayProcess

    previous = RelayProcess(env.socket)
    await asyncio.to_thread(previous.start)
    try:
        assert previous.proc is not None
        marker = env.tmp / "state" / RELAY_FILE
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"pid": previous.proc.pid, "name": previous.name}))
        b = env.backend()
        starting = asyncio.create_task(b.start())
        await asyncio.sleep(1.0)
        assert not starting.done()  # the previous relay still runs: no adoption yet
        await asyncio.to_thread(previous.stop)
        await asyncio.wait_for(starting, 30)
        assert b.relay is not None and b.relay.proc is not None
        assert json.loads(marker.read_text()) == {"pid": b.relay.proc.pid, "name": b.relay.name}
        await b.close()
        assert not marker.exists()  # a clean stop leaves nothing to wait for
    finally:
        await asyncio.to_thread(previous.stop)
