"""Probes end to end in the pod worker against the simulated backend, on one FakeClock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pod_fakes import FakeApi, FakeRecorder, make_pod, make_worker

from common.clock import FakeClock
from provider.pods.worker import PodWorker
from provider.probes import metrics
from sandbox.simulated import SimulatedBackend


class Env:
    def __init__(self, tmp: Path) -> None:
        self.clock = FakeClock()
        self.api = FakeApi()
        self.backend = SimulatedBackend(tmp / "logs", clock=self.clock)
        self.rec = FakeRecorder()
        self.worker: PodWorker = make_worker(tmp, self.api, self.backend, self.rec, self.clock)
        self.changed: list[str] = []
        self.worker.probes.on_change = self.changed.append
        self.backend.subscribe(self.changed.append)
        self.due: dict[str, float] = {}

    async def sync(self, uid: str) -> None:
        again = await self.worker.sync(uid)
        if again is not None:
            self.due[uid] = self.clock.monotonic() + again

    async def drive(self, seconds: float, step: float = 0.25) -> None:
        """Time passes; a pod is synced when a probe result or its runtime changed, or when its
        sync asked to be retried (as the work queue does)."""
        end = self.clock.monotonic() + seconds
        while self.clock.monotonic() < end:
            await self.clock.advance(step)
            now = self.clock.monotonic()
            todo = set(self.changed) | {u for u, t in self.due.items() if t <= now}
            self.changed.clear()
            for uid in todo:
                self.due.pop(uid, None)
                if uid in self.api.pods:
                    await self.sync(uid)

    def cs(self, uid: str, i: int = 0) -> dict[str, Any]:
        result: dict[str, Any] = self.api.pods[uid]["status"]["containerStatuses"][i]
        return result

    def cond(self, uid: str, ctype: str) -> str:
        return next(c["status"] for c in self.api.pods[uid]["status"]["conditions"] if c["type"] == ctype)

    def messages(self, reason: str) -> list[str]:
        return [m for _, _, r, m in self.rec.events if r == reason]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = Env(tmp_path)
    runner = asyncio.create_task(e.worker.probes.run())
    yield e
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)


def app(**probes: Any) -> list[dict[str, Any]]:
    return [{"name": "app", "image": "registry.local/app:1", **probes}]


EXEC = {"exec": {"command": ["check"]}}


async def test_readiness_fails_keeps_pod_unready_and_records_unhealthy(env: Env) -> None:
    ann = {"warmlet.io/sim-probe-readiness": "fail"}
    env.api.add(
        make_pod("bad", "u1", annotations=ann, containers=app(readinessProbe={**EXEC, "periodSeconds": 1}))
    )
    env.api.add(make_pod("good", "u2", containers=app(readinessProbe={**EXEC, "periodSeconds": 1})))
    await env.worker.sync("u1")
    await env.worker.sync("u2")
    assert not env.cs("u1")["ready"] and not env.cs("u2")["ready"]  # readiness starts as Failure
    await env.drive(5)
    assert env.api.pods["u1"]["status"]["phase"] == "Running"
    assert not env.cs("u1")["ready"] and env.cs("u1")["started"]
    assert env.cond("u1", "ContainersReady") == "False" and env.cond("u1", "Ready") == "False"
    assert env.cs("u2")["ready"] and env.cond("u2", "Ready") == "True"
    assert "Readiness probe failed: simulated probe failure" in env.messages("Unhealthy")
    assert "Killing" not in env.rec.reasons("bad")  # readiness never kills
    assert b'prober_probe_total{container="app",namespace="ns",pod="good"' in metrics.render()


async def test_readiness_waits_for_initial_delay_and_success_threshold(env: Env) -> None:
    probe = {**EXEC, "periodSeconds": 1, "initialDelaySeconds": 5, "successThreshold": 2}
    env.api.add(make_pod("p", "u1", containers=app(readinessProbe=probe)))
    await env.sync("u1")
    await env.drive(5.5)
    assert not env.cs("u1")["ready"]  # first success at >= 5 s, the second one a period later
    await env.drive(2)
    assert env.cs("u1")["ready"]


async def test_exec_probe_uses_the_backend_exec(env: Env) -> None:
    ann = {"warmlet.io/sim-exec-exit-code": "1", "warmlet.io/sim-exec-output": "not yet"}
    env.api.add(
        make_pod("p", "u1", annotations=ann, containers=app(readinessProbe={**EXEC, "periodSeconds": 1}))
    )
    await env.sync("u1")
    await env.drive(3)
    assert not env.cs("u1")["ready"]
    assert "Readiness probe failed: not yet" in env.messages("Unhealthy")


async def test_exec_timeout_is_a_failure_with_kubelets_message(env: Env) -> None:
    ann = {"warmlet.io/sim-exec-seconds": "5"}
    probe = {**EXEC, "periodSeconds": 2, "timeoutSeconds": 1}
    env.api.add(make_pod("p", "u1", annotations=ann, containers=app(readinessProbe=probe)))
    await env.sync("u1")
    await env.drive(4)
    assert 'Readiness probe failed: command timed out: "check" timed out after 1s' in env.messages(
        "Unhealthy"
    )
    assert not env.cs("u1")["ready"]


async def test_liveness_failure_kills_and_restarts_with_backoff(env: Env) -> None:
    ann = {"warmlet.io/sim-probe-liveness": "fail"}
    probe = {**EXEC, "periodSeconds": 1, "failureThreshold": 3, "terminationGracePeriodSeconds": 7}
    env.api.add(make_pod("p", "u1", annotations=ann, containers=app(livenessProbe=probe)))
    await env.sync("u1")
    await env.drive(3.5)
    assert env.messages("Killing") == ["Container app failed liveness probe, will be restarted"]
    assert env.messages("Unhealthy").count("Liveness probe failed: simulated probe failure") >= 3
    cs = env.cs("u1")
    assert cs["restartCount"] == 1 and "running" in cs["state"]
    assert cs["lastState"]["terminated"]["exitCode"] == 143
    await env.drive(4)  # three more failures: killed again, now in back-off (10 s)
    assert len(env.messages("Killing")) == 2
    assert env.cs("u1")["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    await env.drive(10)
    assert env.cs("u1")["restartCount"] == 2


async def test_liveness_failure_with_restart_policy_never_is_not_restarted(env: Env) -> None:
    ann = {"warmlet.io/sim-probe-liveness": "fail"}
    probe = {**EXEC, "periodSeconds": 1, "failureThreshold": 1}
    env.api.add(make_pod("p", "u1", policy="Never", annotations=ann, containers=app(livenessProbe=probe)))
    await env.sync("u1")
    await env.drive(2)
    assert env.messages("Killing") == ["Container app failed liveness probe"]
    assert env.api.pods["u1"]["status"]["phase"] == "Failed"
    assert env.cs("u1")["restartCount"] == 0


async def test_startup_gates_readiness_and_liveness(env: Env) -> None:
    ann = {"warmlet.io/sim-probe-startup": "succeed-after=4", "warmlet.io/sim-probe-liveness": "fail"}
    probes = {
        "startupProbe": {**EXEC, "periodSeconds": 1, "failureThreshold": 30},
        "readinessProbe": {**EXEC, "periodSeconds": 1},
        "livenessProbe": {**EXEC, "periodSeconds": 100, "initialDelaySeconds": 100},
    }
    env.api.add(make_pod("p", "u1", annotations=ann, containers=app(**probes)))
    await env.sync("u1")
    await env.drive(3)
    assert env.cs("u1")["started"] is False and env.cs("u1")["ready"] is False
    assert "Killing" not in env.rec.reasons()  # liveness is not run before the container started
    await env.drive(3)
    assert env.cs("u1")["started"] is True and env.cs("u1")["ready"] is True


async def test_startup_failure_kills(env: Env) -> None:
    ann = {"warmlet.io/sim-probe-startup": "fail"}
    env.api.add(
        make_pod(
            "p",
            "u1",
            annotations=ann,
            containers=app(startupProbe={**EXEC, "periodSeconds": 1, "failureThreshold": 2}),
        )
    )
    await env.sync("u1")
    await env.drive(2.5)
    assert env.messages("Killing") == ["Container app failed startup probe, will be restarted"]
    assert env.messages("Unhealthy")[0] == "Startup probe failed: simulated probe failure"


async def test_unresolvable_named_port_errors_and_keeps_result(env: Env) -> None:
    env.api.add(
        make_pod(
            "p", "u1", containers=app(readinessProbe={"tcpSocket": {"port": "nope"}, "periodSeconds": 1})
        )
    )
    await env.sync("u1")
    await env.drive(2)
    assert not env.cs("u1")["ready"]
    assert env.messages("Unhealthy")[0].startswith("Readiness probe errored and resulted in unknown state: ")


async def test_deleted_pod_leaves_no_probe(env: Env) -> None:
    env.api.add(make_pod("p", "u1", containers=app(readinessProbe={**EXEC, "periodSeconds": 1})))
    await env.worker.sync("u1")
    assert env.worker.probes.probes and len(env.worker.probes.scheduler) == 1
    env.api.pods["u1"]["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    await env.worker.sync("u1")
    assert (
        not env.worker.probes.probes and not env.worker.probes.pods and len(env.worker.probes.scheduler) == 0
    )
