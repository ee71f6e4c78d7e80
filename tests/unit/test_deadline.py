"""activeDeadlineSeconds as kubelet's activeDeadlineHandler decides it (provider/deadline.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provider import deadline
from provider.podspec import termination_grace_seconds
from provider.timefmt import rfc3339

T0 = 1_700_000_000.0


def pod(ads: Any = None, start: float | None = T0, grace: Any = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c"}]}
    if ads is not None:
        spec["activeDeadlineSeconds"] = ads
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    status = {"startTime": rfc3339(start)} if start is not None else {}
    return {"metadata": {"uid": "u"}, "spec": spec, "status": status}


@pytest.mark.parametrize(
    ("ads", "start", "now", "expected"),
    [
        (None, T0, T0 + 1000, None),  # no deadline
        (5, None, T0 + 1000, None),  # no start time yet: never past it
        (5, T0, T0, 5.0),
        (5, T0, T0 + 4.5, 0.5),
        (5, T0, T0 + 5, 0.0),  # exactly at the deadline: past it (>=)
        (5, T0, T0 + 6, -1.0),
        (1, T0, T0 - 2, 3.0),  # a clock behind the start time
    ],
)
def test_remaining(ads: int | None, start: float | None, now: float, expected: float | None) -> None:
    assert deadline.remaining(ads, start, now) == expected
    assert deadline.exceeded(ads, start, now) is (expected is not None and expected <= 0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (5, 5), (1, 1), ("5", None), (True, None), (5.0, None)],
)
def test_active_deadline_reads_only_integers(value: Any, expected: int | None) -> None:
    assert deadline.active_deadline(pod(value)) == expected


def test_start_time_prefers_what_was_reported_then_the_api() -> None:
    p = pod(5, start=T0)
    assert deadline.start_time(p) == T0
    assert deadline.start_time(p, {"startTime": rfc3339(T0 + 7)}) == T0 + 7
    assert deadline.start_time(p, {}) == T0
    assert deadline.start_time(pod(5, start=None), None) is None
    assert deadline.start_time(pod(5, start=None), {"startTime": "garbage"}) is None


@pytest.mark.parametrize(
    ("grace", "expected"), [(None, 2.0), (0, 0.0), (5, 5.0), (-1, 2.0), ("x", 2.0), (2.5, 2.5)]
)
def test_grace_seconds_of_a_deadline_kill_are_the_pods(grace: Any, expected: float) -> None:
    """kubelet's setTerminationGracePeriod: the pod's own, else its minimum (the API server
    defaults the field to 30, so the minimum is only reached by a pod that never went through it)."""
    assert termination_grace_seconds(pod(5, grace=grace)) == expected


def test_kubelet_reason_and_message() -> None:
    assert deadline.REASON == "DeadlineExceeded"
    assert deadline.MESSAGE == "Pod was active on the node longer than the specified deadline"


@given(
    ads=st.integers(min_value=1, max_value=10**7),
    start=st.integers(min_value=0, max_value=2 * 10**9),
    elapsed=st.floats(min_value=-1e6, max_value=1e8, allow_nan=False),
)
def test_exceeded_iff_active_at_least_the_deadline(ads: int, start: int, elapsed: float) -> None:
    now = start + elapsed
    left = deadline.remaining(ads, float(start), now)
    assert left is not None
    assert left == pytest.approx(ads - elapsed, abs=1e-6)
    assert deadline.exceeded(ads, float(start), now) == (now - start >= ads)
    # requeueing after `left` seconds lands at (or past) the deadline
    if left > 0:
        assert deadline.exceeded(ads, float(start), now + left + 1e-6)


@given(ads=st.one_of(st.none(), st.integers(min_value=1)), start=st.none() | st.floats(0, 1e10))
def test_nothing_to_enforce_without_deadline_or_start(ads: int | None, start: float | None) -> None:
    if ads is None or start is None:
        assert deadline.remaining(ads, start, T0) is None
        assert not deadline.exceeded(ads, start, T0)


@given(
    ads=st.one_of(st.none(), st.integers(min_value=1, max_value=10**6)),
    start=st.one_of(st.none(), st.integers(min_value=0, max_value=2 * 10**9)),
    reported=st.booleans(),
    now=st.floats(min_value=0, max_value=3e9),
)
def test_left_is_remaining_from_the_pods_own_fields(
    ads: int | None, start: int | None, reported: bool, now: float
) -> None:
    status = {} if start is None else {"startTime": rfc3339(start)}
    pod: dict[str, Any] = {"spec": {} if ads is None else {"activeDeadlineSeconds": ads}}
    if not reported:
        pod["status"] = status
    expected = deadline.remaining(
        deadline.active_deadline(pod), deadline.start_time(pod, status if reported else None), now
    )
    assert deadline.left(pod, status if reported else None, now) == expected


def test_left_reads_no_start_time_without_a_deadline() -> None:
    class Unread(dict[str, Any]):
        def get(self, *a: Any, **kw: Any) -> Any:
            raise AssertionError("the start time was read")

    pod = {"spec": {}, "status": Unread(startTime="2026-01-01T00:00:00Z")}
    assert deadline.left(pod, Unread(), 0.0) is None
    with pytest.raises(AssertionError, match="was read"):
        deadline.left({**pod, "spec": {"activeDeadlineSeconds": 5}}, Unread(), 0.0)
