"""Normalising and comparing pod status sequences (bench/status_diff.py, bench/differential.py)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bench import status_diff as sd
from bench.differential import SPECS, Recording, Spec, diff_spec, pod_manifest, restarts, terminal


def status(
    phase: str = "Running", state: Any = None, restarts_: int = 0, ready: bool = True, **extra: Any
) -> Any:
    return {
        "phase": phase,
        "podIP": "10.1.2.3",
        "hostIP": "127.0.0.1",
        "startTime": "2026-01-01T00:00:00Z",
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "lastTransitionTime": "2026-01-01T00:00:01Z",
            },
            {"type": "DisruptionTarget", "status": "True"},  # not the kubelet's: left out
        ],
        "containerStatuses": [
            {
                "name": "app",
                "containerID": "containerd://abc",
                "imageID": "sha256:def",
                "restartCount": restarts_,
                "ready": ready,
                "started": True,
                "state": state or {"running": {"startedAt": "2026-01-01T00:00:01Z"}},
                "lastState": {},
            }
        ],
        **extra,
    }


def test_normalise_drops_times_ids_ips_and_foreign_conditions() -> None:
    v = sd.normalise(status())
    assert v == {
        "phase": "Running",
        "conditions.Ready.status": "True",
        "containers.app.restartCount": 0,
        "containers.app.ready": True,
        "containers.app.started": True,
        "containers.app.state": "running",
    }
    other = status()
    other["podIP"] = "10.9.9.9"
    other["containerStatuses"][0]["containerID"] = "containerd://zzz"
    other["conditions"][0]["lastTransitionTime"] = "2030-01-01T00:00:00Z"
    assert sd.normalise(other) == v


def test_normalise_terminated_and_last_state() -> None:
    term = {"terminated": {"exitCode": 137, "reason": "OOMKilled", "message": "m", "finishedAt": "x"}}
    s = status("Failed", term, reason="DeadlineExceeded")
    s["containerStatuses"][0]["lastState"] = {"terminated": {"exitCode": 1, "reason": "Error"}}
    v = sd.normalise(s)
    assert v["reason"] == "DeadlineExceeded"
    assert v["containers.app.state"] == "terminated"
    assert v["containers.app.state.exitCode"] == 137
    assert v["containers.app.state.reason"] == "OOMKilled"
    assert v["containers.app.state.message"] == "m"
    assert v["containers.app.lastState"] == "terminated" and v["containers.app.lastState.exitCode"] == 1


def test_sequence_collapses_repeats_and_same_sequences_compare_equal() -> None:
    seq = sd.sequence([status(), status(), status(ready=False), status(ready=False)])
    assert len(seq) == 2
    assert sd.compare(seq, seq) == {"same": True, "differs": {}, "final_differs": {}}


def test_compare_names_the_fields_that_differ() -> None:
    crash = {"waiting": {"reason": "CrashLoopBackOff"}}
    kubelet = sd.sequence([status(), status(state=crash, restarts_=1, ready=False)])
    warmlet = sd.sequence([status()])  # never restarted, always ready
    d = sd.compare(kubelet, warmlet)
    assert not d["same"]
    assert d["differs"]["containers.app.restartCount"] == {"kubelet": [0, 1], "warmlet": [0]}
    assert d["differs"]["containers.app.state.reason"] == {"kubelet": ["CrashLoopBackOff"], "warmlet": [None]}
    assert d["final_differs"]["containers.app.ready"] == {"kubelet": False, "warmlet": True}
    assert "phase" not in d["differs"]


def test_batched_writes_do_not_differ_per_field() -> None:
    """One node changes two fields in one write, the other in two: per field, the same."""
    a = [{"x": 1, "y": 1}, {"x": 2, "y": 2}]
    b = [{"x": 1, "y": 1}, {"x": 2, "y": 1}, {"x": 2, "y": 2}]
    assert sd.compare(a, b)["same"]


def test_a_field_appearing_later_is_not_a_difference_but_disappearing_is() -> None:
    assert sd.field_sequences([{}, {"r": "x"}]) == {"r": ["x"]}
    assert sd.field_sequences([{"r": "x"}, {}]) == {"r": ["x", None]}


def test_events_compare_by_type_and_reason() -> None:
    k = [{"type": "Normal", "reason": "Killing"}, {"type": "Warning", "reason": "Unhealthy"}]
    w = [{"type": "Normal", "reason": "Killing"}, {"type": "Normal", "reason": "Started"}]
    assert sd.compare_events(k, w) == {
        "only_kubelet": ["Warning/Unhealthy"],
        "only_warmlet": ["Normal/Started"],
    }


views = st.lists(
    st.dictionaries(st.sampled_from(["phase", "a", "b"]), st.sampled_from([0, 1, "x"]), max_size=3),
    max_size=6,
)


@given(views, views)
def test_compare_is_symmetric_and_reflexive(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert sd.compare(a, a)["same"]
    ab, ba = sd.compare(a, b), sd.compare(b, a)
    assert ab["same"] == ba["same"]
    assert set(ab["differs"]) == set(ba["differs"])
    for p, d in ab["differs"].items():
        assert ba["differs"][p] == {"kubelet": d["warmlet"], "warmlet": d["kubelet"]}


def test_specs_render_pinned_to_the_node_with_the_bed_image() -> None:
    names = [s.name for s in SPECS]
    assert len(names) == len(set(names))
    for s in SPECS:
        m = pod_manifest(s, "node-a", "reg/busybox:1")
        assert m["spec"]["nodeName"] == "node-a"
        images = {c["image"] for k in ("containers", "initContainers") for c in m["spec"].get(k) or []}
        assert images == {"reg/busybox:1"}
    assert terminal({"phase": "Failed"}) and not terminal({"phase": "Running"})
    assert restarts("init.i", 1)({"init.i.restartCount": 1}) and not restarts("init.i", 1)({})


def test_messages_lose_the_runs_uid_and_namespace() -> None:
    crash = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s pod=p_ns-1(u-1)"}}
    v = sd.normalise(status(state=crash), {"u-1": "<uid>", "ns-1": "<namespace>"})
    assert v["containers.app.state.message"] == "back-off 10s pod=p_<namespace>(<uid>)"


def test_from_first_start_drops_the_creating_steps() -> None:
    creating = status("Pending", {"waiting": {"reason": "ContainerCreating"}}, ready=False)
    views = sd.sequence([{"phase": "Pending"}, creating, status()])
    assert len(views) == 3
    assert sd.from_first_start(views) == views[2:]
    assert sd.from_first_start(views[:2]) == []
    last = {"containers.app.state": "waiting", "containers.app.lastState": "terminated"}
    assert sd.started(last) and not sd.started({"containers.app.state": "waiting"})


def _run(statuses: list[Any]) -> dict[str, Any]:
    return {"sequence": sd.sequence(statuses), "events": [], "timed_out": False, "seconds": 1.0}


def test_creating_steps_are_an_accepted_difference_and_a_later_gap_is_not() -> None:
    creating = status("Pending", {"waiting": {"reason": "ContainerCreating"}}, ready=False)
    kubelet = _run([{"phase": "Pending"}, creating, status()])
    d = diff_spec(SPECS[0], kubelet, _run([{"phase": "Pending"}, status()]))
    assert d["same"] and d["fields_differing"] == [] and d["differs"] == {}
    assert d["accepted"]["containers.app.state"]["accepted"] == "creating-steps"
    assert set(d["accepted"]) == {
        "containers.app.ready",
        "containers.app.state",
        "containers.app.state.reason",
        "conditions.Ready.status",
    }
    assert "creating-steps" in sd.ACCEPTED
    # the same warmlet sequence, then a ready flap kubelet never showed: a gap, not accepted
    flap = _run([{"phase": "Pending"}, status(), status(ready=False), status()])
    d = diff_spec(SPECS[0], kubelet, flap)
    assert not d["same"]
    assert "containers.app.ready" in d["fields_differing"] and "containers.app.ready" not in d["accepted"]
    assert d["kubelet"]["steps"] == 3 and "sequence" not in d["kubelet"]  # only differing fields stored


def test_a_terminal_pod_keeps_being_recorded_after_its_end_condition() -> None:
    """kubelet reports PodReadyToStartContainers=False only after the terminal phase: the
    recording keeps a terminal pod's last updates, and nothing of a pod that is not terminal."""

    rec = Recording(Spec("job", {}, window=1, until=terminal))
    pod = {"metadata": {"uid": "u", "namespace": "n"}}
    rec.add({**pod, "status": status("Failed", ready=False)})
    assert rec.done.is_set()
    later = status("Failed", ready=False)
    later["conditions"].append({"type": "PodReadyToStartContainers", "status": "False"})
    rec.add({**pod, "status": later})
    assert len(rec.statuses) == 2
    other = Recording(Spec("crash", {}, window=1, until=restarts("containers.app", 1)))
    other.add({**pod, "status": status(restarts_=1)})
    other.add({**pod, "status": status(restarts_=2)})
    assert other.done.is_set() and len(other.statuses) == 1
