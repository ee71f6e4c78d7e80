"""SimulatedBackend on a fake clock: latencies, exits from annotations, logs, stats, warm pool, stop grace."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from common.clock import FakeClock
from common.crilog import parse_bytes
from sandbox.backend import (
    Backend,
    ContainerSpec,
    ContainerState,
    CreateContainerError,
    ImageNeverPullError,
    ImagePullError,
    InvalidImageNameError,
    PodSandboxSpec,
    PullPolicy,
    Resources,
)
from sandbox.pool_policy import ANNOTATION_MIN, PoolDefaults
from sandbox.simulated import SimulatedBackend, normalize_image

pytestmark = pytest.mark.unit


def pod(uid: str = "u1", key: str = "k1", ns: str = "default", **annotations: str) -> PodSandboxSpec:
    return PodSandboxSpec(
        uid=uid,
        namespace=ns,
        name=f"pod-{uid}",
        workload_key=key,
        hostname=f"pod-{uid}",
        annotations=annotations,
    )


def ctr(name: str = "main", image: str = "busybox:1.36", **kw: object) -> ContainerSpec:
    return ContainerSpec(name=name, image=image, **kw)  # type: ignore[arg-type]


async def run_pod(
    b: SimulatedBackend, spec: PodSandboxSpec, containers: list[ContainerSpec] | None = None
) -> list[str]:
    sb = await b.acquire_sandbox(spec)
    ids = []
    for c in containers or [ctr()]:
        await b.ensure_image(c.image, PullPolicy.IF_NOT_PRESENT)
        cid = await b.create_container(sb, spec, c, 0)
        await b.start_container(cid)
        ids.append(cid)
    return ids


def log_records(path: str) -> list[tuple[str, bytes]]:
    return [(r.stream, r.content) for r in parse_bytes(Path(path).read_bytes())]


def exists(path: str | Path) -> bool:
    return os.path.exists(path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(tmp_path: Path, clock: FakeClock) -> SimulatedBackend:
    return SimulatedBackend(tmp_path / "pods", clock=clock)


def sim(tmp_path: Path, clock: FakeClock, **kw: object) -> SimulatedBackend:
    return SimulatedBackend(tmp_path, clock=clock, **kw)  # type: ignore[arg-type]


def pool(**kw: object) -> PoolDefaults:
    return PoolDefaults(**kw)  # type: ignore[arg-type]


def test_implements_protocol(backend: SimulatedBackend) -> None:
    assert isinstance(backend, Backend)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("busybox", ("docker.io/library/busybox", ":latest")),
        ("busybox:1.36", ("docker.io/library/busybox", ":1.36")),
        ("myorg/app:v1", ("docker.io/myorg/app", ":v1")),
        ("localhost:5000/app", ("localhost:5000/app", ":latest")),
        ("127.0.0.1:5000/a/b:x", ("127.0.0.1:5000/a/b", ":x")),
        ("registry.k8s.io/pause:3.10", ("registry.k8s.io/pause", ":3.10")),
        ("busybox@sha256:" + "a" * 64, ("docker.io/library/busybox", "@sha256:" + "a" * 64)),
    ],
)
def test_normalize_image(image: str, expected: tuple[str, str]) -> None:
    assert normalize_image(image) == expected


@pytest.mark.parametrize(
    "image", ["", "reg.io/UPPER", "busybox:", "a b", "busybox:bad tag", "-x", "x@sha256:zz", "a//b"]
)
def test_invalid_image_names(image: str) -> None:
    with pytest.raises(InvalidImageNameError):
        normalize_image(image)


async def test_image_pulled_once_then_cached(tmp_path: Path, clock: FakeClock) -> None:
    b = sim(tmp_path, clock, pull_seconds=0.05)
    waiters = asyncio.gather(*(b.ensure_image("nginx:1", PullPolicy.IF_NOT_PRESENT) for _ in range(20)))
    await clock.advance(0)
    await clock.advance(0.049)
    assert not waiters.done() and not b.has_image("nginx:1")  # the pull takes pull_seconds
    await clock.advance(0.001)
    results = await waiters
    assert b.pulls == 1  # 20 waiters, one pull
    assert all(r.pulled and r.image_ref.startswith("docker.io/library/nginx@sha256:") for r in results)
    r = await b.ensure_image("nginx:1", PullPolicy.IF_NOT_PRESENT)
    assert not r.pulled
    # Always re-checks the manifest: the layers are present, nothing is downloaded (as on CRI).
    assert not (await b.ensure_image("nginx:1", PullPolicy.ALWAYS)).pulled
    # Another reference to the same image is the same image.
    assert (await b.ensure_image("docker.io/library/nginx:1", PullPolicy.NEVER)).image_ref == r.image_ref
    assert b.pulls == 1


async def test_image_errors(backend: SimulatedBackend) -> None:
    with pytest.raises(ImagePullError) as e:
        await backend.ensure_image("127.0.0.1:5000/does-not-exist:v1", PullPolicy.IF_NOT_PRESENT)
    assert e.value.reason == "ErrImagePull"
    with pytest.raises(ImagePullError):
        await backend.ensure_image("notfound/app", PullPolicy.ALWAYS)
    with pytest.raises(InvalidImageNameError) as e2:
        await backend.ensure_image("Bad:Name:x", PullPolicy.IF_NOT_PRESENT)
    assert e2.value.reason == "InvalidImageName"
    with pytest.raises(ImageNeverPullError):
        await backend.ensure_image("busybox", PullPolicy.NEVER)
    # A registry host named "missing" does not make an image missing.
    await backend.ensure_image("busybox", PullPolicy.IF_NOT_PRESENT)
    assert not (await backend.ensure_image("busybox", PullPolicy.NEVER)).pulled


async def test_latencies(tmp_path: Path, clock: FakeClock) -> None:
    b = sim(tmp_path, clock, sandbox_seconds=0.05, start_seconds=0.05)
    task = asyncio.ensure_future(run_pod(b, pod()))
    await clock.advance(0)
    await clock.advance(0.05)
    assert not task.done() and await b.list_sandboxes()  # the sandbox took its 0.05 s
    await clock.advance(0.049)
    assert not task.done()
    await clock.advance(0.001)
    await task  # then the start its 0.05 s


async def test_run_until_stopped_by_default(backend: SimulatedBackend, clock: FakeClock) -> None:
    [cid] = await run_pod(backend, pod())
    await clock.advance(3600)
    [st] = await backend.pod_containers("u1")
    assert st.state == ContainerState.RUNNING and st.started_at is not None
    assert st.container_id == cid and st.attempt == 0


async def test_exit_from_annotations(backend: SimulatedBackend, clock: FakeClock) -> None:
    changed: list[str] = []
    backend.subscribe(changed.append)
    spec = pod(
        **{
            "warmlet.io/sim-run-seconds": "0.02",
            "warmlet.io/sim-exit-code": "3",
            "warmlet.io/sim-run-seconds.side": "inf",
        }
    )
    await run_pod(backend, spec, [ctr("main"), ctr("side")])
    await clock.advance(0.019)
    assert changed == []
    await clock.advance(0.001)
    assert changed == ["u1"]
    states = {s.name: s for s in await backend.pod_containers("u1")}
    assert states["main"].state == ContainerState.EXITED
    assert states["main"].exit_code == 3 and states["main"].reason == "Error"
    assert states["main"].finished_at == states["main"].started_at + 0.02  # type: ignore[operator]
    assert states["side"].state == ContainerState.RUNNING


async def test_completed_reason_and_default_run_seconds(tmp_path: Path, clock: FakeClock) -> None:
    b = sim(tmp_path, clock, default_run_seconds=0.01)
    await run_pod(b, pod())
    await clock.advance(0.01)
    [st] = await b.pod_containers("u1")
    assert st.state == ContainerState.EXITED and st.exit_code == 0 and st.reason == "Completed"


async def test_init_containers_finish_by_default(backend: SimulatedBackend, clock: FakeClock) -> None:
    await run_pod(backend, pod(), [ctr("init", is_init=True)])
    await clock.advance(0)
    [st] = await backend.pod_containers("u1")
    assert st.state == ContainerState.EXITED and st.exit_code == 0


async def test_custom_reason(backend: SimulatedBackend, clock: FakeClock) -> None:
    spec = pod(
        **{
            "warmlet.io/sim-run-seconds": "0",
            "warmlet.io/sim-exit-code": "137",
            "warmlet.io/sim-exit-reason": "OOMKilled",
        }
    )
    await run_pod(backend, spec)
    await clock.advance(0)
    [st] = await backend.pod_containers("u1")
    assert (st.exit_code, st.reason) == (137, "OOMKilled")


@pytest.mark.parametrize(
    "ann",
    [
        {"warmlet.io/sim-run-seconds": "soon"},
        {"warmlet.io/sim-run-seconds": "-1"},
        {"warmlet.io/sim-exit-code": "x"},
    ],
)
async def test_bad_annotations_fail_create(backend: SimulatedBackend, ann: dict[str, str]) -> None:
    spec = pod(**ann)
    sb = await backend.acquire_sandbox(spec)
    with pytest.raises(CreateContainerError):
        await backend.create_container(sb, spec, ctr(), 0)


async def test_logs_written_in_cri_format(backend: SimulatedBackend) -> None:
    spec = pod(**{"warmlet.io/sim-log": "hello\nworld", "warmlet.io/sim-stderr": "oops"})
    await run_pod(backend, spec)
    [st] = await backend.pod_containers("u1")
    assert st.log_path == backend.log_path("default", "pod-u1", "u1", "main", 0)
    assert st.log_path.endswith("default_pod-u1_u1/main/0.log")
    assert log_records(st.log_path) == [
        ("stdout", b"simulated container main started"),
        ("stdout", b"hello"),
        ("stdout", b"world"),
        ("stderr", b"oops"),
    ]


async def test_log_ticks_share_the_exit_timer(backend: SimulatedBackend, clock: FakeClock) -> None:
    spec = pod(**{"warmlet.io/sim-log-every-seconds": "0.01", "warmlet.io/sim-run-seconds": "0.055"})
    await run_pod(backend, spec)
    assert len(backend.containers.timers) == 1  # one timer per running container
    await clock.advance(0.0201)
    [st] = await backend.pod_containers("u1")
    assert [c for _, c in log_records(st.log_path) if c.startswith(b"tick")] == [b"tick 1", b"tick 2"]
    await clock.advance(0.1)
    [st] = await backend.pod_containers("u1")
    assert st.state == ContainerState.EXITED
    lines = [content for _, content in log_records(st.log_path)]
    assert [ln for ln in lines if ln.startswith(b"tick")] == [b"tick %d" % i for i in range(1, 6)]
    assert st.exit_code == 0


async def test_restart_attempts_keep_previous(backend: SimulatedBackend, clock: FakeClock) -> None:
    spec = pod(**{"warmlet.io/sim-run-seconds": "0", "warmlet.io/sim-exit-code": "1"})
    sb = await backend.acquire_sandbox(spec)
    for attempt in range(3):
        cid = await backend.create_container(sb, spec, ctr(), attempt)
        await backend.start_container(cid)
        await clock.advance(0)
    states = await backend.pod_containers("u1")
    assert [s.attempt for s in states] == [0, 1, 2]
    assert all(exists(s.log_path) for s in states)
    await backend.remove_container(states[0].container_id)
    assert [s.attempt for s in await backend.pod_containers("u1")] == [1, 2]
    assert not exists(states[0].log_path)


async def test_stop_term_is_immediate(backend: SimulatedBackend) -> None:
    changed: list[str] = []
    backend.subscribe(changed.append)
    [cid] = await run_pod(backend, pod())
    await backend.stop_container(cid, 30)  # returns at once: TERM ends it, no grace waited
    [st] = await backend.pod_containers("u1")
    assert st.state == ContainerState.EXITED and st.exit_code == 143
    assert changed == ["u1"]
    await backend.stop_container(cid, 30)  # idempotent
    await backend.stop_container("nope", 1)


async def test_stop_ignoring_term_waits_for_grace(backend: SimulatedBackend, clock: FakeClock) -> None:
    [cid] = await run_pod(backend, pod(**{"warmlet.io/sim-ignore-term": "true"}))
    stop = asyncio.ensure_future(backend.stop_container(cid, 0.1))
    await clock.advance(0)
    await clock.advance(0.099)
    assert not stop.done()  # TERM ignored: the grace is waited before the kill
    await clock.advance(0.001)
    await stop
    [st] = await backend.pod_containers("u1")
    assert st.exit_code == 137


async def test_stop_ignoring_term_ends_early_on_natural_exit(
    backend: SimulatedBackend, clock: FakeClock
) -> None:
    spec = pod(**{"warmlet.io/sim-ignore-term": "true", "warmlet.io/sim-run-seconds": "0.05"})
    [cid] = await run_pod(backend, spec)
    stop = asyncio.ensure_future(backend.stop_container(cid, 30))
    await clock.advance(0)
    await clock.advance(0.05)
    assert stop.done()  # the natural exit ended the wait, not the 30 s grace
    [st] = await backend.pod_containers("u1")
    assert st.exit_code == 0


async def test_warm_pool_reuses_only_same_key(backend: SimulatedBackend) -> None:
    first = await backend.acquire_sandbox(pod("a", key="k1"))
    assert not first.from_pool
    await run_pod(backend, pod("a", key="k1"))
    await backend.release_sandbox("a", reusable=True)
    assert backend.idle_sandboxes("k1") == 1
    assert await backend.pod_containers("a") == []
    other = await backend.acquire_sandbox(pod("b", key="k2"))
    assert not other.from_pool and other.sandbox_id != first.sandbox_id
    again = await backend.acquire_sandbox(pod("c", key="k1"))
    assert again.from_pool and again.sandbox_id == first.sandbox_id and again.pod_uid == "c"
    assert again.pod_ip == first.pod_ip
    assert backend.idle_sandboxes() == 0
    # Idempotent acquire for the same pod.
    assert (await backend.acquire_sandbox(pod("c", key="k1"))).sandbox_id == first.sandbox_id
    assert {s.pod_uid for s in await backend.list_sandboxes()} == {"a", "b", "c"} - {"a"}


async def test_release_not_reusable_and_pool_disabled(tmp_path: Path, clock: FakeClock) -> None:
    b = sim(tmp_path, clock, pool=pool(enabled=False))
    await run_pod(b, pod("a"))
    log_dir = Path(b.log_path("default", "pod-a", "a", "main", 0)).parent.parent
    assert exists(log_dir)
    await b.release_sandbox("a", reusable=True)
    assert b.idle_sandboxes() == 0 and not exists(log_dir)
    assert not (await b.acquire_sandbox(pod("b"))).from_pool
    await b.release_sandbox("missing", reusable=True)


async def test_pool_bounded_per_workload(tmp_path: Path, clock: FakeClock) -> None:
    b = sim(tmp_path, clock, pool=pool(max_per_workload=2))
    for uid in "abc":
        await b.acquire_sandbox(pod(uid))
    for uid in "abc":
        await b.release_sandbox(uid, reusable=True)
    assert b.idle_sandboxes("k1") == 2


async def test_pool_bounded_across_workloads_oldest_go_first(tmp_path: Path, clock: FakeClock) -> None:
    """Keys that are never asked for again (bare pods, finished Jobs) must not pile up idle."""
    b = sim(tmp_path, clock, pool=pool(global_max_sandboxes=3))
    for i in range(10):
        await b.acquire_sandbox(pod(f"u{i}", key=f"k{i}"))
        await clock.advance(1)
        await b.release_sandbox(f"u{i}", reusable=True)
    assert b.idle_sandboxes() == 3
    assert [b.idle_sandboxes(f"k{i}") for i in range(10)] == [0] * 7 + [1] * 3
    assert (await b.acquire_sandbox(pod("again", key="k9"))).from_pool


async def test_stats_usage_grows(backend: SimulatedBackend, clock: FakeClock) -> None:
    await run_pod(backend, pod(**{"warmlet.io/sim-cpu-nano-cores": "500000000"}), [ctr("a"), ctr("b")])
    s1 = await backend.stats()
    await clock.advance(0.05)
    s2 = await backend.stats()
    [p] = s2.pods
    assert (p.uid, p.namespace, p.name) == ("u1", "default", "pod-u1")
    assert [c.name for c in p.containers] == ["a", "b"]
    c = p.containers[0]
    assert c.cpu_usage_nano_cores == 500_000_000 and c.memory_working_set_bytes == 8 * 1024 * 1024
    assert c.cpu_usage_core_nanoseconds == pytest.approx(25_000_000, abs=1000)  # 0.05 s at half a core
    assert s2.cpu_usage_core_nanoseconds > s1.cpu_usage_core_nanoseconds
    assert s2.memory_working_set_bytes == 16 * 1024 * 1024
    assert s2.memory_available_bytes == 64 * 1024**3 - 16 * 1024 * 1024
    # Cumulative node CPU never goes backwards when containers are removed.
    await backend.release_sandbox("u1", reusable=False)
    s3 = await backend.stats()
    assert s3.cpu_usage_core_nanoseconds >= s2.cpu_usage_core_nanoseconds and s3.pods == []


async def test_remove_while_starting(tmp_path: Path, clock: FakeClock) -> None:
    b = sim(tmp_path, clock, start_seconds=0.05)
    spec = pod()
    sb = await b.acquire_sandbox(spec)
    cid = await b.create_container(sb, spec, ctr(), 0)
    task = asyncio.ensure_future(b.start_container(cid))
    await clock.advance(0)
    await clock.advance(0.01)
    await b.remove_container(cid)
    await clock.advance(0.04)
    with pytest.raises(CreateContainerError):
        await task


async def test_create_requires_own_sandbox(backend: SimulatedBackend) -> None:
    sb = await backend.acquire_sandbox(pod("a"))
    with pytest.raises(CreateContainerError):
        await backend.create_container(sb, pod("b"), ctr(), 0)


async def test_close_cancels_timers(backend: SimulatedBackend, clock: FakeClock) -> None:
    changed: list[str] = []
    backend.subscribe(changed.append)
    await run_pod(backend, pod(**{"warmlet.io/sim-run-seconds": "0.02"}))
    await backend.close()
    await clock.advance(0.04)
    assert changed == [] and clock.sleepers == 0
    assert not (await backend.health()).ok


async def test_ten_thousand_pods_are_cheap(tmp_path: Path, clock: FakeClock) -> None:
    """10,000 running containers cost one timer each and no task each (speed is for bench/scale)."""
    b = sim(tmp_path, clock, default_run_seconds=3600)
    for i in range(10_000):
        spec = pod(f"u{i}", key=f"k{i % 50}")
        sb = await b.acquire_sandbox(spec)
        cid = await b.create_container(sb, spec, ctr(), 0)
        await b.start_container(cid)
    assert len(b.containers.timers) == 10_000
    await clock.advance(0)
    assert len(asyncio.all_tasks()) < 10 and clock.sleepers == 1  # one pump sleeping for all
    s = await b.stats()
    assert len(s.pods) == 10_000
    await clock.advance(3600)
    assert len(b.containers.timers) == 0 and clock.sleepers == 0
    assert all(st.state == ContainerState.EXITED for st in await b.pod_containers("u9999"))
    await b.close()


async def test_prewarm_fills_pool_up_to_cap(tmp_path: Path, clock: FakeClock) -> None:
    b = sim(tmp_path, clock, pool=pool(max_per_workload=3))
    template = pod("tmpl", key="cron")
    template.images = ["busybox:1.36"]
    assert await b.prewarm(template, 2) == 2
    assert b.has_image("busybox:1.36")
    assert await b.prewarm(template, 2) == 2  # idempotent
    assert await b.prewarm(template, 10) == 3
    got = await b.acquire_sandbox(pod("real", key="cron"))
    assert got.from_pool and got.pod_uid == "real"
    assert await sim(tmp_path, clock, pool=pool(enabled=False)).prewarm(template, 2) == 0


async def test_reconcile_releases_unknown_pods_and_stray_logs(backend: SimulatedBackend) -> None:
    await run_pod(backend, pod("a"))
    await run_pod(backend, pod("b"))
    stray = Path(backend.log_dir) / "default_old_zzz"
    keep = Path(backend.log_dir) / "not-a-pod-dir"
    for d in (stray, keep):
        d.mkdir(parents=True)
    await backend.reconcile({"a"})
    assert {s.pod_uid for s in await backend.list_sandboxes()} == {"a"}
    assert backend.idle_sandboxes("k1") == 1
    assert not exists(stray) and exists(keep)
    assert exists(Path(backend.log_path("default", "pod-a", "a", "main", 0)))


async def test_pool_settings_apply_ttl_min_and_memory(tmp_path: Path, clock: FakeClock) -> None:
    """The real WarmPool's settings apply: idle TTL and min (maintenance on the clock), memory cap."""
    b = sim(
        tmp_path,
        clock,
        pool=pool(idle_ttl_seconds=60, global_max_memory_bytes=1 << 30),
        maintenance_interval=5,
    )
    await b.start()
    await clock.advance(0)
    for uid in "ab":
        await run_pod(b, pod(uid, key="ttl"))
    for uid in "ab":
        await b.release_sandbox(uid, reusable=True)
    assert b.idle_sandboxes("ttl") == 2
    await clock.advance(60)
    assert b.idle_sandboxes("ttl") == 2  # not idle longer than the TTL yet
    await clock.advance(5)
    assert b.idle_sandboxes("ttl") == 0  # the next maintenance pass evicted both
    await b.acquire_sandbox(pod("m", key="min", **{ANNOTATION_MIN: "2"}))
    await clock.advance(5)
    assert b.idle_sandboxes("min") == 2  # topped up to the workload's min
    big = pod("big", key="big")
    big.resources = Resources(memory_request_bytes=2 << 30)
    await b.acquire_sandbox(big)
    await b.release_sandbox("big", reusable=True)
    assert b.idle_sandboxes("big") == 0  # 2 GiB of warm memory exceeds the 1 GiB cap
    await b.close()
    assert clock.sleepers == 0


def test_from_config_takes_the_narrow_sections(tmp_path: Path) -> None:
    from provider.config import PoolConfig, SimulatedConfig

    b = SimulatedBackend.from_config(
        SimulatedConfig(pull_seconds=2.0), tmp_path, PoolConfig(max_per_workload=3, idle_ttl_seconds=9)
    )
    assert b.image_runtime.pull_seconds == 2.0
    assert (b.pool.defaults.max_per_workload, b.pool.defaults.idle_ttl_seconds) == (3, 9)
    assert SimulatedBackend.from_config(SimulatedConfig(), tmp_path).pool.defaults == PoolDefaults()
