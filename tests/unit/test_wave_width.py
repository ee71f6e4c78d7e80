"""provider/pods/wave_width.py (the start wave's hill climb) and the adaptive start wave on a fake
runtime whose start rate peaks at one width."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.clock import FakeClock
from provider.pods import wave_width as ww
from provider.pods.start_wave import HeldPod, StartWave

RATES = st.dictionaries(st.integers(1, 64), st.floats(0.1, 1000.0), max_size=12)


def test_bounds_and_steps() -> None:
    assert ww.Bounds.around(6) == ww.Bounds(6, 1, 24)
    assert ww.Bounds.around(512) == ww.Bounds(512, 128, 2048)
    assert ww.Bounds.around(0) == ww.Bounds(1, 1, 4)
    assert [ww.step_of(w) for w in (1, 2, 4, 6, 8, 512)] == [1, 1, 1, 2, 3, 171]
    assert [ww.window_of(w) for w in (1, 2, 6, 16)] == [4, 4, 12, 32]


def test_learn_is_a_moving_average_per_width() -> None:
    r = ww.learn({}, 6, 30.0)
    assert r == {6: 30.0}
    r2 = ww.learn(r, 6, 20.0)
    assert r2 == {6: 25.0} and r == {6: 30.0}  # a new dict, the old one untouched
    assert ww.learn(r2, 8, 40.0) == {6: 25.0, 8: 40.0}


def test_choose_climbs_to_the_best_width() -> None:
    b = ww.Bounds.around(6)
    assert ww.choose({}, b) == 6  # nothing measured: the backend's figure
    assert ww.choose({6: 30.0}, b) == 8  # up first
    assert ww.choose({6: 30.0, 8: 25.0}, b) == 4  # up was worse: down
    assert ww.choose({6: 30.0, 8: 25.0, 4: 28.0}, b) == 6  # both neighbours worse: stay
    assert ww.choose({6: 30.0, 8: 35.0}, b) == 11  # up was better: further up
    assert ww.choose({1: 5.0}, ww.Bounds(1, 1, 2)) == 2
    assert ww.choose({1: 5.0, 2: 4.0}, ww.Bounds(1, 1, 2)) == 1  # 0 is below the bounds


@settings(max_examples=300, deadline=None)
@given(rates=RATES, start=st.integers(1, 64))
def test_choose_stays_in_bounds_and_goes_to_the_best_once_its_neighbours_are_known(
    rates: dict[int, float], start: int
) -> None:
    b = ww.Bounds.around(start)
    w = ww.choose(rates, b)
    assert b.low <= w <= b.high
    if not rates:
        assert w == b.start
        return
    top = ww.best(rates, b.start)
    near = [top + ww.step_of(top), top - ww.step_of(top)]
    if all(n in rates or not b.low <= n <= b.high for n in near):
        assert w == min(b.high, max(b.low, top))
    else:
        assert w in near and w not in rates


class PeakedRuntime:
    """StartContainer slows down with the calls in flight so that starts/s peak at ``peak``."""

    def __init__(self, clock: FakeClock, peak: int = 8, base: float = 0.1) -> None:
        self.clock, self.peak, self.base = clock, peak, base
        self.in_flight = 0
        self.started = 0

    async def start_container(self, cid: str) -> None:
        self.in_flight += 1
        try:
            await self.clock.sleep(self.base * (1 + (self.in_flight / self.peak) ** 2))
            self.started += 1
        finally:
            self.in_flight -= 1


async def _wave(wave: StartWave, clock: FakeClock, pods: int) -> float:
    instant = clock.time() + 1.0
    for i in range(pods):
        wave.hold(HeldPod(f"p{i}-{instant}", instant, [("c", f"c{i}-{instant}")]))
    await clock.advance(1.0)
    await clock.run_until_idle()
    return clock.time() - instant


@pytest.mark.parametrize("start", [2, 24])
async def test_the_adaptive_wave_finds_the_runtimes_best_width(start: int) -> None:
    clock = FakeClock()
    runtime = PeakedRuntime(clock)
    released: list[HeldPod] = []
    wave = StartWave(runtime, start, released.append, clock, adaptive=True)  # type: ignore[arg-type]
    fixed = StartWave(PeakedRuntime(clock), start, lambda p: None, clock)  # type: ignore[arg-type]
    try:
        took = await _wave(wave, clock, 600)
        took_fixed = await _wave(fixed, clock, 600)
        assert runtime.started == 600 and len(released) == 600
        assert 5 <= ww.best(wave.rates, start) <= 12  # the peak is at 8
        assert took < 0.9 * took_fixed  # a wrong fixed width is slower
        assert 5 <= wave.concurrency <= 12
        again = await _wave(wave, clock, 600)  # the next wave starts from what was learnt
        assert again <= took
    finally:
        await wave.close()
        await fixed.close()
