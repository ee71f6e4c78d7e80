"""Pod status writes: coalescing (pure) and the rate-limited, per-pod coalescing queue."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.clock import FakeClock
from common.ratelimit import TokenBucket
from provider.kubeclient import ApiError
from provider.pods.hold import STARTED_AT_ANNOTATION
from provider.pods.status_queue import StatusQueue, StatusWrite, coalesce, retryable
from provider.pods.status_writer import (
    DELETION_COST_ANNOTATION,
    START_LEVEL_ANNOTATION,
    missing_start_annotations,
    needs_write,
    start_level,
    status_patch_body,
)
from sandbox.backend import StartLevel

JSON = dict[str, Any]

# ------------------------------------------------------------------ a small strategic merge model


def _merge_conditions(old: list[JSON], new: list[JSON]) -> list[JSON]:
    out = [dict(c) for c in old]
    for c in new:
        at = next((i for i, o in enumerate(out) if o["type"] == c["type"]), None)
        merged = {**(out[at] if at is not None else {}), **c}
        merged = {k: v for k, v in merged.items() if v is not None}  # null deletes
        if at is None:
            out.append(merged)
        else:
            out[at] = merged
    return out


def apply(obj: JSON, body: JSON) -> JSON:
    """The API object after a pods/status strategic merge patch of the shape warmlet sends."""
    out = copy.deepcopy(obj)
    anns = (body.get("metadata") or {}).get("annotations")
    if anns:
        out.setdefault("metadata", {}).setdefault("annotations", {}).update(anns)
    status = out.setdefault("status", {})
    for k, v in (body.get("status") or {}).items():
        if k == "conditions":
            status[k] = _merge_conditions(status.get(k) or [], v)
        elif k in ("podIPs", "hostIPs"):
            status[k] = [e for e in v if "$patch" not in e]
        else:
            status[k] = v
    return out


conditions = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["Ready", "ContainersReady", "Initialized", "PodScheduled"])},
        optional={
            "status": st.sampled_from(["True", "False"]),
            "reason": st.one_of(st.none(), st.sampled_from(["ContainersNotReady", "PodCompleted"])),
            "message": st.one_of(st.none(), st.text(max_size=3)),
        },
    ),
    max_size=4,
    unique_by=lambda c: c["type"],
)
statuses = st.fixed_dictionaries(
    {},
    optional={
        "phase": st.sampled_from(["Pending", "Running", "Succeeded"]),
        "conditions": conditions,
        "podIPs": st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2"]), max_size=2, unique=True).map(
            lambda ips: [*({"ip": ip} for ip in ips), {"$patch": "replace"}]
        ),
        "containerStatuses": st.lists(
            st.fixed_dictionaries({"name": st.sampled_from(["a", "b"])}), max_size=2
        ),
        "reason": st.sampled_from(["DeadlineExceeded", "Evicted"]),
    },
)
bodies = st.builds(
    lambda uid, status, anns: {
        "metadata": {"uid": uid, **({"annotations": anns} if anns else {})},
        "status": status,
    },
    st.just("u1"),
    statuses,
    st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(["1", "2"]), max_size=2),
)
base_objects = st.builds(
    lambda status, anns: {"metadata": {"annotations": anns}, "status": status},
    statuses.map(
        lambda s: {k: ([e for e in v if "$patch" not in e] if k == "podIPs" else v) for k, v in s.items()}
    ),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(["0", "1"]), max_size=2),
)


@settings(max_examples=200, deadline=None)
@given(base=base_objects, a=bodies, b=bodies)
def test_a_coalesced_write_leaves_the_api_object_as_the_two_writes_would(
    base: JSON, a: JSON, b: JSON
) -> None:
    assert apply(base, coalesce(a, b)) == apply(apply(base, a), b)


@settings(max_examples=100, deadline=None)
@given(a=bodies, b=bodies, c=bodies)
def test_coalescing_is_associative(a: JSON, b: JSON, c: JSON) -> None:
    base: JSON = {"metadata": {}, "status": {}}
    assert apply(base, coalesce(coalesce(a, b), c)) == apply(base, coalesce(a, coalesce(b, c)))


def test_coalesce_keeps_the_newer_phase_and_every_annotation() -> None:
    a = {"metadata": {"uid": "u", "annotations": {"x": "1"}}, "status": {"phase": "Pending"}}
    b = {"metadata": {"uid": "u"}, "status": {"phase": "Running"}}
    assert coalesce(a, b) == {
        "metadata": {"uid": "u", "annotations": {"x": "1"}},
        "status": {"phase": "Running"},
    }


# ------------------------------------------------------------------ pure decisions of the writer


def test_needs_write() -> None:
    running = {"phase": "Running"}
    assert needs_write(None, None, running, False)
    assert not needs_write(running, None, running, False)  # the API has it
    assert not needs_write({"phase": "Pending"}, running, running, False)  # written, watch lagging
    assert needs_write(running, running, running, True)  # annotations to write


def test_start_level() -> None:
    assert start_level(True, True, True) == StartLevel.PRECREATED
    assert start_level(False, True, True) == StartLevel.COLD
    assert start_level(False, False, True) == StartLevel.WARM
    assert start_level(False, False, False) == StartLevel.IMAGE_CACHED


def test_missing_start_annotations_never_rewrites_what_the_pod_carries() -> None:
    full = missing_start_annotations({}, StartLevel.WARM, 1_700_000_000.25, -1000)
    assert full == {
        START_LEVEL_ANNOTATION: "warm",
        STARTED_AT_ANNOTATION: full[STARTED_AT_ANNOTATION],
        DELETION_COST_ANNOTATION: "-1000",
    }
    assert missing_start_annotations(full, StartLevel.COLD, 1.0, -1000) == {}
    assert missing_start_annotations({}, StartLevel.WARM, None, None) == {START_LEVEL_ANNOTATION: "warm"}
    # a deletion cost someone changed is set back to the configured one
    assert missing_start_annotations(
        {**full, DELETION_COST_ANNOTATION: "5"}, StartLevel.WARM, 1.0, -1000
    ) == {DELETION_COST_ANNOTATION: "-1000"}


def test_status_patch_body_carries_annotations_only_when_there_are_some() -> None:
    assert status_patch_body("u", {"phase": "Running"}, {}) == {
        "metadata": {"uid": "u"},
        "status": {"phase": "Running"},
    }
    body = status_patch_body("u", {"phase": "Running"}, {"k": "v"})
    assert body["metadata"] == {"uid": "u", "annotations": {"k": "v"}}


def test_retryable() -> None:
    assert retryable(ConnectionRefusedError()) and retryable(TimeoutError())
    assert retryable(ApiError(503, "", "")) and retryable(ApiError(429, "", ""))
    assert not retryable(ApiError(422, "Invalid", "")) and not retryable(ValueError())


def test_token_bucket_refills_at_qps_up_to_burst() -> None:
    b = TokenBucket(qps=2, burst=3, now=0.0)
    assert [b.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take(0.0) == pytest.approx(0.5)
    assert b.take(0.5) == 0.0
    assert b.take(100.0) == 0.0 and b.tokens == 2  # capped at burst
    with pytest.raises(ValueError):
        TokenBucket(qps=0, burst=1, now=0.0)


# ------------------------------------------------------------------ the queue


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, JSON]] = []
        self.fail: list[BaseException] = []

    async def send(self, w: StatusWrite) -> None:
        if self.fail:
            raise self.fail.pop(0)
        self.sent.append((w.key, w.body))
        for after in w.after:
            await after()


def write(key: str, phase: str, **anns: str) -> StatusWrite:
    meta: JSON = {"uid": key, **({"annotations": anns} if anns else {})}
    return StatusWrite(key, f"/pods/{key}/status", {"metadata": meta, "status": {"phase": phase}})


async def test_without_a_limit_every_write_goes_out_at_once() -> None:
    sink = Sink()
    q = StatusQueue(sink.send, qps=0, clock=FakeClock())
    for i in range(50):
        assert await q.submit(write(f"u{i}", "Running"))
    assert len(sink.sent) == 50 and len(q) == 0
    await q.run()  # nothing to drain: returns at once


async def test_writes_beyond_the_burst_wait_for_tokens_and_a_newer_status_replaces_a_queued_one() -> None:
    clock = FakeClock()
    sink = Sink()
    q = StatusQueue(sink.send, qps=2, burst=2, clock=clock)
    drain = asyncio.create_task(q.run())
    try:
        assert await q.submit(write("u1", "Running"))
        assert await q.submit(write("u2", "Pending"))
        done: list[str] = []
        w3 = write("u3", "Pending", level="warm")
        w3.after.append(lambda: _note(done, "first"))
        assert not await q.submit(w3)  # no token: queued, the caller goes on
        w3b = write("u3", "Running")
        w3b.after.append(lambda: _note(done, "second"))
        assert not await q.submit(w3b)  # merged into the queued write of u3
        assert not await q.submit(write("u2", "Running"))  # a queue ahead: u2 waits its turn
        assert len(q) == 2 and [k for k, _ in sink.sent] == ["u1", "u2"]
        await clock.advance(0.5)
        assert sink.sent[-1] == (
            "u3",
            {"metadata": {"uid": "u3", "annotations": {"level": "warm"}}, "status": {"phase": "Running"}},
        )
        assert done == ["first", "second"]
        await clock.advance(0.5)
        assert sink.sent[-1] == ("u2", {"metadata": {"uid": "u2"}, "status": {"phase": "Running"}})
        assert len(sink.sent) == 4 and len(q) == 0  # 5 submitted, 4 requests
    finally:
        drain.cancel()
        with pytest.raises(asyncio.CancelledError):
            await drain


async def _note(done: list[str], what: str) -> None:
    done.append(what)


async def test_a_queued_write_that_fails_for_a_passing_reason_is_sent_again_after_a_back_off() -> None:
    clock = FakeClock()
    sink = Sink()
    q = StatusQueue(sink.send, qps=10, burst=1, clock=clock)
    drain = asyncio.create_task(q.run())
    try:
        assert await q.submit(write("u1", "Running"))
        sink.fail = [ConnectionRefusedError(), ApiError(422, "Invalid", "bad")]
        assert not await q.submit(write("u2", "Running"))
        assert not await q.submit(write("u3", "Running"))
        await clock.advance(0.1)  # u2 fails (refused): queued again behind u3, back-off
        assert [k for k, _ in sink.sent] == ["u1"] and len(q) == 2
        await clock.advance(15.0)  # u3 fails for good (422): dropped; u2 goes out
        await clock.advance(1.0)
        assert [k for k, _ in sink.sent] == ["u1", "u2"] and len(q) == 0
    finally:
        drain.cancel()
        with pytest.raises(asyncio.CancelledError):
            await drain


async def test_the_status_writer_enforces_status_qps_and_sends_the_latest_status_of_a_waiting_pod(
    tmp_path: Any,
) -> None:
    """pods.status_qps 1 (burst 1): the first pod's write goes out at once, the second pod's two
    writes (Pending, then Running with its start annotations) wait and go out as ONE request a
    second later; the bookkeeping (last status, annotated) follows the send."""
    from pod_fakes import FakeApi, make_pod

    from provider.config import PodConfig
    from provider.pods.state import PodState
    from provider.pods.status_writer import StatusWriter
    from sandbox.simulated import SimulatedBackend

    clock = FakeClock()
    api = FakeApi()
    w = StatusWriter(
        PodConfig(status_qps=1, status_burst=1),
        api,  # type: ignore[arg-type]
        SimulatedBackend(tmp_path / "logs", clock=clock),
        "10.0.0.1",
        clock,
    )
    drain = asyncio.create_task(w.queue.run())
    try:
        for uid in ("u1", "u2"):
            api.add(make_pod(f"p-{uid}", uid))
        s1, s2 = PodState(), PodState()
        await w.patch(api.pods["u1"], s1, {"phase": "Running"}, {START_LEVEL_ANNOTATION: "warm"})
        assert s1.annotated and s1.last_status == {"phase": "Running"}
        await w.patch(api.pods["u2"], s2, {"phase": "Pending"})
        await w.patch(api.pods["u2"], s2, {"phase": "Running"}, {START_LEVEL_ANNOTATION: "cold"})
        assert len(api.patches()) == 1 and s2.last_status is None and not s2.annotated
        await clock.advance(1.0)
        assert len(api.patches()) == 2
        assert api.pods["u2"]["status"]["phase"] == "Running"
        assert api.pods["u2"]["metadata"]["annotations"][START_LEVEL_ANNOTATION] == "cold"
        assert s2.annotated and s2.last_status == {"phase": "Running"}
    finally:
        drain.cancel()
        with pytest.raises(asyncio.CancelledError):
            await drain


# ------------------------------------------------------------ letting the last written status go

api_statuses = statuses.map(
    lambda s: {k: ([e for e in v if "$patch" not in e] if k == "podIPs" else v) for k, v in s.items()}
)


@settings(max_examples=300, deadline=None)
@given(api=api_statuses, last=api_statuses, new=api_statuses)
def test_once_the_api_shows_the_last_written_status_it_answers_for_it(
    api: JSON, last: JSON, new: JSON
) -> None:
    """What ``StatusWriter.settle`` relies on: when the API's copy shows everything last
    written, deciding with the API's copy alone never skips a write the written copy would have
    made, and never writes what the API already holds."""
    from provider.status import status_changed

    if status_changed(api, last):
        return  # not shown yet: settle keeps the written copy
    if needs_write(api, last, new, False):
        assert needs_write(api, None, new, False)
    assert not needs_write(api, None, api, False)


async def test_the_writer_lets_the_last_status_go_once_the_api_shows_it(tmp_path: Any) -> None:
    """A 10,000-pod node keeps one status per pod: the written copy goes once the informer's shows
    it (not while that copy is stale), later writes are still decided right, and a write after
    the copy went is remembered over what the API showed."""
    from pod_fakes import FakeApi, make_pod

    from provider.config import PodConfig
    from provider.pods.state import PodState
    from provider.pods.status_writer import StatusWriter
    from sandbox.simulated import SimulatedBackend

    clock = FakeClock()
    api = FakeApi()
    w = StatusWriter(PodConfig(), api, SimulatedBackend(tmp_path / "logs", clock=clock), "10.0.0.1", clock)  # type: ignore[arg-type]
    drain = asyncio.create_task(w.queue.run())
    try:
        api.add(make_pod("p", "u1"))
        s = PodState()
        stale = copy.deepcopy(api.pods["u1"])
        running = {"phase": "Running", "startTime": "2026-11-29T00:00:00Z"}
        await w.patch(api.pods["u1"], s, running)
        assert s.last_status == running and len(api.patches()) == 1
        w.settle(stale, s)  # the watch has not brought the write yet
        assert s.last_status == running
        assert not needs_write(stale.get("status"), s.last_status, running, False)
        api.pods["u1"]["status"]["qosClass"] = "BestEffort"  # set by the API server, not by us
        w.settle(api.pods["u1"], s)
        assert s.last_status is None
        await w.patch(api.pods["u1"], s, running)  # the same status: nothing to write
        assert len(api.patches()) == 1
        await w.patch(api.pods["u1"], s, {**running, "phase": "Succeeded"})
        assert len(api.patches()) == 2
        assert s.last_status == {**running, "qosClass": "BestEffort", "phase": "Succeeded"}
    finally:
        drain.cancel()
        with pytest.raises(asyncio.CancelledError):
            await drain
