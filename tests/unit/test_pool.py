"""WarmPool with a fake driver: reuse only within key+namespace, scrub, eviction, prewarm, upkeep, state."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from sandbox.backend import BackendError, PodSandboxSpec
from sandbox.pool import SandboxRecord, WarmPool
from sandbox.pool_policy import ANNOTATION_MIN, ANNOTATION_POOL, PoolDefaults


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


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(tmp_path: Path, clock: Clock, **kw: object) -> tuple[WarmPool, FakeDriver]:
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
    clock.t += 10_000
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
    clock.t += 1e6  # TTL never trims below min
    await pool.maintain()
    assert len(pool.idle("k")) == 2


async def test_global_cap_evicts_lru_on_release(tmp_path: Path, clock: Clock) -> None:
    pool, d = make(tmp_path, clock, global_max_sandboxes=1)
    await pool.acquire(spec("a", key="ka"))
    await pool.acquire(spec("b", key="kb"))
    await pool.release("a", True)
    clock.t += 1
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


async def test_maintenance_loop_cancels_cleanly(tmp_path: Path, clock: Clock) -> None:
    pool, _ = make(tmp_path, clock)
    pool.start_maintenance(0.01)
    await asyncio.sleep(0.05)
    await pool.stop_maintenance()
    assert pool._maint_task is None


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
