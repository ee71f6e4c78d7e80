"""testbed.wait: the one poll-until loop (blocking for the bed, async for tests and benches)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from testbed.wait import Poll, WaitTimeout, wait_for, wait_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_poll_gives_up_only_past_the_deadline_with_the_last_value() -> None:
    clock = FakeClock()
    poll = Poll("the thing", timeout=5, interval=1, clock=clock)
    assert not poll.done([])
    clock.now = 105.0
    assert poll.failure() is None  # at the deadline: one more try
    clock.now = 105.1
    err = poll.failure()
    assert isinstance(err, WaitTimeout) and isinstance(err, TimeoutError)
    assert str(err) == "timed out after 5s waiting for the thing; last=[]"
    assert poll.done({"ok": 1}) and poll.last == {"ok": 1}


def test_poll_fails_at_once_when_the_process_died_with_its_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "etcd.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    poll = Poll("etcd", timeout=60, interval=1, alive=lambda: False, log_path=log, clock=FakeClock())
    err = poll.failure()
    assert err is not None
    text = str(err)
    assert text.startswith("etcd: process exited\n--- last 40 lines of ")
    assert "line 99" in text and "line 59" not in text and "line 60" in text


def test_poll_message_is_bounded() -> None:
    poll = Poll("x", timeout=0, interval=1, clock=FakeClock())
    poll.done("y" * 10_000)
    poll.deadline -= 1
    err = poll.failure()
    assert err is not None and len(str(err)) <= 2000


def test_wait_until_treats_errors_as_not_yet_and_returns_the_value() -> None:
    calls = iter([ConnectionRefusedError("no"), 0, "ready"])

    def check() -> object:
        v = next(calls)
        if isinstance(v, Exception):
            raise v
        return v

    assert wait_until("svc", check, timeout=5, interval=0.001) == "ready"


def test_wait_until_times_out_naming_the_last_error() -> None:
    def check() -> bool:
        raise ConnectionRefusedError("refused")

    with pytest.raises(WaitTimeout, match=r"waiting for svc; last=ConnectionRefusedError\('refused'\)"):
        wait_until("svc", check, timeout=0.02, interval=0.005)


def test_wait_until_stops_when_the_process_dies() -> None:
    with pytest.raises(WaitTimeout, match="svc: process exited"):
        wait_until("svc", lambda: False, timeout=60, interval=0.001, alive=lambda: False)


async def test_wait_for_returns_the_first_truthy_value() -> None:
    values = iter([None, [], [1, 2]])

    async def fn() -> list[int] | None:
        return next(values)

    assert await wait_for(fn, 5, 0.001, "pods") == [1, 2]


async def test_wait_for_lets_errors_of_fn_through() -> None:
    async def fn() -> bool:
        raise KeyError("bug in the test")

    with pytest.raises(KeyError):
        await wait_for(fn, 5, 0.001)


async def test_wait_for_times_out_with_what_and_last() -> None:
    async def fn() -> int:
        await asyncio.sleep(0)
        return 0

    with pytest.raises(TimeoutError, match=r"timed out after 0.02s waiting for node Ready; last=0"):
        await wait_for(fn, 0.02, 0.005, "node Ready")
