"""Leader election decisions (pure): observe, expiry by our own clock, acquire/renew/wait, release."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.clock import FakeClock
from provider.kubeclient import ApiError
from provider.leader_election import (
    LeaderElector,
    LeaseRecord,
    Observation,
    decide,
    expired,
    lease_body,
    next_try,
    observe,
    parse_lease,
    released,
    renew_deadline_passed,
    validate_timings,
)

ME, OTHER = "me_1", "other_2"

records = st.builds(
    LeaseRecord,
    holder=st.sampled_from(["", ME, OTHER, "third"]),
    duration_seconds=st.integers(1, 60),
    acquire_time=st.one_of(st.none(), st.floats(0, 1e6)),
    renew_time=st.one_of(st.none(), st.floats(0, 1e6)),
    transitions=st.integers(0, 1000),
    resource_version=st.text("0123456789", min_size=1, max_size=6),
)


def test_no_lease_creates_it() -> None:
    d = decide(observe(Observation(), None, 100.0), ME, 100.0, 10)
    assert d.action == "create" and d.acquiring
    assert d.record == LeaseRecord(ME, 10, 100.0, 100.0, 0)


def test_held_lease_waits_until_unchanged_for_its_duration_by_our_clock() -> None:
    rec = LeaseRecord(OTHER, 10, 0.0, 5.0, 3, "7")
    obs = observe(Observation(), rec, 1000.0)  # the holder's renewTime is old: our clock decides
    assert decide(obs, ME, 1000.0, 10).action == "wait"
    obs = observe(obs, rec, 1009.9)
    assert decide(obs, ME, 1009.9, 10).action == "wait"
    obs = observe(obs, rec, 1010.0)
    d = decide(obs, ME, 1010.0, 10)
    assert d.action == "update" and d.acquiring and d.record is not None
    assert (d.record.holder, d.record.transitions, d.record.acquire_time) == (ME, 4, 1010.0)
    assert d.record.resource_version == "7"  # optimistic concurrency: the PUT carries what we read


def test_a_renewal_restarts_the_standby_clock() -> None:
    obs = observe(Observation(), LeaseRecord(OTHER, 10, 0.0, 5.0, 0, "7"), 1000.0)
    obs = observe(obs, LeaseRecord(OTHER, 10, 0.0, 7.0, 0, "8"), 1008.0)
    assert decide(observe(obs, obs.record, 1015.0), ME, 1015.0, 10).action == "wait"
    assert decide(observe(obs, obs.record, 1018.0), ME, 1018.0, 10).action == "update"


def test_released_lease_is_taken_at_once() -> None:
    rec = released(LeaseRecord(OTHER, 10, 0.0, 5.0, 2, "9"), OTHER, 6.0)
    assert rec is not None and rec.holder == "" and rec.duration_seconds == 1
    d = decide(observe(Observation(), rec, 6.0), ME, 6.0, 10)
    assert d.action == "update" and d.acquiring and d.record is not None and d.record.transitions == 3


def test_release_of_someone_elses_lease_is_nothing() -> None:
    assert released(LeaseRecord(OTHER, 10, 0.0, 5.0, 2, "9"), ME, 6.0) is None


def test_renew_keeps_acquire_time_and_transitions() -> None:
    rec = LeaseRecord(ME, 10, 50.0, 90.0, 5, "11")
    d = decide(observe(Observation(), rec, 100.0), ME, 100.0, 10)
    assert d.action == "update" and not d.acquiring and d.record is not None
    assert (d.record.acquire_time, d.record.renew_time, d.record.transitions) == (50.0, 100.0, 5)


@settings(max_examples=400, deadline=None)
@given(prev=st.one_of(st.none(), records), rec=records, t0=st.floats(0, 1e6), dt=st.floats(0, 100))
def test_decide_properties(prev: LeaseRecord | None, rec: LeaseRecord, t0: float, dt: float) -> None:
    obs = observe(observe(Observation(), prev, t0), rec, t0 + dt)
    now = t0 + dt
    d = decide(obs, ME, now, 10)
    if rec.holder == ME:
        # our own lease: always renewed, never counted as a transition
        assert d.action == "update" and not d.acquiring and d.record is not None
        assert d.record.transitions == rec.transitions and d.record.renew_time == now
    elif rec.holder and not expired(obs, now):
        assert d.action == "wait" and d.record is None
    else:
        assert d.action == "update" and d.acquiring and d.record is not None
        assert d.record.holder == ME and d.record.transitions == rec.transitions + 1
    if d.record is not None:
        assert d.record.resource_version == rec.resource_version
        assert d.record.duration_seconds == 10


@settings(max_examples=300, deadline=None)
@given(rec=records, seen=st.floats(0, 1e6), dt=st.floats(0, 200))
def test_a_live_holder_is_never_deposed(rec: LeaseRecord, seen: float, dt: float) -> None:
    """Whatever its own clock says, a holder that keeps changing the record within its duration
    never looks expired to a standby."""
    if not rec.holder or rec.holder == ME:
        return
    obs = observe(Observation(), rec, seen)
    renewed = LeaseRecord(
        rec.holder,
        rec.duration_seconds,
        rec.acquire_time,
        (rec.renew_time or 0) + 1,
        rec.transitions,
        rec.resource_version + "1",
    )
    now = seen + min(dt, rec.duration_seconds - 0.001)
    obs2 = observe(obs, renewed, now)
    assert not expired(obs2, now + rec.duration_seconds - 0.001)
    assert decide(obs2, ME, now, 10).action == "wait"


@settings(max_examples=200, deadline=None)
@given(rec=records, t=st.floats(0, 1e6))
def test_observe_is_idempotent_for_the_same_record(rec: LeaseRecord, t: float) -> None:
    obs = observe(Observation(), rec, t)
    assert observe(obs, rec, t + 50) == obs


@given(rec=records, seen=st.floats(0, 1e6), dt=st.floats(0, 100), retry=st.floats(0.1, 5))
def test_next_try_never_waits_past_expiry_or_a_period(
    rec: LeaseRecord, seen: float, dt: float, retry: float
) -> None:
    obs = observe(Observation(), rec, seen)
    wait = next_try(obs, seen + dt, retry)
    assert 0.05 <= wait <= max(retry, 0.05)
    if rec.holder and not expired(obs, seen + dt):
        assert seen + dt + wait >= obs.observed_at + rec.duration_seconds or wait == retry


@given(last=st.floats(0, 1e6), dt=st.floats(0, 100), deadline=st.floats(0.1, 60))
def test_renew_deadline(last: float, dt: float, deadline: float) -> None:
    assert renew_deadline_passed(last, last + dt, deadline) == ((last + dt) - last >= deadline)


def test_lease_body_round_trips() -> None:
    rec = LeaseRecord(ME, 10, 1700000000.0, 1700000005.0, 2, "42")
    back = parse_lease(lease_body("n", "ns", rec))
    assert back == rec
    body = lease_body("n", "ns", LeaseRecord(ME, 10, None, None, 0, ""))
    assert "resourceVersion" not in body["metadata"] and "renewTime" not in body["spec"]


@pytest.mark.parametrize(
    ("duration", "deadline", "retry", "ok"),
    [(10, 8, 2, True), (10, 10, 2, False), (10, 2, 2, False), (15, 10, 2, True), (10, 8, 0, False)],
)
def test_validate_timings(duration: float, deadline: float, retry: float, ok: bool) -> None:
    if ok:
        validate_timings(duration, deadline, retry)
    else:
        with pytest.raises(ValueError):
            validate_timings(duration, deadline, retry)


class FakeLeases:
    """An apiserver's Lease semantics in memory: resourceVersion preconditions, 409 on conflict."""

    def __init__(self) -> None:
        self.obj: dict[str, Any] | None = None
        self.rv = 0
        self.fail = False

    async def get(self, path: str) -> dict[str, Any]:
        if self.fail:
            raise OSError("apiserver away")
        if self.obj is None:
            raise ApiError(404, "NotFound", "")
        return self.obj

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.obj is not None:
            raise ApiError(409, "AlreadyExists", "")
        return self._store(body)

    async def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.fail:
            raise OSError("apiserver away")
        assert self.obj is not None
        if body["metadata"].get("resourceVersion") != self.obj["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "")
        return self._store(body)

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        self.obj = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.rv)}}
        return self.obj


