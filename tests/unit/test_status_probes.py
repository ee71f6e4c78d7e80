"""Status: ``ready``/``started`` from probe results; ContainersReady and Ready follow."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from provider.status import compute_status
from sandbox.backend import ContainerRuntimeState, ContainerState

NOW = 1_700_000_000.0


def pod(*names: str, gates: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": n, "image": "i"} for n in names]}
    if gates:
        spec["readinessGates"] = [{"conditionType": "x/ok"}]
    return {"metadata": {"uid": "u"}, "spec": spec, "status": {}}


def run(name: str, state: ContainerState = ContainerState.RUNNING) -> ContainerRuntimeState:
    return ContainerRuntimeState(
        container_id=f"id-{name}", pod_uid="u", name=name, state=state, started_at=NOW - 5, created_at=NOW - 6
    )


def conds(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_no_probes_ready_when_running() -> None:
    s = compute_status(pod("a"), [run("a")], {}, NOW, sandbox_ready=True)
    cs = s["containerStatuses"][0]
    assert cs["ready"] and cs["started"] and conds(s)["Ready"] == "True"


def test_failing_readiness_keeps_pod_unready() -> None:
    s = compute_status(
        pod("a", "b"), [run("a"), run("b")], {}, NOW, sandbox_ready=True, probes={"a": (True, False)}
    )
    a, b = s["containerStatuses"]
    assert (a["ready"], a["started"], b["ready"]) == (False, True, True)
    assert s["phase"] == "Running"
    c = {x["type"]: x for x in s["conditions"]}
    assert c["ContainersReady"]["status"] == "False" and c["Ready"]["status"] == "False"
    assert c["Ready"]["message"] == "containers with unready status: [a]"


def test_not_started_is_not_ready() -> None:
    s = compute_status(pod("a"), [run("a")], {}, NOW, sandbox_ready=True, probes={"a": (False, True)})
    assert s["containerStatuses"][0]["started"] is False and s["containerStatuses"][0]["ready"] is False


def test_exited_container_is_never_ready_whatever_the_probes_say() -> None:
    s = compute_status(
        pod("a"), [run("a", ContainerState.EXITED)], {}, NOW, sandbox_ready=True, probes={"a": (True, True)}
    )
    assert not s["containerStatuses"][0]["ready"] and not s["containerStatuses"][0]["started"]


def test_readiness_gates_still_apply() -> None:
    s = compute_status(
        pod("a", gates=True), [run("a")], {}, NOW, sandbox_ready=True, probes={"a": (True, True)}
    )
    assert conds(s)["ContainersReady"] == "True" and conds(s)["Ready"] == "False"


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=4))
def test_containers_ready_iff_every_container_started_and_ready(flags: list[tuple[bool, bool]]) -> None:
    names = [f"c{i}" for i in range(len(flags))]
    probes = dict(zip(names, flags, strict=True))
    s = compute_status(pod(*names), [run(n) for n in names], {}, NOW, sandbox_ready=True, probes=probes)
    want = all(started and ready for started, ready in flags)
    assert (conds(s)["ContainersReady"] == "True") == want == (conds(s)["Ready"] == "True")
    for cs, (started, ready) in zip(s["containerStatuses"], flags, strict=True):
        assert cs["started"] == started and cs["ready"] == (started and ready)
