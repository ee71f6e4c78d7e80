"""The start hold's pure decisions (provider/pods/hold.py), the deadline counted from the instant
(provider/deadline.py) and the start wave's timing (provider/pods/start_wave.py)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from provider import deadline
from provider.config import NodeConfig
from provider.node_object import HOLDS_START_LABEL, node_labels, node_restriction_safe
from provider.pods import hold
from provider.pods.start_wave import wake_at, wave_width
from provider.timefmt import rfc3339
from sandbox.backend import ContainerRuntimeState, ContainerState

T0 = 1_764_288_000.0  # 2025-11-28T00:00:00Z


def pod(annotation: str | None = None, names: tuple[str, ...] = ("a",), **spec: Any) -> dict[str, Any]:
    anns = {} if annotation is None else {hold.START_AT_ANNOTATION: annotation}
    spec.setdefault("containers", [{"name": n, "image": "i"} for n in names])
    return {"metadata": {"uid": "u", "annotations": anns}, "spec": spec, "status": {}}


def ctr(
    name: str, state: ContainerState, attempt: int = 0, started: float | None = None
) -> ContainerRuntimeState:
    return ContainerRuntimeState(
        container_id=f"id-{name}-{attempt}",
        pod_uid="u",
        name=name,
        attempt=attempt,
        state=state,
        started_at=started,
    )


# -- the annotation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-11-28T00:00:00.000Z", T0),
        ("2025-11-28T00:00:00Z", T0),
        ("2025-11-28T00:00:00.250Z", T0 + 0.25),
        ("2025-11-28T01:00:00.500+01:00", T0 + 0.5),
        ("2025-11-27T19:00:00-05:00", T0),
        ("2025-11-28t00:00:00.001z", T0 + 0.001),
        ("2025-11-28T00:00:00", None),  # no offset: a local time, not RFC3339
        ("2025-11-28", None),
        ("midnight", None),
        ("", None),
        ("1764288000", None),
    ],
)
def test_parse_instant(value: str, expected: float | None) -> None:
    got = hold.parse_instant(value)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-6)


@example(ms=549_755_813_887)  # ms / 1000 * 1000 is 549755813886.99994 in binary floating point
@example(ms=1816)  # read back as 1.8159999999999998
@given(ms=st.integers(min_value=0, max_value=4_102_444_800_000))  # up to year 2100
def test_millis_round_trip(ms: int) -> None:
    """What punctual writes (milliseconds) reads back to the same millisecond, and formats back
    to the same text."""
    text = hold.format_millis(ms / 1000)
    assert text.endswith("Z") and len(text) == len("2025-11-28T00:00:00.000Z")
    back = hold.parse_instant(text)
    assert back is not None and round(back * 1000) == ms
    assert hold.format_millis(back) == text


@given(ts=st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_format_millis_truncates_never_rounds_up(ts: float) -> None:
    back = hold.parse_instant(hold.format_millis(ts))
    assert back is not None and ts - 0.001 - 1e-6 <= back <= ts + 1e-6


def test_start_at_of_a_pod() -> None:
    assert hold.start_at(pod()) is None
    assert hold.start_at(pod("2025-11-28T00:00:00.000Z")) == hold.StartAt(T0)
    bad = hold.start_at(pod("tomorrow"))
    assert bad is not None and bad.instant is None and "tomorrow" in bad.error and "at once" in bad.error


# -- the decision -----------------------------------------------------------------------------------

STATES = [None, *ContainerState]  # None: no instance of the container


@pytest.mark.parametrize(
    ("at", "offset", "states"),
    itertools.product(
        [None, hold.StartAt(None, "bad"), hold.StartAt(T0)],
        [-1.0, -0.001, 0.0, 0.001, 60.0],
        itertools.product(STATES, repeat=2),
    ),
)
def test_decide_exhaustive(at: hold.StartAt | None, offset: float, states: tuple[Any, ...]) -> None:
    runtime = [ctr(n, s) for n, s in zip("ab", states, strict=True) if s is not None]
    got = hold.decide(at, runtime, T0 + offset)
    ran = any(s in (ContainerState.RUNNING, ContainerState.EXITED) for s in states)
    if at is None or at.instant is None:
        assert got is hold.Hold.NONE
    elif offset >= 0 or ran:
        assert got is hold.Hold.START  # the instant came, or it ran: never held (again)
    else:
        assert got is hold.Hold.PREPARE


@given(
    offset=st.floats(-1e6, 1e6, allow_nan=False),
    states=st.lists(st.sampled_from(list(ContainerState)), max_size=4),
)
def test_never_held_once_due_or_ran(offset: float, states: list[ContainerState]) -> None:
    runtime = [ctr(f"c{i}", s) for i, s in enumerate(states)]
    now = T0 + offset
    got = hold.decide(hold.StartAt(T0), runtime, now)
    assert (got is hold.Hold.PREPARE) == (now < T0 and not hold.ran_already(runtime))


# -- what is prepared, what the wave starts --------------------------------------------------------

HOOK = {"postStart": {"exec": {"command": ["true"]}}}


@pytest.mark.parametrize(
    ("hooks", "created"),
    itertools.product(itertools.product([False, True], repeat=3), itertools.product([False, True], repeat=3)),
)
def test_wave_part_exhaustive(hooks: tuple[bool, ...], created: tuple[bool, ...]) -> None:
    """In spec order, up to (and with) the first container with a postStart hook, and never past a
    container that is not created."""
    names = ("a", "b", "c")
    containers = [
        {"name": n, "image": "i", **({"lifecycle": HOOK} if h else {})}
        for n, h in zip(names, hooks, strict=True)
    ]
    p = pod(containers=containers)
    runtime = [ctr(n, ContainerState.CREATED) for n, c in zip(names, created, strict=True) if c]
    ids, hook = hold.wave_part(p, runtime)
    expected: list[str] = []
    expected_hook = ""
    for n, h, c in zip(names, hooks, created, strict=True):
        if not c:
            break
        expected.append(f"id-{n}-0")
        if h:
            expected_hook = n
            break
    assert ids == expected and hook == expected_hook
    # what is still to create: exactly the ones not created, in spec order
    assert hold.to_create(p, runtime) == [n for n, c in zip(names, created, strict=True) if not c]


def test_a_pod_with_init_containers_precreates_nothing() -> None:
    p = pod(initContainers=[{"name": "init", "image": "i"}], names=("a", "b"))
    assert hold.to_create(p, []) == []
    assert hold.wave_part(p, [ctr("a", ContainerState.CREATED)]) == ([], "")
    assert hold.all_names(p) == ["init", "a", "b"]


def test_running_or_exited_instances_are_never_in_the_wave() -> None:
    p = pod(names=("a", "b"))
    runtime = [ctr("a", ContainerState.RUNNING), ctr("b", ContainerState.CREATED)]
    assert hold.wave_part(p, runtime) == ([], "")
    assert hold.to_create(p, runtime) == []


def test_held_waiting_names_every_container() -> None:
    p = pod(initContainers=[{"name": "init", "image": "i"}], names=("a",))
    w = hold.held_waiting(p, T0 + 0.5)
    assert set(w) == {"init", "a"}
    assert w["a"].reason == "StartHeld"
    assert w["a"].message == "start held until 2025-11-28T00:00:00.500Z (warmlet.io/start-at)"


def test_first_start_is_the_earliest_first_attempt_of_app_containers() -> None:
    runtime = [
        ctr("a", ContainerState.EXITED, 0, T0 + 0.2),
        ctr("a", ContainerState.RUNNING, 1, T0 + 5),
        ctr("b", ContainerState.RUNNING, 0, T0 + 0.1),
        ctr("sidecar", ContainerState.RUNNING, 0, T0 - 9),
        ctr("c", ContainerState.CREATED),
    ]
    assert hold.first_start(runtime, ["a", "b", "c"]) == T0 + 0.1
    assert hold.first_start([ctr("c", ContainerState.CREATED)], ["c"]) is None


# -- activeDeadlineSeconds counts from the instant ----------------------------------------------------


def deadline_pod(start: float, instant: str | None, ads: int = 60) -> dict[str, Any]:
    p = pod(instant)
    p["spec"]["activeDeadlineSeconds"] = ads
    p["status"]["startTime"] = rfc3339(start)
    return p


def test_deadline_counts_from_the_instant_of_an_early_pod() -> None:
    early = deadline_pod(T0 - 60, "2025-11-28T00:00:00.000Z")
    assert deadline.start_time(early) == T0
    assert deadline.remaining(60, deadline.start_time(early), T0 + 59.5) == pytest.approx(0.5)
    assert not deadline.exceeded(60, deadline.start_time(early), T0 + 30)  # 90 s after startTime
    # an ordinary pod still counts from startTime
    assert deadline.start_time(deadline_pod(T0 - 60, None)) == T0 - 60
    # a pod that arrived after its instant counts from its own start, as kubelet does
    assert deadline.start_time(deadline_pod(T0 + 7, "2025-11-28T00:00:00.000Z")) == T0 + 7
    # an unreadable instant is not a reason to move the deadline
    assert deadline.start_time(deadline_pod(T0 - 60, "soon")) == T0 - 60
    # no start time, no deadline yet
    assert deadline.start_time(pod("2025-11-28T00:00:00.000Z")) is None


@given(started=st.floats(0, 4e9), instant=st.none() | st.floats(0, 4e9))
def test_counted_from_is_never_before_either(started: float, instant: float | None) -> None:
    at = None if instant is None else hold.StartAt(instant)
    got = deadline.counted_from(started, at)
    assert got >= started
    if instant is not None:
        assert got >= instant and got in (started, instant)
    else:
        assert got == started


# -- the wave's timing ------------------------------------------------------------------------------


@given(
    instant=st.floats(0, 1e6),
    wall=st.floats(0, 1e6),
    mono=st.floats(0, 1e6),
    realign=st.floats(0.001, 10),
)
def test_wake_at_never_before_the_instant(instant: float, wall: float, mono: float, realign: float) -> None:
    wake = wake_at(instant, wall, mono, realign)
    if wall >= instant:
        assert wake is None  # due: start now
    else:
        assert wake is not None
        # never later than the instant on the monotonic clock, never later than a re-read
        # (``<=`` at mono: a gap below the float resolution of ``mono`` wakes at once, and the
        # wall clock, read again then, decides)
        assert mono <= wake <= mono + (instant - wall) + 1e-9
        assert wake <= mono + realign + 1e-9


@pytest.mark.parametrize(("concurrency", "pending"), itertools.product([1, 4, 6, 256], [0, 1, 5, 6, 7, 2000]))
def test_wave_width(concurrency: int, pending: int) -> None:
    w = wave_width(concurrency, pending)
    assert 1 <= w <= concurrency
    assert w == max(1, min(concurrency, pending))


def test_the_node_says_it_honours_the_hold() -> None:
    labels = node_labels(NodeConfig(name="vn"))
    assert labels[HOLDS_START_LABEL] == "true"
    assert node_restriction_safe(labels)[HOLDS_START_LABEL] == "true"  # a node identity may set it
