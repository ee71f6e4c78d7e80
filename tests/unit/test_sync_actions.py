"""kubelet-like per-pod decisions: start order, restart policy, CrashLoopBackOff back-off."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provider.backoff import Backoff
from provider.sync import (
    BackoffStep,
    PodActions,
    Start,
    apply_backoff,
    backoff_key,
    compute_pod_actions,
    should_restart,
)
from sandbox.backend import ContainerRuntimeState, ContainerState

NOW = 1_000_000.0


def pod(
    containers: list[str] = ["app"],  # noqa: B006
    init: list[str] | None = None,
    policy: str = "Always",
    sidecars: list[str] | None = None,
) -> dict[str, Any]:
    inits = [{"name": n, "image": "i"} for n in init or []]
    inits += [{"name": n, "image": "i", "restartPolicy": "Always"} for n in sidecars or []]
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {
            "restartPolicy": policy,
            "initContainers": inits,
            "containers": [{"name": n, "image": "i"} for n in containers],
        },
    }


def c(
    name: str,
    state: ContainerState,
    attempt: int = 0,
    code: int | None = None,
    started: float = NOW - 20,
    finished: float | None = NOW - 1,
) -> ContainerRuntimeState:
    return ContainerRuntimeState(
        container_id=f"{name}{attempt}",
        pod_uid="u",
        name=name,
        attempt=attempt,
        state=state,
        exit_code=code,
        started_at=started,
        finished_at=finished if state == ContainerState.EXITED else None,
    )


R, X, C = ContainerState.RUNNING, ContainerState.EXITED, ContainerState.CREATED


def decide(p: dict[str, Any], runtime: list[ContainerRuntimeState], b: Backoff, now: float) -> PodActions:
    """What the pod worker does: decide (pure), then record the decided restarts."""
    a = compute_pod_actions(p, runtime, b, now)
    apply_backoff(a, b, now)
    return a


def test_fresh_pod_starts_all_app_containers() -> None:
    a = compute_pod_actions(pod(["a", "b"]), [], Backoff(), NOW)
    assert a.start == [Start("a", 0, False), Start("b", 0, False)]
    assert not a.terminal


def test_init_containers_run_one_at_a_time_in_order() -> None:
    p = pod(init=["i1", "i2"])
    assert compute_pod_actions(p, [], Backoff(), NOW).start == [Start("i1", 0, True)]
    assert compute_pod_actions(p, [c("i1", R)], Backoff(), NOW).start == []
    assert compute_pod_actions(p, [c("i1", X, code=0)], Backoff(), NOW).start == [Start("i2", 0, True)]
    done = [c("i1", X, code=0), c("i2", X, code=0)]
    assert compute_pod_actions(p, done, Backoff(), NOW).start == [Start("app", 0, False)]


def test_init_failure_never_fails_pod() -> None:
    a = compute_pod_actions(pod(init=["i1"], policy="Never"), [c("i1", X, code=1)], Backoff(), NOW)
    assert a.init_failed and a.terminal and a.start == []


@pytest.mark.parametrize("policy", ["OnFailure", "Always"])
def test_init_failure_restarts_with_backoff(policy: str) -> None:
    b = Backoff()
    p = pod(init=["i1"], policy=policy)
    a = decide(p, [c("i1", X, code=1)], b, NOW)
    assert a.start == [Start("i1", 1, True)]
    a = decide(p, [c("i1", X, 0, 1), c("i1", X, 1, 1)], b, NOW)
    assert a.start == [] and a.backoff["i1"][1].reason == "CrashLoopBackOff"


def test_init_not_rerun_once_app_started() -> None:
    a = compute_pod_actions(pod(init=["i1"]), [c("app", R)], Backoff(), NOW)
    assert a.start == []


def test_sidecar_must_run_before_next_init_and_app() -> None:
    p = pod(init=["i1"], sidecars=[])
    p["spec"]["initContainers"] = [
        {"name": "side", "image": "i", "restartPolicy": "Always"},
        {"name": "i1", "image": "i"},
    ]
    assert compute_pod_actions(p, [], Backoff(), NOW).start == [Start("side", 0, True)]
    assert compute_pod_actions(p, [c("side", C)], Backoff(), NOW).start == []
    assert compute_pod_actions(p, [c("side", R)], Backoff(), NOW).start == [Start("i1", 0, True)]
    a = compute_pod_actions(p, [c("side", R), c("i1", X, code=0)], Backoff(), NOW)
    assert a.start == [Start("app", 0, False)]


def test_sidecar_restarts_while_app_runs() -> None:
    p = pod(sidecars=["side"])
    a = compute_pod_actions(p, [c("side", X, code=1), c("app", R)], Backoff(), NOW)
    assert a.start == [Start("side", 1, True)]


def test_sidecar_not_restarted_after_apps_done() -> None:
    p = pod(sidecars=["side"], policy="Never")
    a = compute_pod_actions(p, [c("side", X, code=137), c("app", X, code=0)], Backoff(), NOW)
    assert a.start == [] and a.terminal


@pytest.mark.parametrize(
    ("policy", "code", "restart"),
    [
        ("Always", 0, True),
        ("Always", 1, True),
        ("OnFailure", 0, False),
        ("OnFailure", 2, True),
        ("Never", 0, False),
        ("Never", 1, False),
    ],
)
def test_restart_policy(policy: str, code: int, restart: bool) -> None:
    assert should_restart(policy, code) is restart
    a = compute_pod_actions(pod(policy=policy), [c("app", X, code=code)], Backoff(), NOW)
    assert (a.start == [Start("app", 1, False)]) is restart
    assert a.terminal is (not restart)


def test_running_pod_has_nothing_to_do() -> None:
    a = compute_pod_actions(pod(), [c("app", R)], Backoff(), NOW)
    assert a.start == [] and not a.backoff and not a.terminal


def test_crashloop_backoff_doubles_to_cap() -> None:
    b = Backoff()
    p = pod()
    # first exit: immediate restart (kubelet has no back-off entry yet)
    assert decide(p, [c("app", X, 0, 1, finished=NOW)], b, NOW).start == [Start("app", 1, False)]
    delays = []
    t = NOW
    for attempt in range(1, 10):
        t += 1
        a = decide(p, [c("app", X, attempt, 1, started=t - 1, finished=t)], b, t)
        assert a.start == []
        left, waiting = a.backoff["app"]
        delays.append(left)
        assert waiting.reason == "CrashLoopBackOff"
        assert waiting.message.startswith(
            f"back-off {int(left)}s restarting failed container=app pod=p_ns(u)"
        )
        assert a.next_check == left
        t += left
        a = decide(p, [c("app", X, attempt, 1, started=t - left - 1, finished=t - left)], b, t)
        assert a.start == [Start("app", attempt + 1, False)]
    assert delays == [10, 20, 40, 80, 160, 300, 300, 300, 300]


def test_backoff_resets_after_ten_minutes_running() -> None:
    b = Backoff()
    key = backoff_key("u", "app")
    for _ in range(4):
        b.next(key, NOW)
    assert b.delay(key) == 80
    long_run = c("app", X, 3, 1, started=NOW - 700, finished=NOW)
    a = compute_pod_actions(pod(), [long_run], b, NOW)
    assert a.start == [Start("app", 4, False)]
    assert a.backoff_steps == [BackoffStep(key, reset=True)]
    assert b.delay(key) == 80  # deciding changes nothing
    apply_backoff(a, b, NOW)
    assert b.delay(key) == 10


def test_all_done_terminal_only_when_nothing_restarts() -> None:
    p = pod(["a", "b"], policy="OnFailure")
    assert not compute_pod_actions(p, [c("a", X, code=0), c("b", R)], Backoff(), NOW).terminal
    assert compute_pod_actions(p, [c("a", X, code=0), c("b", X, code=0)], Backoff(), NOW).terminal
    assert not compute_pod_actions(p, [c("a", X, code=0), c("b", X, code=1)], Backoff(), NOW).terminal


def test_backoff_entries_expire() -> None:
    b = Backoff(initial=10, cap=300)
    b.next("k", 0)
    assert b.remaining("k", 0, 5) == 5
    assert b.remaining("k", 0, 1000) == 0
    assert len(b) == 0
    b.next("u/a", 0)
    b.next("u/b", 0)
    b.next("v/a", 0)
    b.forget_prefix("u/")
    assert len(b) == 1


def test_created_but_never_started_containers_are_resumed_not_recreated() -> None:
    a = compute_pod_actions(pod(), [c("app", C)], Backoff(), NOW)
    assert a.start == [] and a.resume == ["app0"]
    a = compute_pod_actions(pod(init=["i1"]), [c("i1", C)], Backoff(), NOW)
    assert a.start == [] and a.resume == ["i10"]
    a = compute_pod_actions(pod(sidecars=["s"]), [c("s", C)], Backoff(), NOW)
    assert a.start == [] and a.resume == ["s0"]


def test_is_finished_has_no_side_effects() -> None:
    from provider.sync import is_finished

    b = Backoff()
    assert not is_finished(pod(), [c("app", X, code=1)])
    assert len(b) == 0
    assert is_finished(pod(policy="Never"), [c("app", X, code=1)])
    assert is_finished(pod(policy="OnFailure"), [c("app", X, code=0)])
    assert not is_finished(pod(policy="OnFailure"), [c("app", X, code=3)])
    assert is_finished(pod(init=["i"], policy="Never"), [c("i", X, code=3)])
    assert not is_finished(pod(init=["i"], policy="OnFailure"), [c("i", X, code=3)])
    assert not is_finished(pod(), [])


U = ContainerState.UNKNOWN


@pytest.mark.parametrize("policy", ["Always", "OnFailure", "Never"])
def test_unknown_app_container_is_killed_then_restarted_whatever_the_policy(policy: str) -> None:
    # kubelet: "always restart container in the unknown, or in the created state", after killing
    # it so that two instances never run side by side
    a = compute_pod_actions(pod(["a", "b"], policy=policy), [c("a", U), c("b", R)], Backoff(), NOW)
    assert a.kill == ["a0"]
    assert a.start == [Start("a", 1, False)]
    assert not a.resume and not a.backoff and not a.terminal


def test_unknown_init_container_is_replaced_before_anything_else() -> None:
    a = compute_pod_actions(pod(["app"], init=["i1", "i2"]), [c("i1", U, attempt=2)], Backoff(), NOW)
    assert a.kill == ["i12"]
    assert a.start == [Start("i1", 3, True)]


def test_unknown_sidecar_is_replaced_before_the_app_starts() -> None:
    a = compute_pod_actions(pod(["app"], sidecars=["s"]), [c("s", U)], Backoff(), NOW)
    assert a.kill == ["s0"]
    assert a.start == [Start("s", 1, True)]  # the app waits for the sidecar's new instance


def test_known_states_kill_nothing() -> None:
    runtime = [c("a", R), c("b", X, code=1), c("d", C)]
    a = compute_pod_actions(pod(["a", "b", "d"]), runtime, Backoff(), NOW)
    assert a.kill == []


def test_deciding_a_restart_leaves_the_backoff_alone() -> None:
    """compute_pod_actions is pure: the restart it decides is returned, not recorded."""
    b = Backoff()
    key = backoff_key("u", "app")
    a = compute_pod_actions(pod(), [c("app", X, code=1)], b, NOW)
    assert a.start == [Start("app", 1, False)]
    assert a.backoff_steps == [BackoffStep(key)]
    assert len(b) == 0
    again = compute_pod_actions(pod(), [c("app", X, code=1)], b, NOW)
    assert again == a  # same inputs, same decision
    apply_backoff(a, b, NOW)
    assert b.delay(key) == 10


def test_a_stale_backoff_entry_is_neither_waited_on_nor_dropped_by_deciding() -> None:
    b = Backoff(initial=10, cap=300)
    key = backoff_key("u", "app")
    for _ in range(5):
        b.next(key, NOW - 1000)  # 160 s, last updated long ago (> 2 x cap)
    a = compute_pod_actions(pod(), [c("app", X, 4, 1, started=NOW - 2, finished=NOW - 1)], b, NOW)
    assert a.start == [Start("app", 5, False)] and not a.backoff
    assert b.delay(key) == 160  # still there: deciding dropped nothing
    apply_backoff(a, b, NOW)
    assert b.delay(key) == 10  # a stale entry starts over, as kubelet's GC would have it


# -- properties over every small pod and runtime ----------------------------------------------

_NAMES = ["a", "b"]
_STATES = [R, X, C, ContainerState.UNKNOWN]


@st.composite
def _case(draw: st.DrawFn) -> tuple[dict[str, Any], list[ContainerRuntimeState], Backoff, float]:
    apps = draw(st.lists(st.sampled_from(_NAMES), min_size=1, max_size=2, unique=True))
    inits = draw(st.lists(st.sampled_from(["i1", "i2"]), max_size=2, unique=True))
    sides = draw(st.lists(st.sampled_from(["s"]), max_size=1))
    p = pod(apps, init=inits, policy=draw(st.sampled_from(["Always", "OnFailure", "Never"])), sidecars=sides)
    runtime: list[ContainerRuntimeState] = []
    for name in [*inits, *sides, *apps]:
        for attempt in range(draw(st.integers(0, 2))):
            state = draw(st.sampled_from(_STATES))
            ran = draw(st.sampled_from([1.0, 700.0]))
            runtime.append(
                c(
                    name,
                    state,
                    attempt,
                    draw(st.sampled_from([0, 1, 137])),
                    started=NOW - ran - 5,
                    finished=NOW - 5,
                )
            )
    b = Backoff()
    for name in [*inits, *sides, *apps]:
        for _ in range(draw(st.integers(0, 3))):
            b.next(backoff_key("u", name), NOW - draw(st.sampled_from([0.0, 8.0, 1000.0])))
    return p, runtime, b, NOW


def _entries(b: Backoff) -> dict[str, tuple[float, float]]:
    return {k: (e.delay, e.last_update) for k, e in b._entries.items()}


@given(_case())
@settings(max_examples=400, deadline=None)
def test_compute_pod_actions_is_pure_and_its_steps_match_its_restarts(
    case: tuple[dict[str, Any], list[ContainerRuntimeState], Backoff, float],
) -> None:
    p, runtime, b, now = case
    before = _entries(b)
    a = compute_pod_actions(p, runtime, b, now)
    assert _entries(b) == before  # nothing recorded, nothing expired
    assert compute_pod_actions(p, runtime, b, now) == a  # deterministic
    latest = {r.name: r for r in runtime}  # runtime is in attempt order per name
    restarted = {s.name for s in a.start if s.name in latest and latest[s.name].state == X}
    # exactly the restarts of exited containers advance a back-off, each once
    assert sorted(step.key for step in a.backoff_steps) == sorted(backoff_key("u", n) for n in restarted)
    # a container either starts now or waits in back-off, never both
    assert not ({s.name for s in a.start} & set(a.backoff))
    for left, w in a.backoff.values():
        assert left > 0 and w.reason == "CrashLoopBackOff"
    apply_backoff(a, b, now)
    for name in restarted:  # recorded: a restart now waits at least the initial back-off next time
        assert b.delay(backoff_key("u", name)) >= b.initial
