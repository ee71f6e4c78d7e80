"""The CRI PLEG: typed events between two relists, health by the age of the last relist, and the
relist loop's back-off and recovery on a fake clock."""

from __future__ import annotations

import asyncio

from common.clock import FakeClock
from proto import cri_pb2 as pb
from sandbox.backend import RuntimeUnavailableError
from sandbox.cri import mapping as m
from sandbox.cri.pleg import EventType, Pleg, PodLifecycleEvent, diff, relist_health

RUNNING, EXITED = pb.CONTAINER_RUNNING, pb.CONTAINER_EXITED
CREATED, UNKNOWN = pb.CONTAINER_CREATED, pb.CONTAINER_UNKNOWN


def ev(uid: str, cid: str, kind: EventType) -> PodLifecycleEvent:
    return PodLifecycleEvent(uid, cid, kind)


def test_diff_types_each_change() -> None:
    old = {"run": (RUNNING, "a"), "dies": (RUNNING, "a"), "gone": (EXITED, "b"), "same": (EXITED, "b")}
    new = {
        "run": (RUNNING, "a"),  # unchanged: no event
        "dies": (EXITED, "a"),
        "same": (EXITED, "b"),
        "fresh": (CREATED, "c"),  # new, only created
        "up": (RUNNING, "c"),  # new and already running
        "lost": (UNKNOWN, "d"),
    }
    assert sorted(diff(old, new), key=lambda e: e.container_id) == [
        ev("a", "dies", EventType.CONTAINER_DIED),
        ev("c", "fresh", EventType.CONTAINER_CHANGED),
        ev("b", "gone", EventType.CONTAINER_REMOVED),
        ev("d", "lost", EventType.CONTAINER_CHANGED),
        ev("c", "up", EventType.CONTAINER_STARTED),
    ]


def test_diff_ignores_containers_of_no_pod_and_an_unchanged_list() -> None:
    assert diff({"x": (RUNNING, "")}, {"y": (EXITED, "")}) == []
    snap = {"c": (RUNNING, "a")}
    assert diff(snap, dict(snap)) == []
    assert diff({"c": (CREATED, "a")}, {"c": (RUNNING, "a")}) == [ev("a", "c", EventType.CONTAINER_STARTED)]


def test_health_by_the_age_of_the_last_relist() -> None:
    assert relist_health(None, 1e9, 180.0) == (True, "")  # never relisted yet: nothing is late
    assert relist_health(100.0, 280.0, 180.0) == (True, "")  # exactly at the threshold
    ok, msg = relist_health(100.0, 280.5, 180.0)
    assert not ok and msg == "pleg was last seen active 180.5s ago; threshold is 180s"


class FakeClient:
    def __init__(self) -> None:
        self.containers: list[pb.Container] = []
        self.down = False
        self.calls = 0

    async def list_containers(self, labels: dict[str, str] | None = None) -> list[pb.Container]:
        self.calls += 1
        if self.down:
            raise RuntimeUnavailableError("runtime away")
        return list(self.containers)


def cont(cid: str, uid: str, state: int) -> pb.Container:
    return pb.Container(id=cid, labels={m.LABEL_POD_UID: uid}, state=state)  # type: ignore[arg-type]


class Recorder:
    def __init__(self) -> None:
        self.notified: list[str] = []
        self.died: list[list[str]] = []
        self.recovered = 0

    def notify(self, uid: str) -> None:
        self.notified.append(uid)

    async def on_died(self, ids: list[str]) -> None:
        self.died.append(sorted(ids))

    def on_recovered(self) -> None:
        self.recovered += 1


def make(clock: FakeClock) -> tuple[Pleg, FakeClient, Recorder]:
    client, rec = FakeClient(), Recorder()
    pleg = Pleg(
        client,  # type: ignore[arg-type]
        {},
        1.0,
        rec.notify,
        rec.on_died,
        rec.on_recovered,
        clock=clock,
        threshold=180.0,
    )
    return pleg, client, rec


async def test_relist_notifies_changed_pods_and_reports_newly_exited_containers() -> None:
    pleg, client, rec = make(FakeClock())
    client.containers = [cont("c1", "a", RUNNING), cont("c2", "b", RUNNING)]
    pleg.seed(client.containers)  # adopted: no events for what already ran
    assert await pleg.relist() == set()
    client.containers = [cont("c1", "a", EXITED), cont("c2", "b", RUNNING), cont("c3", "c", CREATED)]
    assert await pleg.relist() == {"a", "c"}
    assert rec.died == [["c1"]] and sorted(rec.notified) == ["a", "c"]
    client.containers = [cont("c2", "b", RUNNING)]  # c1 removed, c3 removed
    assert await pleg.relist() == {"a", "c"}
    assert rec.died == [["c1"]]  # a removal is no death


async def test_the_loop_backs_off_while_the_runtime_is_away_and_recovers_once() -> None:
    clock = FakeClock()
    pleg, client, rec = make(clock)
    pleg.seed([])
    task = asyncio.create_task(pleg.run())
    try:
        await clock.advance(0)  # the loop starts and sleeps
        await clock.advance(1.0)
        assert client.calls == 1 and pleg.healthy() == (True, "")
        client.down = True
        # failures: next relist after 2, 4, 8, then 10 s (the cap), not every second
        for wait, calls in ((1.0, 2), (2.0, 3), (4.0, 4), (8.0, 5), (10.0, 6), (10.0, 7)):
            await clock.advance(wait - 0.01)
            assert client.calls == calls - 1
            await clock.advance(0.01)
            assert client.calls == calls
        assert pleg.healthy()[0]  # 35 s without a relist: still within the threshold
        for _ in range(15):
            await clock.advance(10.0)
        healthy, msg = pleg.healthy()
        assert not healthy and "threshold is 180s" in msg
        assert rec.recovered == 0
        client.down = False
        await clock.advance(10.0)
        assert rec.recovered == 1 and pleg.healthy() == (True, "")
        calls = client.calls
        await clock.advance(1.0)  # back to the interval
        assert client.calls == calls + 1 and rec.recovered == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
