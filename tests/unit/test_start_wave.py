"""The start wave (provider/pods/start_wave.py) on a fake clock: one timer per instant, never a start
before the instant, bounded concurrency, re-alignment on a wall-clock jump, release after the wave."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from common.clock import FakeClock
from provider.pods.start_wave import REALIGN_SECONDS, HeldPod, StartWave
from sandbox.backend import BackendError, RuntimeUnavailableError


class JumpClock(FakeClock):
    def jump(self, seconds: float) -> None:
        """The wall clock is stepped; the monotonic clock is not."""
        self._wall_offset += seconds


class FakeRuntime:
    """StartContainer takes ``call_seconds`` of the clock; records when each start began and ended
    and the most calls ever in flight."""

    def __init__(self, clock: FakeClock, call_seconds: float = 0.0) -> None:
        self.clock = clock
        self.call_seconds = call_seconds
        self.began: dict[str, float] = {}
        self.started: dict[str, float] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail: dict[str, BackendError] = {}

    async def start_container(self, cid: str) -> None:
        self.began[cid] = self.clock.time()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.call_seconds:
                await self.clock.sleep(self.call_seconds)
            if cid in self.fail:
                raise self.fail[cid]
            self.started[cid] = self.clock.time()
        finally:
            self.in_flight -= 1


@pytest.fixture
def clock() -> JumpClock:
    return JumpClock()


class Harness:
    def __init__(self, clock: JumpClock, concurrency: int = 4, call_seconds: float = 0.0) -> None:
        self.clock = clock
        self.runtime = FakeRuntime(clock, call_seconds)
        self.released: list[HeldPod] = []
        self.released_at: list[float] = []
        self.wave = StartWave(self.runtime, concurrency, self._released, clock)  # type: ignore[arg-type]

    def _released(self, p: HeldPod) -> None:
        self.released.append(p)
        self.released_at.append(self.clock.time())

    def hold(self, uid: str, instant: float, n: int = 1, hook: str = "") -> HeldPod:
        p = HeldPod(uid, instant, [(f"c{i}", f"{uid}-c{i}") for i in range(n)], hook)
        self.wave.hold(p)
        return p


@pytest.fixture
async def h(clock: JumpClock) -> AsyncIterator[Harness]:
    harness = Harness(clock)
    yield harness
    await harness.wave.close()


async def test_nothing_starts_before_the_instant_and_everything_at_it(h: Harness, clock: JumpClock) -> None:
    instant = clock.time() + 30.0
    for i in range(50):
        h.hold(f"p{i}", instant, n=2)
    assert len(h.wave.timers) == 1  # one timer for the instant, however many pods
    assert h.wave.holding("p0") == instant and len(h.wave) == 50
    await clock.advance(30.0 - 0.001)
    assert h.runtime.began == {}
    await clock.advance(0.001)
    assert len(h.runtime.started) == 100
    assert min(h.runtime.began.values()) >= instant
    assert max(h.runtime.started.values()) == instant  # zero-cost starts: all at the instant
    assert sorted(p.uid for p in h.released) == sorted(f"p{i}" for i in range(50))
    assert all(p.started == ["c0", "c1"] for p in h.released)
    assert len(h.wave) == 0 and h.wave.holding("p0") is None


async def test_concurrency_is_bounded_and_used(clock: JumpClock) -> None:
    h = Harness(clock, concurrency=6, call_seconds=0.1)
    try:
        instant = clock.time() + 5.0
        for i in range(30):
            h.hold(f"p{i}", instant)
        assert h.wave.idle.is_set()
        await clock.advance(5.0)
        assert not h.wave.idle.is_set()  # the starts take the clock's time
        await clock.run_until_idle()
        assert h.wave.idle.is_set()
        assert len(h.runtime.started) == 30
        assert h.runtime.max_in_flight == 6
        # 30 starts of 0.1 s, 6 at a time: done 0.5 s after the instant; released only then
        assert max(h.runtime.started.values()) == pytest.approx(instant + 0.5)
        assert h.released_at and min(h.released_at) == pytest.approx(instant + 0.5)
    finally:
        await h.wave.close()


async def test_a_pod_starts_its_containers_in_order_one_at_a_time(clock: JumpClock) -> None:
    h = Harness(clock, concurrency=8, call_seconds=0.1)
    try:
        instant = clock.time() + 1.0
        h.hold("p", instant, n=3)
        await clock.advance(1.0)
        await clock.run_until_idle()
        began = [h.runtime.began[f"p-c{i}"] for i in range(3)]
        assert began == pytest.approx([instant, instant + 0.1, instant + 0.2])
        assert h.runtime.max_in_flight == 1
    finally:
        await h.wave.close()


async def test_wall_clock_jump_back_re_aligns_never_early(h: Harness, clock: JumpClock) -> None:
    instant = clock.time() + 10.0
    h.hold("p", instant)
    await clock.advance(5.0)
    clock.jump(-3.0)  # the wall clock stepped back: the instant is now 8 s ahead, not 5
    await clock.advance(5.0)  # the old monotonic deadline
    assert h.runtime.began == {}
    await clock.advance(2.999)
    assert h.runtime.began == {}
    await clock.advance(0.001 + REALIGN_SECONDS)
    assert h.runtime.began == {"p-c0": pytest.approx(instant)}


async def test_wall_clock_jump_forward_starts_within_a_realign_period(h: Harness, clock: JumpClock) -> None:
    instant = clock.time() + 60.0
    h.hold("p", instant)
    await clock.advance(10.0)
    clock.jump(40.0)  # the instant is now 10 s ahead, not 50
    await clock.advance(10.0 + REALIGN_SECONDS)
    assert "p-c0" in h.runtime.began
    assert instant <= h.runtime.began["p-c0"] <= instant + REALIGN_SECONDS


async def test_instants_have_their_own_waves(h: Harness, clock: JumpClock) -> None:
    t1, t2 = clock.time() + 10.0, clock.time() + 20.0
    h.hold("a", t1)
    h.hold("b", t2)
    assert len(h.wave.timers) == 2
    await clock.advance(10.0)
    assert set(h.runtime.started) == {"a-c0"}
    await clock.advance(10.0)
    assert h.runtime.started == {"a-c0": t1, "b-c0": t2}


async def test_forget_and_re_hold(h: Harness, clock: JumpClock) -> None:
    t1 = clock.time() + 10.0
    h.hold("gone", t1)
    h.hold("moved", t1)
    h.wave.forget("gone")  # deleted before the instant: never started
    h.hold("moved", t1 + 5.0)  # its instant changed: held until the new one
    await clock.advance(10.0)
    assert h.runtime.began == {}
    await clock.advance(5.0)
    assert set(h.runtime.started) == {"moved-c0"}
    assert [p.uid for p in h.released] == ["moved"]
    h.wave.forget("never-held")  # harmless


async def test_a_failed_start_stops_that_pod_only(h: Harness, clock: JumpClock) -> None:
    instant = clock.time() + 1.0
    h.runtime.fail["bad-c0"] = RuntimeUnavailableError("containerd down")
    h.hold("bad", instant, n=2)
    h.hold("good", instant, n=2)
    await clock.advance(1.0)
    by_uid = {p.uid: p for p in h.released}
    assert by_uid["good"].started == ["c0", "c1"] and by_uid["good"].error is None
    assert by_uid["bad"].started == [] and isinstance(by_uid["bad"].error, RuntimeUnavailableError)
    assert "bad-c1" not in h.runtime.began  # the pod's sync takes over from there


async def test_pods_being_started_stay_held_until_the_wave_is_over(clock: JumpClock) -> None:
    h = Harness(clock, concurrency=1, call_seconds=0.5)
    try:
        instant = clock.time() + 1.0
        h.hold("a", instant)
        h.hold("b", instant)
        await clock.advance(1.0)
        assert h.wave.starting("a") and h.wave.starting("b")
        h.hold("a", instant + 100)  # a sync cannot move a pod out of its running wave
        await clock.advance(0.5)
        assert "a-c0" in h.runtime.started and h.wave.starting("a")  # started, not yet released
        assert h.released == []
        await clock.advance(0.5)
        assert [p.uid for p in h.released] == ["a", "b"]
        assert not h.wave.starting("a")
    finally:
        await h.wave.close()


async def test_close_cancels_a_wave_under_way(clock: JumpClock) -> None:
    h = Harness(clock, concurrency=2, call_seconds=10.0)
    instant = clock.time() + 1.0
    for i in range(4):
        h.hold(f"p{i}", instant)
    await clock.advance(1.0)
    assert h.runtime.in_flight == 2
    await h.wave.close()
    await asyncio.sleep(0)
    assert h.runtime.in_flight == 0 and h.released == []
    assert not [t for t in asyncio.all_tasks() if t.get_name() in ("start-wave", "start-wave-timers")]
