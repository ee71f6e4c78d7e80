"""started/ready from probe results (kubelet's UpdatePodStatus), exhaustively; and across a restart."""

from __future__ import annotations

import dataclasses
import itertools

from common.clock import FakeClock
from provider.probes.container_status import Known, started_ready
from provider.probes.manager import ProbeManager
from provider.probes.state import Result
from sandbox.backend import BackendCapabilities, ContainerRuntimeState, ContainerState

RESULTS = (None, Result.SUCCESS, Result.FAILURE, Result.UNKNOWN)


def every_known() -> list[Known]:
    out = []
    for running, hs, sr, hr, rr, ws, pr, pre in itertools.product(
        (True, False),
        (True, False),
        RESULTS,
        (True, False),
        RESULTS,
        (True, False),
        (True, False),
        (True, False),
    ):
        if (sr is not None and not hs) or (rr is not None and not hr):
            continue  # a result only exists for a probe that exists
        out.append(Known(running, hs, sr, hr, rr, ws, pr, pre))
    return out


def test_every_combination() -> None:
    for k in every_known():
        started, ready = started_ready(k)
        assert not ready or started, k  # ready implies started
        if not k.running:
            assert (started, ready) == (False, False), k
            continue
        if k.startup is not None:
            assert started == (k.startup == Result.SUCCESS), k
        elif not k.has_startup:
            assert started, k
        else:
            assert started == k.was_started, k  # kubelet restarted: the previous status stands
        if not started:
            continue
        if not k.has_readiness or k.readiness == Result.SUCCESS:
            assert ready or (k.predates_manager and k.has_readiness), k
        if k.readiness in (Result.FAILURE, Result.UNKNOWN):
            assert not ready, k
        if k.has_readiness and k.readiness is None:
            assert ready == (k.predates_manager and k.pod_was_ready), k
        if not k.has_startup and not k.has_readiness:
            assert (started, ready) == (True, True), k


class _Backend:
    capabilities = BackendCapabilities(runs_processes=False)


async def test_a_restarted_warmlet_keeps_a_ready_pod_ready_until_a_probe_says_otherwise() -> None:
    clock = FakeClock()
    m = ProbeManager(_Backend(), None, lambda uid: None, clock)  # type: ignore[arg-type]
    old = ContainerRuntimeState(
        container_id="c1", pod_uid="u", name="a", state=ContainerState.RUNNING, started_at=clock.time() - 100
    )
    pod = {
        "metadata": {"uid": "u", "name": "p", "namespace": "ns"},
        "spec": {
            "containers": [
                {
                    "name": "a",
                    "readinessProbe": {"exec": {"command": ["x"]}},
                    "startupProbe": {"exec": {"command": ["x"]}},
                }
            ]
        },
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {"name": "a", "started": True, "ready": True, "containerID": "containerd://c1"}
            ],
        },
    }
    m.update(pod, [old], "10.0.0.1")
    assert m.status("u") == {"a": (True, True)}
    fresh = dataclasses.replace(old, container_id="c2", started_at=clock.time())
    m.update(pod, [fresh], "10.0.0.1")
    assert m.status("u") == {"a": (False, False)}  # a new container: its startup probe decides
    await m.scheduler.timers.close()
