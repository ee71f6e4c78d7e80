"""The one probe scheduler on a FakeClock: periods, jitter, dropped ticks, bounded concurrency, no
task per probe."""

from __future__ import annotations

import asyncio
import random

from common.clock import FakeClock
from provider.probes.manager import ProbeManager
from provider.probes.scheduler import ProbeScheduler
from sandbox.backend import BackendCapabilities


async def test_ticks_follow_the_period_inline_without_tasks() -> None:
    clock = FakeClock()
    ticks: list[tuple[str, float]] = []

    def tick(key: str) -> str | None:
        ticks.append((key, clock.monotonic()))
        return None

    async def run(key: str) -> None:
        raise AssertionError("no I/O asked")

    s: ProbeScheduler[str] = ProbeScheduler(clock, tick, run, {"exec": 2})
    before = len(asyncio.all_tasks())
    for i in range(500):
        s.add(f"p{i}", 10.0, i / 100)
    await clock.advance(0)
    assert len(asyncio.all_tasks()) - before <= 1  # the one pump of the timer heap
    await clock.advance(25)
    per = [t for k, t in ticks if k == "p7"]
    assert per == [1000.07, 1010.07, 1020.07]
    assert len(ticks) == 1500
    s.remove("p7")
    await clock.advance(10)
    assert [t for k, t in ticks if k == "p7"] == per
    await s.timers.close()


async def test_concurrency_is_bounded_per_lane_and_busy_ticks_are_dropped() -> None:
    clock = FakeClock()
    release = asyncio.Event()
    runs: list[str] = []

    async def run(key: str) -> None:
        runs.append(key)
        await release.wait()

    s: ProbeScheduler[str] = ProbeScheduler(
        clock, lambda k: "exec" if k.startswith("e") else "net", run, {"exec": 3, "net": 5}
    )
    for i in range(20):
        s.add(f"e{i}", 1.0, 0.0)
        s.add(f"n{i}", 1.0, 0.0)
    runner = asyncio.create_task(s.run())
    await clock.advance(0)
    await clock.advance(5)  # five more periods: every probe is still busy, its ticks dropped
    assert s.running == {"exec": 3, "net": 5}
    assert len(runs) == 8
    release.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert s.max_running == {"exec": 3, "net": 5}
    assert len(runs) == 40  # each queued probe ran once, the ticks that came while busy dropped
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)


async def test_trigger_runs_now_and_restarts_the_period() -> None:
    clock = FakeClock()
    ticks: list[float] = []
    s: ProbeScheduler[str] = ProbeScheduler(
        clock, lambda k: ticks.append(clock.monotonic()), _never, {"x": 1}
    )  # type: ignore[func-returns-value]
    s.add("a", 10.0, 0.0)
    await clock.advance(0)
    await clock.advance(3)
    s.trigger("a")
    await clock.advance(0)
    await clock.advance(10)
    assert ticks == [1000.0, 1003.0, 1013.0]
    await s.timers.close()


async def _never(key: str) -> None:
    raise AssertionError


class _Backend:
    capabilities = BackendCapabilities(runs_processes=False)


async def test_first_run_is_jittered_within_the_period_only_right_after_start() -> None:
    clock = FakeClock()
    m = ProbeManager(_Backend(), None, lambda uid: None, clock, rng=random.Random(7))  # type: ignore[arg-type]
    firsts = []
    for i in range(50):
        pod = {
            "metadata": {"uid": f"u{i}", "name": f"p{i}", "namespace": "ns"},
            "spec": {
                "containers": [
                    {"name": "a", "readinessProbe": {"exec": {"command": ["x"]}, "periodSeconds": 10}}
                ]
            },
        }
        m.update(pod, [], "")
        firsts.append(m.scheduler._entries[(f"u{i}", "a", next(iter(m.probes))[2])].due - clock.monotonic())
    assert all(0 <= f < 10 for f in firsts) and len(set(firsts)) == 50
    await clock.advance(11)  # kubelet jitters only within a period of its own start
    pod = {
        "metadata": {"uid": "late", "name": "late", "namespace": "ns"},
        "spec": {"containers": [{"name": "a", "readinessProbe": {"exec": {"command": ["x"]}}}]},
    }
    m.update(pod, [], "")
    assert m.scheduler._entries[("late", "a", next(iter(m.probes))[2])].due == clock.monotonic()
    await m.scheduler.timers.close()
