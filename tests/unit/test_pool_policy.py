"""Pool sizing policy: overrides, learned concurrency, release decisions, trim and top-up plans."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.pool_policy import (
    ANNOTATION_MAX,
    ANNOTATION_MIN,
    ANNOTATION_POOL,
    ANNOTATION_TTL,
    DEFAULT_SANDBOX_COST_BYTES,
    MAX_PER_WORKLOAD_HARD,
    ConcurrencyTracker,
    EvictReason,
    IdleSandbox,
    PoolDefaults,
    WorkloadPolicy,
    decide_release,
    plan_topup,
    plan_trim,
    policy_for,
    retention_limit,
    sandbox_cost_bytes,
)

D = PoolDefaults(min_per_workload=0, max_per_workload=8, idle_ttl_seconds=600)


def test_policy_defaults() -> None:
    assert policy_for(D) == WorkloadPolicy(enabled=True, min=0, max=8, ttl_seconds=600)


def test_policy_overrides() -> None:
    p = policy_for(D, {ANNOTATION_MIN: "2", ANNOTATION_MAX: " 5 ", ANNOTATION_TTL: "30.5"})
    assert p == WorkloadPolicy(enabled=True, min=2, max=5, ttl_seconds=30.5)


@pytest.mark.parametrize("value", ["off", "OFF", "false", "disabled"])
def test_policy_off(value: str) -> None:
    p = policy_for(D, {ANNOTATION_POOL: value, ANNOTATION_MIN: "3"})
    assert not p.enabled and p.min == 0 and p.max == 0


def test_policy_globally_disabled_wins() -> None:
    p = policy_for(PoolDefaults(enabled=False), {ANNOTATION_POOL: "on", ANNOTATION_MIN: "3"})
    assert not p.enabled


@pytest.mark.parametrize(
    "ann",
    [
        {ANNOTATION_MIN: "x"},
        {ANNOTATION_MIN: "-1"},
        {ANNOTATION_MAX: "1.5"},
        {ANNOTATION_TTL: "nan"},
        {ANNOTATION_TTL: "-3"},
        {ANNOTATION_TTL: "inf"},
        {ANNOTATION_TTL: ""},
    ],
)
def test_policy_invalid_overrides_ignored(ann: dict[str, str]) -> None:
    assert policy_for(D, ann) == policy_for(D)


def test_policy_min_above_max_is_lowered() -> None:
    p = policy_for(D, {ANNOTATION_MIN: "10", ANNOTATION_MAX: "3"})
    assert (p.min, p.max) == (3, 3)


def test_policy_hard_cap() -> None:
    assert policy_for(D, {ANNOTATION_MAX: "999999"}).max == MAX_PER_WORKLOAD_HARD


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from([ANNOTATION_MIN, ANNOTATION_MAX, ANNOTATION_TTL, ANNOTATION_POOL, "other"]),
        st.one_of(st.integers(-5, 5000).map(str), st.text(max_size=6), st.floats(allow_nan=True).map(str)),
    ),
    st.integers(0, 20),
    st.integers(0, 20),
)
def test_policy_invariants(ann: dict[str, str], dmin: int, dmax: int) -> None:
    p = policy_for(PoolDefaults(min_per_workload=dmin, max_per_workload=dmax), ann)
    assert 0 <= p.min <= max(p.max, 0)
    assert p.max <= max(MAX_PER_WORKLOAD_HARD, dmax)
    assert p.ttl_seconds >= 0
    if not p.enabled:
        assert p.min == p.max == 0


def test_tracker_peak_in_window() -> None:
    t = ConcurrencyTracker(window_seconds=60)
    t.record("k", 1, 0)
    t.record("k", 5, 10)
    t.record("k", 2, 20)
    assert t.peak("k", 30) == 5
    assert t.peak("k", 69) == 5
    # At 75 the sample at 10 (5) is older than the window, but the level at the window start is
    # known from it only until a newer one (2 at 20) exists inside... 20 > 75-60=15, so 5 still counts.
    assert t.peak("k", 75) == 5
    assert t.peak("k", 81) == 2  # the sample at 20 now tells the level at the window start
    assert t.peak("other", 0) == 0
    t.forget("k")
    assert t.peak("k", 100) == 0


def test_retention_limit() -> None:
    p = WorkloadPolicy(True, 1, 4, 600)
    assert retention_limit(p, 0) == 1
    assert retention_limit(p, 3) == 3
    assert retention_limit(p, 10) == 4
    assert retention_limit(WorkloadPolicy(False, 0, 0, 0), 10) == 0


def test_decide_release() -> None:
    p = WorkloadPolicy(True, 0, 4, 600)
    c = DEFAULT_SANDBOX_COST_BYTES
    assert decide_release(p, True, idle_of_key=0, peak=1, cost_bytes=c, defaults=D) is None
    assert decide_release(p, True, idle_of_key=1, peak=1, cost_bytes=c, defaults=D) == EvictReason.RETENTION
    assert decide_release(p, True, idle_of_key=2, peak=3, cost_bytes=c, defaults=D) is None
    assert decide_release(p, True, idle_of_key=4, peak=9, cost_bytes=c, defaults=D) == EvictReason.RETENTION
    assert (
        decide_release(p, False, idle_of_key=0, peak=1, cost_bytes=c, defaults=D) == EvictReason.NOT_REUSABLE
    )
    off = WorkloadPolicy(False, 0, 0, 0)
    assert decide_release(off, True, idle_of_key=0, peak=1, cost_bytes=c, defaults=D) == EvictReason.DISABLED
    assert decide_release(p, True, 0, 1, c, PoolDefaults(enabled=False)) == EvictReason.DISABLED
    assert decide_release(p, True, 0, 1, c, PoolDefaults(global_max_sandboxes=0)) == EvictReason.GLOBAL_COUNT
    assert (
        decide_release(p, True, 0, 1, c, PoolDefaults(global_max_memory_bytes=c - 1))
        == EvictReason.GLOBAL_MEMORY
    )


def idle(sid: str, key: str, since: float, cost: int = DEFAULT_SANDBOX_COST_BYTES) -> IdleSandbox:
    return IdleSandbox(sid, key, since, cost)


def test_trim_ttl_keeps_min() -> None:
    pol = {"k": WorkloadPolicy(True, 1, 8, 100)}
    entries = [idle("a", "k", 0), idle("b", "k", 10), idle("c", "k", 950)]
    plan = plan_trim(entries, pol, D, now=1000)
    assert plan == [("a", EvictReason.TTL), ("b", EvictReason.TTL)]
    pol = {"k": WorkloadPolicy(True, 2, 8, 100)}
    assert plan_trim(entries, pol, D, now=1000) == [("a", EvictReason.TTL)]


def test_trim_over_max_and_disabled() -> None:
    pol = {"k": WorkloadPolicy(True, 0, 1, 1e9), "off": WorkloadPolicy(False, 0, 0, 0)}
    entries = [idle("a", "k", 0), idle("b", "k", 10), idle("x", "off", 5)]
    plan = plan_trim(entries, pol, D, now=20)
    assert ("a", EvictReason.RETENTION) in plan and ("x", EvictReason.DISABLED) in plan and len(plan) == 2


def test_trim_global_caps_lru_across_keys() -> None:
    d = PoolDefaults(global_max_sandboxes=2, global_max_memory_bytes=10**12)
    entries = [idle("a1", "a", 5), idle("b1", "b", 1), idle("a2", "a", 9)]
    plan = plan_trim(entries, {}, d, now=10)
    assert plan == [("b1", EvictReason.GLOBAL_COUNT)]
    d = PoolDefaults(global_max_sandboxes=100, global_max_memory_bytes=250)
    entries = [idle("a1", "a", 5, 100), idle("b1", "b", 1, 100), idle("a2", "a", 9, 100)]
    assert plan_trim(entries, {}, d, now=10) == [("b1", EvictReason.GLOBAL_MEMORY)]


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.sampled_from("abcd"), st.floats(0, 1000)), max_size=30),
    st.integers(0, 3),
    st.integers(0, 6),
    st.floats(0, 500),
    st.integers(0, 20),
)
def test_trim_invariants(raw: list[tuple[str, float]], mn: int, mx: int, ttl: float, cap: int) -> None:
    mn = min(mn, mx)
    d = PoolDefaults(global_max_sandboxes=cap, global_max_memory_bytes=10**15)
    pols = {k: WorkloadPolicy(True, mn, mx, ttl) for k in "abcd"}
    entries = [idle(f"s{i}", k, t) for i, (k, t) in enumerate(raw)]
    now = 1000.0
    plan = plan_trim(entries, pols, d, now)
    evicted = {s for s, _ in plan}
    assert len(evicted) == len(plan)  # each at most once
    left = [e for e in entries if e.sandbox_id not in evicted]
    assert len(left) <= cap
    for k in "abcd":
        mine = [e for e in left if e.key == k]
        assert len(mine) <= mx
    for s, reason in plan:
        e = next(x for x in entries if x.sandbox_id == s)
        if reason == EvictReason.TTL:
            assert now - e.idle_since > ttl
    # Per-key TTL eviction never takes a key below min (only global caps may).
    for k in "abcd":
        before = sum(1 for e in entries if e.key == k)
        ttl_evicted = sum(
            1
            for s, r in plan
            if r == EvictReason.TTL and next(x for x in entries if x.sandbox_id == s).key == k
        )
        assert before - ttl_evicted >= min(before, mn)


def test_topup_within_caps() -> None:
    d = PoolDefaults(global_max_sandboxes=5, global_max_memory_bytes=10**12)
    plan = plan_topup({"a": 3, "b": 4}, {"a": 1}, {}, idle_total=1, idle_bytes=0, cost_bytes={}, defaults=d)
    assert plan == {"a": 2, "b": 2}
    plan = plan_topup({"a": 3}, {"a": 1}, {"a": 2}, idle_total=1, idle_bytes=0, cost_bytes={}, defaults=d)
    assert plan == {}
    d = PoolDefaults(global_max_sandboxes=50, global_max_memory_bytes=300)
    plan = plan_topup({"a": 5}, {}, {}, 0, 0, {"a": 100}, d)
    assert plan == {"a": 3}
    assert plan_topup({"a": 5}, {}, {}, 0, 0, {}, PoolDefaults(enabled=False)) == {}


MIB = 1 << 20


def test_sandbox_cost_is_the_pods_memory_with_a_floor() -> None:
    floor = DEFAULT_SANDBOX_COST_BYTES
    assert sandbox_cost_bytes(0, 0) == floor  # no request, no limit: the pause/shim overhead
    assert sandbox_cost_bytes(0, 1) == floor  # never below the floor
    assert sandbox_cost_bytes(512 * MIB, 256 * MIB) == 256 * MIB  # the request, when set
    assert sandbox_cost_bytes(512 * MIB, 0) == 512 * MIB  # else the limit


def test_pool_defaults_from_settings() -> None:
    class Settings:
        enabled = True
        min_per_workload = 1
        max_per_workload = 5
        idle_ttl_seconds = 30.0
        global_max_sandboxes = 9
        global_max_memory_bytes = 7 * MIB

    d = PoolDefaults.from_settings(Settings())
    assert (d.min_per_workload, d.max_per_workload, d.idle_ttl_seconds) == (1, 5, 30.0)
    assert (d.global_max_sandboxes, d.global_max_memory_bytes) == (9, 7 * MIB)
    assert d.concurrency_window_seconds == 60.0  # peaks are remembered at least a minute


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 50), st.integers(0, 30)), max_size=60),
    st.floats(1, 100),
    st.floats(0, 60),
)
def test_tracker_peak_is_the_window_maximum(
    steps: list[tuple[float, int]], window: float, tail: float
) -> None:
    """The O(1) sliding maximum equals the plain one: the max level since the window's start,
    counting the level at the start (the last sample at or before it)."""
    t = ConcurrencyTracker(window_seconds=window)
    now = 0.0
    samples: list[tuple[float, int]] = []
    for dt, level in steps:
        now += dt
        t.record("k", level, now)
        samples.append((now, level))
        start = now - window
        before = [n for ts, n in samples if ts <= start]
        inside = [n for ts, n in samples if ts > start]
        assert t.peak("k", now) == max(before[-1:] + inside)
    later = now + tail
    start = later - window
    before = [n for ts, n in samples if ts <= start]
    inside = [n for ts, n in samples if ts > start]
    assert t.peak("k", later) == (max(before[-1:] + inside) if samples else 0)
