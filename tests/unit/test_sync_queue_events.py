"""Work queue semantics (coalescing, one worker per key, retries) and the event token bucket."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

from common.clock import FakeClock
from provider.events import TokenBucket, object_ref
from provider.pods.queue import WorkQueue


async def until(cond: Callable[[], bool], rounds: int = 200) -> None:
    """Let the queue's tasks run (no wall time passes) until ``cond`` holds."""
    for _ in range(rounds):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def test_queue_coalesces_and_never_runs_a_key_twice_at_once() -> None:
    running: set[str] = set()
    runs: list[str] = []
    overlap = False
    gate = asyncio.Event()

    async def handler(key: str) -> float | None:
        nonlocal overlap
        if key in running:
            overlap = True
        running.add(key)
        runs.append(key)
        await gate.wait()
        running.discard(key)
        return None

    q = WorkQueue(handler, workers=4)
    task = asyncio.create_task(q.run())
    for _ in range(5):
        q.add("a")
    q.add("b")
    await until(lambda: len(runs) == 2)
    for _ in range(10):
        await asyncio.sleep(0)  # nothing else runs while "a" and "b" are busy
    assert sorted(runs) == ["a", "b"]
    for _ in range(5):
        q.add("a")  # while "a" runs: marked dirty, runs once more afterwards
    gate.set()
    await until(lambda: q.idle)
    assert runs.count("a") == 2 and runs.count("b") == 1
    assert not overlap
    assert q.idle
    task.cancel()


async def test_queue_retries_failures_and_requeues_after() -> None:
    calls: list[str] = []

    async def handler(key: str) -> float | None:
        calls.append(key)
        if key == "fail" and calls.count("fail") < 3:
            raise RuntimeError("boom")
        if key == "later" and calls.count("later") == 1:
            return 0.05
        return None

    clock = FakeClock()
    q = WorkQueue(handler, workers=2, base_delay=0.01, clock=clock)
    task = asyncio.create_task(q.run())
    q.add("fail")
    q.add("later")
    await until(lambda: len(calls) == 2)
    await clock.advance(0.01)  # before any retry is due (first failure waits 10-20 ms)
    assert calls.count("fail") == 1 and calls.count("later") == 1
    for _ in range(10):
        await clock.advance(0.05)
    assert calls.count("fail") == 3
    assert calls.count("later") == 2
    assert q.idle and not q._timers
    task.cancel()
    q.close()


async def test_queue_earlier_requeue_wins_and_forget_cancels() -> None:
    calls: list[str] = []

    async def handler(key: str) -> float | None:
        calls.append(key)
        return None

    clock = FakeClock()
    q = WorkQueue(handler, workers=1, clock=clock)
    task = asyncio.create_task(q.run())
    q.add_after("k", 10.0)
    q.add_after("k", 3.0)  # earlier: replaces
    q.add_after("k", 5.0)  # later: ignored
    await clock.advance(2.9)
    assert calls == []
    await clock.advance(0.2)
    await until(lambda: calls == ["k"])
    await clock.advance(10.0)
    assert calls == ["k"]  # the replaced timers never fire
    q.add_after("g", 1.0)
    q.forget("g")
    await clock.advance(5.0)
    assert calls == ["k"]
    task.cancel()
    q.close()


def test_token_bucket() -> None:
    b = TokenBucket(qps=10, burst=2, now=0.0)
    assert b.take(0.0) == 0 and b.take(0.0) == 0
    assert abs(b.take(0.0) - 0.1) < 1e-9
    assert b.take(1.0) == 0


def test_object_ref() -> None:
    ref = object_ref({"metadata": {"name": "p", "namespace": "ns", "uid": "u", "resourceVersion": "7"}})
    assert ref == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "p",
        "uid": "u",
        "resourceVersion": "7",
        "namespace": "ns",
    }
    node = object_ref({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "vn", "uid": "n"}})
    assert "namespace" not in node and node["kind"] == "Node"


async def test_controller_resyncs_every_pod_on_its_clock(tmp_path: Path) -> None:
    from pod_fakes import FakeApi, FakeRecorder, make_pod

    from provider.config import WarmletConfig
    from provider.pods.controller import PodController
    from sandbox.simulated import SimulatedBackend

    cfg = WarmletConfig()
    cfg.pods.volumes_dir = tmp_path / "pods"
    clock = FakeClock()
    ctl = PodController(
        cfg.node,
        cfg.pods,
        FakeApi(),
        SimulatedBackend(tmp_path / "logs"),
        FakeRecorder(),
        {},
        60.0,
        clock,  # type: ignore[arg-type]
    )
    ctl.informer.reflector.objects.update({"u1": make_pod("p1", "u1"), "u2": make_pod("p2", "u2")})
    periodic = asyncio.create_task(ctl._periodic())
    await asyncio.sleep(0)
    await clock.advance(55.0)
    assert len(ctl.queue) == 0  # not yet
    await clock.advance(5.0)
    assert len(ctl.queue) == 2  # both pods queued once the resync period passed
    periodic.cancel()
    ctl.close()