async def asleep(clock: FakeClock) -> None:
    """Let the tasks just created run until one sleeps on the clock."""
    for _ in range(100):
        if clock.sleepers:
            return
        await asyncio.sleep(0)
    raise AssertionError("nothing sleeps on the clock")


async def test_elector_two_candidates_one_leader_then_handover() -> None:
    api = FakeLeases()
    clock = FakeClock(start=0.0, wall_offset=1000.0)
    a = LeaderElector(api, "l", "ns", "a", 10, 8, 2, clock=clock)  # type: ignore[arg-type]
    b = LeaderElector(api, "l", "ns", "b", 10, 8, 2, clock=clock)  # type: ignore[arg-type]
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    for _ in range(10):  # a renews every 2 s: b never takes over
        await clock.advance(2)
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()
    # a dies: b takes over once the record stayed unchanged for the lease duration
    for _ in range(4):
        await clock.advance(2)
        assert not await b.try_acquire_or_renew()
    await clock.advance(2.5)
    assert await b.try_acquire_or_renew()
    assert api.obj is not None and api.obj["spec"]["holderIdentity"] == "b"
    assert api.obj["spec"]["leaseTransitions"] == 1
    # a comes back: its stale view loses (b's record is fresh)
    assert not await a.try_acquire_or_renew()


