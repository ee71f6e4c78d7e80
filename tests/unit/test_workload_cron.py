"""CronJob prewarming decisions: next firing, lead time, node targeting, spec and key."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from common.clock import FakeClock
from common.retry import SLOW_BACKOFF
from provider.config import WarmletConfig
from provider.cron_prewarm import CronPrewarmer, next_fire, prewarm_spec, targets_node
from provider.scheduling import tolerates
from provider.workload import cronjob_key

TAINT = {"key": "virtual-kubelet.io/provider", "value": "warmlet", "effect": "NoSchedule"}
TOL = [{"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}]


def ts(s: str) -> float:
    return datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp()


def cj(schedule: str = "* * * * *", tolerations: Any = TOL, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "tick", "namespace": "ns", "uid": "cj1"},
        "spec": {
            "schedule": schedule,
            **spec,
            "jobTemplate": {
                "spec": {
                    "parallelism": 3,
                    "template": {
                        "metadata": {"labels": {"app": "tick"}},
                        "spec": {
                            "tolerations": tolerations,
                            "containers": [{"name": "c", "image": "busybox:1"}],
                        },
                    },
                }
            },
        },
    }


def test_next_fire() -> None:
    now = ts("2026-01-01T00:00:30")
    assert next_fire(cj(), now) == ts("2026-01-01T00:01:00")
    assert next_fire(cj("0 * * * *"), now) == ts("2026-01-01T01:00:00")
    assert next_fire(cj(suspend=True), now) is None
    assert next_fire(cj("not a schedule"), now) is None
    # 00:00 in Paris is 23:00 UTC in winter
    assert next_fire(cj("0 0 * * *", timeZone="Europe/Paris"), now) == ts("2026-01-01T23:00:00")


def test_tolerations_and_targeting() -> None:
    assert tolerates(TOL, TAINT)
    assert tolerates([{"operator": "Exists"}], TAINT)
    assert not tolerates([{"key": "other", "operator": "Exists"}], TAINT)
    assert tolerates([{"key": TAINT["key"], "value": "warmlet"}], TAINT)
    assert not tolerates([{"key": TAINT["key"], "value": "x"}], TAINT)
    labels = {"kubernetes.io/hostname": "vn", "type": "virtual-kubelet"}
    assert targets_node({"tolerations": TOL}, labels, [TAINT])
    assert not targets_node({}, labels, [TAINT])
    assert targets_node({}, labels, [])
    assert not targets_node({"tolerations": TOL, "nodeSelector": {"type": "real"}}, labels, [TAINT])
    assert not targets_node({"tolerations": TOL, "nodeName": "other"}, labels, [TAINT])


def test_prewarm_spec_uses_cronjob_key() -> None:
    spec, count = prewarm_spec(cj(), WarmletConfig().pods)
    assert spec.workload_key == cronjob_key(cj()) and spec.workload_key.startswith("ns/CronJob/tick#")
    assert count == 3 and spec.namespace == "ns" and spec.images == ["busybox:1"]


class FakeBackend:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def prewarm(self, pod: Any, count: int) -> int:
        self.calls.append((pod.workload_key, count))
        return count


async def test_tick_prewarms_once_per_firing_within_lead() -> None:
    cfg = WarmletConfig()
    cfg.pool.cron_lead_seconds = 20
    backend = FakeBackend()
    pw = CronPrewarmer(cfg.pool, cfg.pods, None, backend, {"kubernetes.io/hostname": "vn"}, [TAINT])  # type: ignore[arg-type]
    pw.cronjobs = {
        "cj1": cj(),
        "cj2": {**cj(tolerations=[]), "metadata": {"name": "x", "namespace": "ns", "uid": "cj2"}},
    }
    assert await pw.tick(ts("2026-01-01T00:00:30")) == 0  # 30 s before: outside the lead time
    assert await pw.tick(ts("2026-01-01T00:00:45")) == 3
    assert await pw.tick(ts("2026-01-01T00:00:50")) == 0  # same firing: once
    assert await pw.tick(ts("2026-01-01T00:01:45")) == 3  # next firing
    assert backend.calls == [(cronjob_key(cj()), 3)] * 2


class SlowBackend:
    """Each prewarm takes a second on the clock; records how many run at once."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.running = 0
        self.peak = 0

    async def prewarm(self, pod: Any, count: int) -> int:
        self.running += 1
        self.peak = max(self.peak, self.running)
        await self.clock.sleep(1.0)
        self.running -= 1
        return count


