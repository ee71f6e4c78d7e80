"""common.retry: the back-off policy (pure) and the retry/periodic loops on a FakeClock."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.clock import FakeClock
from common.retry import STOP, Backoff, doubling, periodic, retry, sleep_or_wake


async def settle() -> None:
    """Let ready tasks run up to their next sleep (a wake-able sleep takes a few loop turns)."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_backoff_doubles_up_to_the_cap_without_jitter() -> None:
    b = Backoff(base=0.2, cap=7.0, jitter=0.0)
    assert [b.delay(n) for n in range(1, 7)] == pytest.approx([0.4, 0.8, 1.6, 3.2, 6.4, 7.0])
    assert b.delay(10_000) == 7.0  # a huge attempt count does not overflow


def test_backoff_jitter_spans_half_to_full() -> None:
    b = Backoff(base=0.5, cap=10.0)
    assert b.delay(1, 0.0) == pytest.approx(0.5)
    assert b.delay(1, 1.0) == pytest.approx(1.0)
    assert b.delay(5, 0.5) == pytest.approx(10.0 * 0.75)


@given(
    st.floats(0.01, 5),
    st.floats(0, 100),
    st.floats(1, 4),
    st.floats(0, 0.99),
    st.integers(-3, 200),
    st.floats(0, 1),
)
def test_backoff_bounds_and_monotonic(
    base: float, extra: float, factor: float, jitter: float, attempt: int, rand: float
) -> None:
    b = Backoff(base=base, cap=base + extra, factor=factor, jitter=jitter)
    d = b.delay(attempt, rand)
    assert 0 < d <= b.cap + 1e-9
    assert d >= min(b.cap, base) * (1 - jitter) - 1e-9  # never zero: no spinning
    assert b.delay(attempt + 1, rand) >= d - 1e-9


@pytest.mark.parametrize("bad", [{"base": 0}, {"cap": 0.1, "base": 1}, {"factor": 0.5}, {"jitter": 1}])
def test_backoff_rejects_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**bad)


async def test_retry_backs_off_between_failures_and_returns_the_result() -> None:
    clock = FakeClock()
    calls: list[float] = []
    errors: list[int] = []

    async def step() -> str:
        calls.append(clock.monotonic())
        if len(calls) < 4:
            raise OSError("down")
        return "ok"

    task = asyncio.create_task(
        retry(
            step, Backoff(base=1.0, cap=3.0, jitter=0.0), clock=clock, on_error=lambda e, n: errors.append(n)
        )
    )
    await settle()
    await clock.run_until_idle()
    assert task.result() == "ok"
    start = calls[0]
    assert [c - start for c in calls] == [0.0, 2.0, 5.0, 8.0]  # 2, 3 (cap), 3
    assert errors == [1, 2, 3]


async def test_retry_fatal_errors_propagate_at_once() -> None:
    clock = FakeClock()

    async def step() -> None:
        raise KeyError("fatal")

    with pytest.raises(KeyError):
        await retry(step, clock=clock, fatal=(KeyError,))


async def test_retry_cancellation_leaves_no_sleeper() -> None:
    clock = FakeClock()

    async def step() -> None:
        raise OSError

    task = asyncio.create_task(retry(step, clock=clock, on_error=lambda e, n: None))
    await asyncio.sleep(0)
    assert clock.sleepers == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.sleepers == 0


async def test_periodic_steps_every_interval_and_backs_off_on_failure() -> None:
    clock = FakeClock(start=0.0)
    times: list[float] = []
    outcomes = iter(["ok", "fail", "fail", "ok", "stop"])

    async def step() -> object:
        times.append(clock.monotonic())
        o = next(outcomes)
        if o == "fail":
            raise OSError
        return STOP if o == "stop" else None

    task = asyncio.create_task(
        periodic(step, 10.0, clock=clock, backoff=Backoff(base=1.0, jitter=0.0), on_error=lambda e, n: None)
    )
    await settle()
    await clock.run_until_idle()
    assert task.done() and task.result() is None
    # ok at 0, then +10; fail -> back-off 2; fail -> back-off 4; ok -> +10; stop
    assert times == [0.0, 10.0, 12.0, 16.0, 26.0]


async def test_periodic_without_backoff_waits_the_interval_after_errors() -> None:
    clock = FakeClock(start=0.0)
    times: list[float] = []

    async def step() -> object:
        times.append(clock.monotonic())
        if len(times) == 3:
            return STOP
        raise OSError

    task = asyncio.create_task(periodic(step, lambda: 3.0, clock=clock, on_error=lambda e, n: None))
    await settle()
    await clock.run_until_idle()
    assert task.done()
    assert times == [0.0, 3.0, 6.0]


async def test_periodic_wait_first_and_wake() -> None:
    clock = FakeClock(start=0.0)
    wake = asyncio.Event()
    times: list[tuple[float, bool]] = []

    async def step() -> None:
        times.append((clock.monotonic(), wake.is_set()))
        wake.clear()

    task = asyncio.create_task(periodic(step, 5.0, clock=clock, wake=wake, wait_first=True))
    await settle()
    await clock.advance(4.0)
    assert times == []  # waits first
    await clock.advance(1.0)
    assert times == [(5.0, False)]
    await clock.advance(1.0)
    wake.set()
    await settle()
    assert times[-1] == (6.0, True)  # woken at once, not at 10
    await clock.advance(5.0)
    await settle()
    assert times[-1] == (11.0, False)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.sleepers == 0


async def test_periodic_wait_first_error_waits_the_back_off_instead_of_the_interval() -> None:
    clock = FakeClock(start=0.0)
    times: list[float] = []
    recovered: list[int] = []

    async def step() -> object:
        times.append(clock.monotonic())
        if len(times) <= 2:
            raise OSError
        return STOP if len(times) == 4 else None

    task = asyncio.create_task(
        periodic(
            step,
            5.0,
            clock=clock,
            wait_first=True,
            backoff=doubling(5.0, 12.0),
            on_error=lambda e, n: None,
            on_recovery=recovered.append,
        )
    )
    await settle()
    await clock.run_until_idle()
    assert task.done()
    # 5, fail, back-off 10, fail, back-off 20 capped at 12, works: the interval 5 again
    assert times == [5.0, 15.0, 27.0, 32.0]
    assert recovered == [2]


async def test_a_failing_error_hook_does_not_end_the_loop() -> None:
    clock = FakeClock(start=0.0)
    n = 0

    async def step() -> object:
        nonlocal n
        n += 1
        if n < 3:
            raise OSError
        return STOP

    def hook(e: Exception, failures: int) -> None:
        raise RuntimeError("hook broke")

    task = asyncio.create_task(periodic(step, 1.0, clock=clock, on_error=hook))
    await settle()
    await clock.run_until_idle()
    assert task.done() and n == 3


async def test_sleep_or_wake() -> None:
    clock = FakeClock(start=0.0)
    ev = asyncio.Event()
    ev.set()
    assert await sleep_or_wake(clock, 100.0, ev) is True  # already set: no sleep
    ev.clear()
    task = asyncio.create_task(sleep_or_wake(clock, 3.0, ev))
    await settle()
    await clock.advance(3.0)
    assert task.result() is False
    assert clock.sleepers == 0
    task = asyncio.create_task(sleep_or_wake(clock, 3.0, None))
    await settle()
    await clock.advance(3.0)
    assert task.result() is False
