"""The per-probe state machine (kubelet's prober worker doProbe), exhaustively and by hypothesis."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from provider.probes.spec import ProbeKind
from provider.probes.state import INITIAL, Observation, ProbeState, Result, Step, observe, record

R, L, S = ProbeKind.READINESS, ProbeKind.LIVENESS, ProbeKind.STARTUP
NOW = 1000.0


def running(cid: str = "c1", started: bool = True, started_at: float = 0.0, **kw: bool) -> Observation:
    return Observation(cid, True, started_at, started, **kw)


def test_initial_results_are_kubelets() -> None:
    assert INITIAL == {R: Result.FAILURE, L: Result.SUCCESS, S: Result.UNKNOWN}
    for kind in ProbeKind:
        s, step = observe(ProbeState(), kind, running(started=kind != S), NOW, 0)
        assert s.result == INITIAL[kind] and s.container_id == "c1"
        assert step == Step.PROBE


def test_no_container_yet_waits_without_result() -> None:
    for kind in ProbeKind:
        s, step = observe(ProbeState(), kind, Observation("", False, None, False), NOW, 0)
        assert (s, step) == (ProbeState(), Step.WAIT)


def test_initial_delay_counts_from_the_container_start() -> None:
    for kind in ProbeKind:
        obs = running(started=kind != S, started_at=NOW - 9.5)
        assert observe(ProbeState(), kind, obs, NOW, 10)[1] == Step.WAIT
        obs = running(started=kind != S, started_at=NOW - 10)
        assert observe(ProbeState(), kind, obs, NOW, 10)[1] == Step.PROBE


def test_startup_gates_liveness_and_readiness_and_stops_once_started() -> None:
    assert observe(ProbeState(), R, running(started=False), NOW, 0)[1] == Step.WAIT
    assert observe(ProbeState(), L, running(started=False), NOW, 0)[1] == Step.WAIT
    assert observe(ProbeState(), S, running(started=False), NOW, 0)[1] == Step.PROBE
    assert observe(ProbeState(), S, running(started=True), NOW, 0)[1] == Step.WAIT


def test_not_running_reads_as_failure_and_stops_only_when_never_restarted() -> None:
    for kind in ProbeKind:
        s, step = observe(ProbeState(), kind, Observation("c1", False, None, False, terminated=True), NOW, 0)
        assert s.result == Result.FAILURE and step == Step.WAIT
        obs = Observation("c1", False, None, False, terminated=True, will_restart=False)
        assert observe(ProbeState(), kind, obs, NOW, 0)[1] == Step.STOP


def test_terminal_pod_stops_and_deletion_passes_liveness_and_startup() -> None:
    for kind in ProbeKind:
        assert observe(ProbeState(), kind, running(pod_terminal=True), NOW, 0)[1] == Step.STOP
    for kind in (L, S):
        s, step = observe(ProbeState(), kind, running(started=kind == L, deleting=True), NOW, 0)
        assert (s.result, step) == (Result.SUCCESS, Step.STOP)
    assert observe(ProbeState(), R, running(deleting=True), NOW, 0)[1] == Step.PROBE


def test_thresholds_exhaustively() -> None:
    """Every outcome sequence up to length 6, every threshold 1..3: the result is the outcome of
    the latest streak that reached its threshold (liveness/startup hold after their result)."""
    for kind, st_, ft, n in itertools.product((R, L), (1, 2, 3), (1, 2, 3), range(7)):
        if kind == L and st_ != 1:
            continue  # the API server allows only 1 for liveness
        for seq in itertools.product((Result.SUCCESS, Result.FAILURE), repeat=n):
            s, _ = observe(ProbeState(), kind, running(), NOW, 0)
            expected = INITIAL[kind]
            streak_of, streak = None, 0
            held = False
            for outcome in seq:
                if held:
                    break
                s = record(s, kind, outcome, st_, ft)
                streak = streak + 1 if streak_of == outcome else 1
                streak_of = outcome
                need = ft if outcome == Result.FAILURE else st_
                if streak >= need:
                    expected = outcome
                    if kind == L and outcome == Result.FAILURE:
                        held = True
                assert s.result == expected, (kind, st_, ft, seq)
                assert s.on_hold == held


def test_liveness_failure_holds_until_a_new_container() -> None:
    s, _ = observe(ProbeState(), L, running(), NOW, 0)
    for _ in range(3):
        s = record(s, L, Result.FAILURE, 1, 3)
    assert s.result == Result.FAILURE and s.on_hold and s.run == 0
    s2, step = observe(s, L, running(), NOW, 0)
    assert step == Step.WAIT and s2.result == Result.FAILURE
    s3, step = observe(s, L, running("c2"), NOW, 0)
    assert step == Step.PROBE and s3.result == Result.SUCCESS and not s3.on_hold


def test_startup_holds_after_success_or_failure() -> None:
    for outcome, threshold in ((Result.SUCCESS, 1), (Result.FAILURE, 2)):
        s, _ = observe(ProbeState(), S, running(started=False), NOW, 0)
        for _ in range(threshold):
            s = record(s, S, outcome, 1, threshold)
        assert s.result == outcome and s.on_hold
        assert observe(s, S, running(started=False), NOW, 0)[1] == Step.WAIT


def test_readiness_failure_does_not_hold() -> None:
    s, _ = observe(ProbeState(), R, running(), NOW, 0)
    s = record(s, R, Result.FAILURE, 1, 1)
    assert not s.on_hold and observe(s, R, running(), NOW, 0)[1] == Step.PROBE


observations = st.builds(
    Observation,
    container_id=st.sampled_from(["", "c1", "c2", "c3"]),
    running=st.booleans(),
    started_at=st.one_of(st.none(), st.floats(NOW - 100, NOW)),
    started=st.booleans(),
    terminated=st.booleans(),
    will_restart=st.booleans(),
    pod_terminal=st.booleans(),
    deleting=st.booleans(),
    predates_manager=st.booleans(),
)
steps = st.lists(
    st.tuples(observations, st.sampled_from([Result.SUCCESS, Result.FAILURE])), min_size=1, max_size=30
)


@given(st.sampled_from(list(ProbeKind)), steps, st.integers(1, 4), st.integers(1, 4), st.integers(0, 60))
def test_invariants(
    kind: ProbeKind, seq: list[tuple[Observation, Result]], st_: int, ft: int, delay: int
) -> None:
    s = ProbeState()
    for obs, outcome in seq:
        prev = s
        s, step = observe(s, kind, obs, NOW, delay)
        if not obs.container_id or obs.pod_terminal:
            assert s == prev  # nothing known yet, or the pod is done: untouched
            assert step in (Step.WAIT, Step.STOP)
            continue
        assert s.container_id == obs.container_id
        if obs.container_id != prev.container_id and not obs.pod_terminal:
            assert not s.on_hold  # a new container starts fresh
        if step == Step.PROBE:
            # probed only when running, past the initial delay, and gated by startup
            assert obs.running and not s.on_hold
            assert obs.started == (kind != ProbeKind.STARTUP)
            assert obs.started_at is None or int(NOW - obs.started_at) >= delay
            s = record(s, kind, outcome, st_ if kind == R else 1, ft)
            assert s.result in (Result.SUCCESS, Result.FAILURE, INITIAL[kind], None)
            if s.on_hold:
                assert kind != R
        elif not obs.running and not s.on_hold:
            assert s.result == Result.FAILURE


def test_a_container_running_before_a_restart_gets_no_initial_result() -> None:
    """kubelet (ChangeContainerStatusOnKubeletRestart off): no initial value for a container that
    predates the prober, so its previous readiness stands until a probe decides."""
    obs = Observation("c1", True, 0.0, True, predates_manager=True)
    for kind in ProbeKind:
        s, _ = observe(ProbeState(), kind, obs, NOW, 0)
        assert s.result is None
    s, _ = observe(ProbeState(), R, obs, NOW, 0)
    assert record(s, R, Result.FAILURE, 1, 3).result is None  # below the threshold: still undecided
