"""Work queue semantics (coalescing, one worker per key, retries) and the event token bucket."""

from __future__ import annotations

import asyncio

from provider.events import TokenBucket, object_ref
from provider.pods.queue import WorkQueue


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
    await asyncio.sleep(0.05)
    assert sorted(runs) == ["a", "b"]
    for _ in range(5):
        q.add("a")  # while "a" runs: marked dirty, runs once more afterwards
    gate.set()
    await asyncio.sleep(0.05)
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

    q = WorkQueue(handler, workers=2, base_delay=0.01)
    task = asyncio.create_task(q.run())
    q.add("fail")
    q.add("later")
    await asyncio.sleep(0.5)
    assert calls.count("fail") == 3
    assert calls.count("later") == 2
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