async def test_tick_prewarms_due_cronjobs_concurrently_and_bounded() -> None:
    cfg = WarmletConfig()
    cfg.pool.cron_lead_seconds = 20
    clock = FakeClock()
    backend = SlowBackend(clock)
    pw = CronPrewarmer(cfg.pool, cfg.pods, None, backend, {"kubernetes.io/hostname": "vn"}, [TAINT])  # type: ignore[arg-type]
    pw.cronjobs = {
        f"cj{i}": {**cj(), "metadata": {"name": f"t{i}", "namespace": "ns", "uid": f"cj{i}"}}
        for i in range(20)
    }
    tick = asyncio.create_task(pw.tick(ts("2026-01-01T00:00:45")))
    for _ in range(50):
        if clock.sleepers:
            break
        await asyncio.sleep(0)
    assert clock.sleepers == pw.concurrency == 8  # concurrent, at most 8 at once
    await clock.advance(2.0)
    assert not tick.done()  # 20 in waves of 8: three seconds, not one, not twenty
    await clock.advance(1.0)
    assert tick.done() and tick.result() == 20 * 3
    assert backend.peak == 8
    assert await pw.tick(ts("2026-01-01T00:00:50")) == 0  # same firing: once


async def test_run_relists_and_ticks_on_its_clock() -> None:
    class Client:
        def __init__(self) -> None:
            self.lists = 0

        async def list_all(self, path: str) -> dict[str, Any]:
            self.lists += 1
            return {"items": [cj()]}

    cfg = WarmletConfig()
    cfg.pool.cron_lead_seconds = 20
    clock = FakeClock(start=0.0, wall_offset=ts("2026-01-01T00:00:30"))  # the job fires at :01:00
    client, backend = Client(), FakeBackend()
    pw = CronPrewarmer(
        cfg.pool,
        cfg.pods,
        client,  # type: ignore[arg-type]
        backend,  # type: ignore[arg-type]
        {"kubernetes.io/hostname": "vn"},
        [TAINT],
        15.0,
        clock=clock,
    )
    task = asyncio.create_task(pw.run())
    await clock.advance(0)
    assert client.lists == 1 and backend.calls == []
    await clock.advance(9.0)  # 21 s before the firing: not yet
    assert backend.calls == []
    await clock.advance(1.0)  # 20 s before: within the lead time
    assert backend.calls == [(cronjob_key(cj()), 3)]
    await clock.advance(6.0)
    assert client.lists == 2  # relisted every 15 s
    assert len(backend.calls) == 1  # one firing, one prewarm
    task.cancel()


async def test_run_backs_off_after_a_failed_list() -> None:
    class Flaky:
        def __init__(self) -> None:
            self.lists = 0

        async def list_all(self, path: str) -> dict[str, Any]:
            self.lists += 1
            if self.lists <= 2:
                raise OSError("apiserver away")
            return {"items": []}

    cfg = WarmletConfig()
    clock = FakeClock(start=0.0)
    client = Flaky()
    pw = CronPrewarmer(cfg.pool, cfg.pods, client, FakeBackend(), {}, [], clock=clock)  # type: ignore[arg-type]
    task = asyncio.create_task(pw.run())
    await clock.advance(0)
    assert client.lists == 1
    await clock.advance(SLOW_BACKOFF.delay(1, 0.0) - 0.01)  # not before the shortest back-off
    assert client.lists == 1
    await clock.advance(SLOW_BACKOFF.delay(1) + SLOW_BACKOFF.delay(2))  # the longest two
    assert client.lists == 3
    assert pw.cronjobs == {}
    task.cancel()
