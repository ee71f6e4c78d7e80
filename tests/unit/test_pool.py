"""WarmPool with a fake driver: reuse only within key+namespace, scrub, eviction, prewarm, upkeep, state."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from common.clock import FakeClock
from sandbox.backend import BackendError, PodSandboxSpec, Resources
from sandbox.pool import SandboxRecord, WarmPool
from sandbox.pool_policy import ANNOTATION_MIN, ANNOTATION_POOL, DEFAULT_SANDBOX_COST_BYTES, PoolDefaults


class FakeDriver:
    def __init__(self) -> None:
        self.created: list[tuple[str, bool]] = []
        self.destroyed: list[str] = []
        self.scrubbed: list[tuple[str, list[str]]] = []
        self.scrub_ok = True
        self.ready: dict[str, bool] = {}
        self.image_calls: list[list[str]] = []
        self.n = 0
        self.fail_create = False

    async def create_sandbox(self, spec: PodSandboxSpec, prewarmed: bool) -> tuple[str, str]:
        await asyncio.sleep(0)
        if self.fail_create:
            raise BackendError("boom")
        self.n += 1
        sid = f"sb{self.n}"
        self.created.append((spec.uid, prewarmed))
        self.ready[sid] = True
        return sid, f"10.0.0.{self.n}"

    async def scrub_sandbox(self, record: SandboxRecord) -> bool:
        self.scrubbed.append((record.sandbox_id, list(record.scratch_dirs)))
        return self.scrub_ok

    async def destroy_sandbox(self, sandbox_id: str) -> None:
        self.destroyed.append(sandbox_id)

    async def sandbox_ready(self, sandbox_id: str) -> bool:
        return self.ready.get(sandbox_id, False)

    async def ensure_images(self, spec: PodSandboxSpec) -> None:
        self.image_calls.append(list(spec.images))


def spec(uid: str, key: str = "k", ns: str = "ns", **kw: object) -> PodSandboxSpec:
    return PodSandboxSpec(uid=uid, namespace=ns, name=f"p-{uid}", workload_key=key, hostname=uid, **kw)  # type: ignore[arg-type]


Clock = FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(tmp_path: Path, clock: FakeClock, **kw: object) -> tuple[WarmPool, FakeDriver]:
    d = FakeDriver()
    defaults = PoolDefaults(**kw)  # type: ignore[arg-type]
    return WarmPool(d, defaults, state_file=tmp_path / "pool.json", clock=clock), d


async def test_miss_release_hit(tmp_path: Path, clock: Clock) -> None:
    pool, d = make(tmp_path, clock)
    r1 = await pool.acquire(spec("u1", scratch_dirs=["/x/u1"]))
    assert not r1.from_pool and r1.pod_uid == "u1" and d.created == [("u1", False)]
    assert (await pool.acquire(spec("u1"))) is r1  # idempotent
    await pool.release("u1", reusable=True)
    assert d.scrubbed == [("sb1", ["/x/u1"])]
    assert [r.sandbox_id for r in pool.idle("k")] == ["sb1"]
    r2 = await pool.acquire(spec("u2"))
    assert r2.sandbox_id == "sb1" and r2.from_pool and r2.pod_uid == "u2" and r2.uses == 2
    assert len(d.created) == 1
    assert pool.get_by_pod("u1") is None and pool.get_by_pod("u2") is r2


async def test_never_across_keys_or_namespaces(tmp_path: Path, clock: Clock) -> None:
    pool, _d = make(tmp_path, clock)
    await pool.acquire(spec("u1", key="k", ns="a"))
    await pool.release("u1", True)
    other_key = await pool.acquire(spec("u2", key="k2", ns="a"))
    other_ns = await pool.acquire(spec("u3", key="k", ns="b"))
    assert not other_key.from_pool and not other_ns.from_pool
    assert {other_key.sandbox_id, other_ns.sandbox_id}.isdisjoint({"sb1"})
    assert [r.sandbox_id for r in pool.idle()] == ["sb1"]


async def test_not_reusable_and_scrub_failure_destroy(tmp_path: Path, clock: Clock) -> None:
    pool, d = make(tmp_path, clock)
    await pool.acquire(spec("u1"))
    await pool.release("u1", reusable=False)
    assert d.destroyed == ["sb1"] and d.scrubbed == [] and pool.records == {}
    await pool.acquire(spec("u2"))
    d.scrub_ok = False
    await pool.release("u2", reusable=True)
    assert d.destroyed == ["sb1", "sb2"] and pool.records == {}
    await pool.release("unknown", True)  # no-op


async def test_pool_off_annotation(tmp_path: Path, clock: Clock) -> None:
    pool, d = make(tmp_path, clock)
    await pool.acquire(spec("u1", annotations={ANNOTATION_POOL: "off"}))
    await pool.release("u1", True)
    assert d.destroyed == ["sb1"]


async def test_retention_follows_peak_concurrency(tmp_path: Path, clock: Clock) -> None:
    pool, d = make(tmp_path, clock)
    for i in range(3):
        await pool.acquire(spec(f"u{i}"))
    for i in range(3):
        await pool.release(f"u{i}", True)
    assert len(pool.idle("k")) == 3 and d.destroyed == []
    # Much later a single pod runs at a time: the window forgets the burst; extra idle are trimmed by TTL.
    await clock.advance(10_000)
    await pool.maintain()
    assert pool.idle("k") == [] and len(d.destroyed) == 3


async def test_concurrent_acquires_take_distinct_sandboxes(tmp_path: Path, clock: Clock) -> None:
    pool, _d = make(tmp_path, clock)
    await asyncio.gather(*(pool.acquire(spec(f"a{i}")) for i in range(2)))
    await pool.release("a0", True)
    await pool.release("a1", True)
    recs = await asyncio.gather(*(pool.acquire(spec(f"b{i}")) for i in range(3)))
    ids = [r.sandbox_id for r in recs]
    assert len(set(ids)) == 3 and sum(r.from_pool for r in recs) == 2


async def test_prewarm_idempotent_and_capped(tmp_path: Path, clock: Clock) -> None:
    pool, d = make(tmp_path, clock, max_per_workload=3)
    tpl = spec("tpl", images=["reg/app:1"])
    assert await pool.prewarm(tpl, 2) == 2
    assert d.image_calls == [["reg/app:1"]]
    assert all(pre for _, pre in d.created) and len(d.created) == 2
    assert await pool.prewarm(tpl, 2) == 2 and len(d.created) == 2
    assert await pool.prewarm(tpl, 10) == 3  # capped by max
    r = await pool.acquire(spec("u1"))
    assert r.from_pool
    # Prewarmed sandboxes of another namespace are never used.
    r2 = await pool.acquire(spec("u2", ns="other"))
    assert not r2.from_pool


async def test_prewarm_global_cap_and_errors(tmp_path: Path, clock: Clock) -> None:
    pool, _d = make(tmp_path, clock, global_max_sandboxes=1)
    assert await pool.prewarm(spec("tpl"), 5) == 1
    pool2, d2 = make(tmp_path / "2", clock)
    d2.fail_create = True
    assert await pool2.prewarm(spec("tpl"), 2) == 0


async def test_maintenance_tops_up_min_and_drops_dead(tmp_path: Path, clock: Clock) -> None:
    pool, d = make(tmp_path, clock)
    await pool.acquire(spec("u1", annotations={ANNOTATION_MIN: "2"}))
    await pool.maintain()
    assert len(pool.idle("k")) == 2
    dead = pool.idle("k")[0].sandbox_id
    d.ready[dead] = False
    await pool.maintain()
    assert dead in d.destroyed and len(pool.idle("k")) == 2
    await clock.advance(1e6)  # TTL never trims below min
    await pool.maintain()
    assert len(pool.idle("k")) == 2


async def test_global_cap_evicts_lru_on_release(tmp_path: Path, clock: Clock) -> None:
    pool, d = make(tmp_path, clock, global_max_sandboxes=1)
    await pool.acquire(spec("a", key="ka"))
    await pool.acquire(spec("b", key="kb"))
    await pool.release("a", True)
    await clock.advance(1)
    await pool.release("b", True)
    assert [r.key for r in pool.idle()] == ["kb"] and d.destroyed == ["sb1"]


async def test_state_roundtrip(tmp_path: Path, clock: Clock) -> None:
    pool, _d = make(tmp_path, clock)
    await pool.acquire(spec("u1", annotations={ANNOTATION_MIN: "1"}))
    await pool.acquire(spec("u2"))
    await pool.release("u2", True)
    data = json.loads((tmp_path / "pool.json").read_text())
    assert data["version"] == 1 and len(data["sandboxes"]) == 2
    pool2, _ = make(tmp_path, clock)
    recs, tpls = pool2.load()
    pool2.adopt(recs, tpls)
    assert pool2.get_by_pod("u1") is not None and len(pool2.idle("k")) == 1
    assert pool2.policy("k").min == 0  # the last spec of key "k" (u2) had no override
    (tmp_path / "pool.json").write_text("{not json")
    assert pool2.load() == ([], {})


async def test_maintenance_loop_runs_on_the_clock_and_cancels_cleanly(tmp_path: Path, clock: Clock) -> None:
    pool, d = make(tmp_path, clock)
    await pool.acquire(spec("u1", annotations={ANNOTATION_MIN: "2"}))
    pool.start_maintenance(5.0)
    await clock.advance(0)  # the loop starts and sleeps on the clock
    await clock.advance(4.9)
    assert pool.idle("k") == []  # no pass before the interval
    await clock.advance(0.1)
    assert len(pool.idle("k")) == 2  # the pass topped the workload up to its min
    await pool.release("u1", reusable=False)
    d.ready = {sid: False for sid in d.ready}  # the idle ones die: the next pass replaces them
    await clock.advance(5.0)
    assert len(pool.idle("k")) == 2 and len(d.destroyed) == 3
    await pool.stop_maintenance()
    assert not pool.upkeep.running and clock.sleepers == 0
    created = len(d.created)
    await clock.advance(60)
    assert len(d.created) == created  # stopped: no more passes


async def test_maintenance_failure_backs_off(tmp_path: Path, clock: Clock) -> None:
    pool, d = make(tmp_path, clock)
    await pool.acquire(spec("u1", annotations={ANNOTATION_MIN: "1"}))
    calls: list[float] = []

    async def broken(sandbox_id: str) -> bool:
        calls.append(clock.monotonic())
        raise RuntimeError("runtime bug")

    await pool.maintain()  # one idle sandbox to health-check
    d.sandbox_ready = broken  # type: ignore[method-assign]
    start = clock.monotonic()
    pool.start_maintenance(1.0)
    await clock.advance(0)
    await clock.advance(1.0 + 2.0 + 4.0)
    assert [round(t - start, 3) for t in calls] == [1.0, 3.0, 7.0]  # 1 s, then doubling
    await pool.stop_maintenance()


def _series(name: str) -> dict[tuple[str, ...], float]:
    from prometheus_client import REGISTRY

    out: dict[tuple[str, ...], float] = {}
    for fam in REGISTRY.collect():
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value  # type: ignore[arg-type]
    return out


def test_workload_label_is_readable_and_folds_bare_pods() -> None:
    from sandbox.metrics import workload_label

    assert workload_label("team-a/CronJob/report#3f9c0011") == "team-a/CronJob/report"
    assert workload_label("team-a/Pod/8c1f-uid#aa") == "team-a/Pod"
    assert workload_label("team-a/Pod/other-uid#bb") == "team-a/Pod"
    assert workload_label("weird") == "weird"


async def test_pool_series_bounded_for_bare_pods_and_dropped_when_empty(tmp_path: Path, clock: Clock) -> None:
    pool, _d = make(tmp_path, clock)
    for i in range(20):  # a stream of bare pods: one series for the namespace, not one per pod
        await pool.acquire(spec(f"bare{i}", key=f"mx/Pod/bare{i}#h{i}", ns="mx"))
        await pool.release(f"bare{i}", reusable=False)
    misses = {k: v for k, v in _series("warmlet_pool_misses_total").items() if ("workload", "mx/Pod") in k}
    assert list(misses.values()) == [20.0]
    labels = [dict(k).get("workload", "") for k in _series("warmlet_pool_misses_total")]
    assert not any(lb.startswith("mx/Pod/") for lb in labels)
    gauges = [k for k in _series("warmlet_pool_sandboxes") if ("workload", "mx/Pod") in k]
    assert gauges == []  # no sandbox of the workload left: its series are gone


def mem(request_mib: int = 0, limit_mib: int = 0) -> Resources:
    return Resources(memory_request_bytes=request_mib << 20, memory_limit_bytes=limit_mib << 20)


async def test_memory_cap_counts_each_workloads_memory(tmp_path: Path, clock: Clock) -> None:
    pool, d = make(tmp_path, clock, global_max_memory_bytes=1 << 30)
    big = [spec(f"b{i}", key="big", resources=mem(400)) for i in range(3)]
    for s in big:
        await pool.acquire(s)
    assert pool.get_by_pod("b0").cost_bytes == 400 << 20  # type: ignore[union-attr]
    for i, s in enumerate(big):
        await clock.advance(1)
        await pool.release(s.uid, True)
        assert pool.index.idle_bytes <= 1 << 30, i
    # Peak 3 would keep 3, but 3 x 400 MiB > 1 GiB: the least recently idled one went.
    assert [r.sandbox_id for r in pool.idle("big")] == ["sb2", "sb3"] and d.destroyed == ["sb1"]
    # Pods without a memory request or limit count the floor: many fit.
    small = [spec(f"s{i}", key="small") for i in range(5)]
    for s in small:
        await pool.acquire(s)
    for s in small:
        await pool.release(s.uid, True)
    assert (
        len(pool.idle("small")) == 5 and pool.index.idle_bytes == 800 * 2**20 + 5 * DEFAULT_SANDBOX_COST_BYTES
    )
    # A workload bigger than the whole cap is never kept warm.
    await pool.acquire(spec("h", key="huge", resources=mem(0, 2048)))
    await pool.release("h", True)
    assert pool.idle("huge") == [] and len(d.destroyed) == 2


async def test_prewarm_respects_memory_cap(tmp_path: Path, clock: Clock) -> None:
    pool, _d = make(tmp_path, clock, global_max_memory_bytes=1 << 30, max_per_workload=8)
    assert await pool.prewarm(spec("tpl", resources=mem(300)), 8) == 3  # 3 x 300 MiB fit in 1 GiB


def _recount(pool: WarmPool) -> tuple[int, int, dict[str, int], dict[str, int]]:
    idle = [r for r in pool.records.values() if r.state == "idle"]
    busy: dict[str, int] = {}
    per_key: dict[str, int] = {}
    for r in pool.records.values():
        if r.state in ("in_use", "releasing"):
            busy[r.key] = busy.get(r.key, 0) + 1
        if r.state == "idle":
            per_key[r.key] = per_key.get(r.key, 0) + 1
    return len(idle), sum(r.cost_bytes for r in idle), busy, per_key


async def test_index_matches_the_records_after_every_step(tmp_path: Path, clock: Clock) -> None:
    pool, d = make(tmp_path, clock, global_max_sandboxes=5, max_per_workload=3)
    import random

    rnd = random.Random(7)
    live: list[str] = []
    for step in range(300):
        op = rnd.random()
        if op < 0.5 or not live:
            uid = f"p{step}"
            await pool.acquire(
                spec(uid, key=f"k{rnd.randrange(4)}", ns=rnd.choice("ab"), resources=mem(rnd.randrange(3)))
            )
            live.append(uid)
        elif op < 0.85:
            uid = live.pop(rnd.randrange(len(live)))
            d.scrub_ok = rnd.random() > 0.1
            await pool.release(uid, reusable=rnd.random() > 0.2)
        elif op < 0.95:
            await pool.forget_pod(live.pop(rnd.randrange(len(live))))
        else:
            await clock.advance(rnd.choice([1, 1000]))
            await pool.maintain()
        total, nbytes, busy, per_key = _recount(pool)
        assert (pool.index.idle_total, pool.index.idle_bytes) == (total, nbytes), step
        assert {k: pool.in_use_count(k) for k in busy} == busy, step
        assert {k: len(pool.idle(k)) for k in per_key} == per_key and len(pool.idle()) == total, step
        assert total <= 5, step  # the global count cap holds after every release
        assert set(pool.by_pod) == {r.pod_uid for r in pool.records.values() if r.state == "in_use"}, step


async def test_a_single_use_key_is_not_learned_while_it_runs(tmp_path: Path, clock: Clock) -> None:
    """A bare pod's key can never come again: no template, policy or concurrency history is kept
    for it (10,000 bare pods on a node would keep 10,000 of each), its gauges still count it."""
    pool, d = make(tmp_path, clock)
    await pool.acquire(spec("u1", key="ns/Pod/u1#a", single_use=True))
    await pool.acquire(spec("u2", key="ns/Deployment/web#b"))
    assert set(pool.templates) == {"ns/Deployment/web#b"} and set(pool.policies) == set(pool.templates)
    assert set(pool.tracker._samples) == {"ns/Deployment/web#b"}
    assert pool.in_use_count("ns/Pod/u1#a") == 1
    await pool.release("u1", reusable=False)
    assert d.destroyed == ["sb1"] and "ns/Pod/u1#a" not in pool.tracker._samples
    # persisted and read back with the flag
    await pool.acquire(spec("u3", key="ns/Pod/u3#c", single_use=True))
    pool2, _ = make(tmp_path, clock)
    records, _ = pool2.load()
    assert {(r.pod_uid, r.single_use) for r in records} == {("u2", False), ("u3", True)}