async def test_elector_release_hands_over_at_once() -> None:
    api = FakeLeases()
    clock = FakeClock(start=0.0, wall_offset=0.0)
    a = LeaderElector(api, "l", "ns", "a", 10, 8, 2, clock=clock)  # type: ignore[arg-type]
    b = LeaderElector(api, "l", "ns", "b", 10, 8, 2, clock=clock)  # type: ignore[arg-type]
    await a.acquire()  # nobody holds it: the first round wins, no wait
    assert not await b.try_acquire_or_renew()
    await a.release()
    assert await b.try_acquire_or_renew()


async def test_standby_acquire_takes_over_at_expiry_by_its_own_clock() -> None:
    """A standby reads every retry_period and takes a dead holder's lease once it saw the record
    unchanged for the lease duration (not a period later)."""
    api = FakeLeases()
    clock = FakeClock(start=0.0, wall_offset=0.0)
    a = LeaderElector(api, "l", "ns", "a", 10, 8, 2, clock=clock)  # type: ignore[arg-type]
    b = LeaderElector(api, "l", "ns", "b", 10, 8, 2, clock=clock)  # type: ignore[arg-type]
    assert await a.try_acquire_or_renew()  # then a dies: no more renewals
    standby = asyncio.create_task(b.acquire())
    await asleep(clock)
    await clock.advance(9.9)
    assert not standby.done() and not b.is_leader
    await clock.advance(0.2)  # 10 s unchanged (+ the 10 ms margin of next_try)
    assert standby.done() and b.is_leader
    await standby
    assert api.obj is not None and api.obj["spec"]["holderIdentity"] == "b"


async def test_elector_hold_renews_every_retry_period() -> None:
    api = FakeLeases()
    clock = FakeClock(start=0.0, wall_offset=0.0)
    a = LeaderElector(api, "l", "ns", "a", 10, 8, 2, clock=clock)  # type: ignore[arg-type]
    await a.acquire()
    holding = asyncio.create_task(a.hold())
    await asleep(clock)
    for i in range(1, 4):
        await clock.advance(2)
        assert a.last_renew == 2.0 * i
    assert not holding.done() and a.is_leader
    holding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holding


async def test_elector_hold_returns_when_renewal_fails_past_the_deadline() -> None:
    api = FakeLeases()
    clock = FakeClock(start=0.0, wall_offset=0.0)
    a = LeaderElector(api, "l", "ns", "a", 10, 8, 2, clock=clock)  # type: ignore[arg-type]
    await a.acquire()
    api.fail = True
    holding = asyncio.create_task(a.hold())
    await asleep(clock)
    await clock.advance(6)  # three failed renewals: within the 8 s renew deadline
    assert not holding.done() and a.is_leader
    await clock.advance(2)  # the fourth fails 8 s after the last renewal: leadership lost
    assert holding.done()
    await holding
    assert not a.is_leader