def test_pod_events_policy_and_what_is_sent() -> None:
    from provider.events import NORMAL, WARNING, pod_events_policy, sent

    assert pod_events_policy("auto", runs_processes=True) == "all"
    assert pod_events_policy("auto", runs_processes=False) == "warnings"
    assert pod_events_policy("all", runs_processes=False) == "all"
    assert pod_events_policy("warnings", runs_processes=True) == "warnings"
    for kind in ("Pod", "Node"):
        for type_ in (NORMAL, WARNING):
            assert sent(kind, type_, "all")
            assert sent(kind, type_, "warnings") == (kind != "Pod" or type_ == WARNING)


async def test_a_simulated_node_sends_only_warning_events_about_pods(tmp_path: Path) -> None:
    """pods.pod_events auto on the simulated backend: a pod's Normal events are counted, not
    written; its Warnings and the Node's events are written. On CRI (runs processes) all are."""
    from pod_fakes import FakeApi
    from prometheus_client import REGISTRY

    from provider.config import WarmletConfig
    from provider.events import NORMAL, WARNING, EventRecorder
    from provider.pods.controller import PodController
    from sandbox.simulated import SimulatedBackend

    cfg = WarmletConfig()
    cfg.pods.volumes_dir = tmp_path / "pods"
    api = FakeApi()
    rec = EventRecorder(api, "vn")  # type: ignore[arg-type]
    backend = SimulatedBackend(tmp_path / "logs")
    PodController(cfg.node, cfg.pods, api, backend, rec, {})  # type: ignore[arg-type]
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u"}}
    node = {"kind": "Node", "metadata": {"name": "vn", "uid": "n"}}

    def not_sent() -> float:
        return REGISTRY.get_sample_value("warmlet_events_not_sent_total", {"reason": "Started"}) or 0.0

    before = not_sent()
    rec.record(pod, NORMAL, "Started", "Started container app")
    rec.record(pod, WARNING, "Failed", "Error: x")
    rec.record(node, NORMAL, "NodeReady", "ready")
    assert [e.reason for e in list(rec._queue._queue)] == ["Failed", "NodeReady"]  # type: ignore[attr-defined]
    assert not_sent() - before == 1
    cfg.pods.pod_events = "all"
    PodController(cfg.node, cfg.pods, api, backend, rec, {})  # type: ignore[arg-type]
    rec.record(pod, NORMAL, "Started", "Started container app")
    assert rec._queue.qsize() == 3


async def test_the_pod_informer_keeps_pods_without_managed_fields() -> None:
    """managedFields is often half a pod's bytes and nothing reads it: dropped from list and watch."""
    from typing import Any

    from provider.pods.informer import PodInformer

    pod = {
        "metadata": {"uid": "u1", "name": "p", "managedFields": [{"manager": "kubectl"}]},
        "spec": {"nodeName": "vn"},
    }

    class Api:
        async def list_all(self, path: str, **params: Any) -> dict[str, Any]:
            return {"metadata": {"resourceVersion": "1"}, "items": [pod]}

        def watch(self, *a: Any, **kw: Any) -> Any:
            raise AssertionError("not watched in this test")

    informer = PodInformer(Api(), "vn", lambda uid: None)  # type: ignore[arg-type]
    await informer.reflector._list("initial")
    assert informer.get("u1") == {"metadata": {"uid": "u1", "name": "p"}, "spec": {"nodeName": "vn"}}


async def test_events_wait_for_the_starts_in_flight_at_most_their_bound() -> None:
    """Status first: an event recorded while a pod start is in its section is sent when the last
    section ends, or STATUS_FIRST_MAX_SECONDS after it was recorded if starts never stop."""
    from pod_fakes import FakeApi

    from common.clock import FakeClock
    from provider.events import NORMAL, STATUS_FIRST_MAX_SECONDS, EventRecorder

    clock = FakeClock()
    api = FakeApi()
    rec = EventRecorder(api, "vn", clock=clock)  # type: ignore[arg-type]
    sender = asyncio.create_task(rec.run())
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u"}}

    def posted() -> list[str]:
        return [b["reason"] for v, p, b in api.calls if v == "POST" and p.endswith("/events")]

    try:
        with rec.status_first():
            with rec.status_first():  # nested: a second pod starting
                rec.record(pod, NORMAL, "Created", "Created container app")
                await clock.advance(0.1)
                assert posted() == []
            await clock.advance(0.1)
            assert posted() == []  # one start still in flight
        await clock.advance(0)
        await asyncio.sleep(0)
        assert posted() == ["Created"]  # the last section ended

        with rec.status_first(active=False):  # a sync that starts nothing holds nothing back
            rec.record(pod, NORMAL, "Killing", "Stopping container app")
            await clock.advance(0)
            await asyncio.sleep(0)
            assert posted() == ["Created", "Killing"]

        with rec.status_first():  # starts that never stop: sent at the bound
            rec.record(pod, NORMAL, "Started", "Started container app")
            await clock.advance(STATUS_FIRST_MAX_SECONDS - 0.01)
            assert posted() == ["Created", "Killing"]
            await clock.advance(0.02)
            await asyncio.sleep(0)
            assert posted() == ["Created", "Killing", "Started"]
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
