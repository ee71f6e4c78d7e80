"""Infrastructure outages under a running warmlet (CRI backend): containerd, kube-apiserver and etcd
go away and come back in place, and a watch is made to expire (410) for real.

Each test disturbs the session-shared test bed and restores it in a ``finally`` (same ports, certs,
data), then checks every pod's final state, the runtime inventory in containerd (no duplicate,
orphan or leaked container or sandbox) and warmlet's own metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import pytest
from e2e_helpers import E2E, metric, pod_spec, wait_for
from fault_helpers import (
    LOOP,
    LogCount,
    Stopwatch,
    api_errors,
    cstatus,
    lease_renew_time,
    own_bed,
    pod,
    post_pods,
    ready_status,
    relists,
    settled_inventory,
    wait_phases,
)

from provider.kubeclient import ApiError
from sandbox.cri import mapping as m

APISERVER_DOWN_SECONDS = 60.0


async def _restore_apiserver(cp: Any) -> None:
    await asyncio.to_thread(cp.start_apiserver)


@pytest.mark.reliability(
    fault="containerd stopped mid-burst (12 CRI pods being created) and restarted ~10 s later",
    checked="every pod Running/Succeeded, restartCount 0 (1 only for a container containerd lost "
    "mid-start after its process ran: killed and restarted as kubelet does, with a Killing event), "
    "one container and one sandbox per pod, no orphan sandbox; CRI errors counted",
)
async def test_containerd_restart_mid_burst(e2e: E2E, reliability: Any) -> None:
    containerd = own_bed(e2e).containerd
    cfg = e2e.config()
    node_name = cfg.node.name
    node = await e2e.start(cfg)
    ns = await e2e.namespace("flt")
    want: dict[str, str] = {}
    pods = []
    for i in range(6):
        pods.append(pod(f"long-{i}", pod_spec(node_name, LOOP, e2e.busybox, "Always")))
        want[f"long-{i}"] = "Running"
        pods.append(pod(f"short-{i}", pod_spec(node_name, "echo start; sleep 4; echo end", e2e.busybox)))
        want[f"short-{i}"] = "Succeeded"
    cri_errors_before = _cri_errors()
    orphans_before = metric("warmlet_pool_evictions_total", reason="orphan")
    clock = Stopwatch()
    with LogCount() as logs:  # warmlet's warnings: which containers it replaced (see below)
        burst = asyncio.create_task(post_pods(e2e, ns, pods, parallel=12))

        async def some_started() -> bool:
            return len(await e2e.containers(node_name)) >= 2

        await wait_for(some_started, 120, 0.1, "the first containers of the burst")
        started_at_stop = len(await e2e.containers(node_name))
        try:
            await asyncio.to_thread(containerd.stop_daemon)
            down_at = clock()
            await burst
            await asyncio.sleep(10)
        finally:
            await asyncio.to_thread(containerd.start_daemon)
        up_at = clock()

        final = await wait_phases(e2e, ns, want, 240, "every pod Running or Succeeded after the restart")
    settled = clock()
    # A container containerd itself lost track of during its start (CRI state UNKNOWN after its
    # restart) whose process did run is killed and started again, as kubelet does: one counted
    # restart, announced by a Killing event. Every other pod: restartCount 0.
    replaced = {
        mm.group(1)
        for msg in logs.messages
        if (mm := re.search(rf"killing container in unknown state .*pod={ns}/(\S+)", msg))
    }
    for name, p in final.items():
        cs = cstatus(p)
        assert cs.get("restartCount") == (1 if name in replaced else 0), (name, cs)
        if name.startswith("short"):
            assert cs["state"]["terminated"]["exitCode"] == 0, (name, cs)
    if replaced:
        events = await e2e.client.get(f"/api/v1/namespaces/{ns}/events")
        killing = {e["involvedObject"]["name"] for e in events["items"] if e.get("reason") == "Killing"}
        assert replaced <= killing, (replaced, killing)
    inv = await settled_inventory(e2e, node, ns)
    # the long pods hold one sandbox and one running container each; the finished bare pods' are gone
    longs = {p["metadata"]["uid"] for n, p in final.items() if n.startswith("long")}
    assert {m.pod_uid_of(c.labels) for c in inv.containers} == longs
    assert len(inv.containers) == len(longs) == len(inv.sandboxes)
    by_uid = {p["metadata"]["uid"]: n for n, p in final.items()}
    for c in inv.containers:
        assert c.metadata.attempt == (1 if by_uid[m.pod_uid_of(c.labels)] in replaced else 0), c
    assert await ready_status(e2e, node_name) == "True"
    cri_errors = _cri_errors() - cri_errors_before
    orphans = metric("warmlet_pool_evictions_total", reason="orphan") - orphans_before
    reliability.detail(
        f"containerd down {up_at - down_at:.0f} s with {started_at_stop}/12 containers created; "
        f"all 12 pods right {settled - up_at:.0f} s after restart"
    )
    reliability.detail(
        f"{len(replaced)} restarts (containers containerd lost mid-start whose process had run: "
        f"killed and restarted as kubelet does), 0 duplicates, 0 orphans left "
        f"({len(inv.containers)} containers, "
        f"{len(inv.sandboxes)} sandboxes for the 6 running pods; {orphans:.0f} half-made sandboxes "
        f"swept); {cri_errors:.0f} CRI errors counted"
    )


def _cri_errors() -> float:
    from prometheus_client import REGISTRY

    return sum(
        s.value
        for fam in REGISTRY.collect()
        if fam.name == "warmlet_cri_call_errors"
        for s in fam.samples
        if s.name.endswith("_total")
    )


@pytest.mark.reliability(
    fault=f"kube-apiserver stopped for {APISERVER_DOWN_SECONDS:.0f} s and restarted in place "
    "(pods created just before; one exits meanwhile)",
    checked="running pods keep running (same container), bounded API retries and log lines "
    "(no hot loop), pods created before start, the exit lands, node Ready, lease renewed",
)
async def test_apiserver_down_60s(e2e: E2E, reliability: Any) -> None:
    cp = own_bed(e2e).cp
    cfg = e2e.config()
    node_name = cfg.node.name
    node = await e2e.start(cfg)
    ns = await e2e.namespace("flt")
    await post_pods(
        e2e,
        ns,
        [
            pod("long", pod_spec(node_name, LOOP, e2e.busybox, "Always")),
            pod("exits", pod_spec(node_name, "echo start; sleep 15; echo bye; exit 3", e2e.busybox)),
        ],
    )
    await wait_phases(e2e, ns, {"long": "Running", "exits": "Running"}, 120, "pods running")
    long_before = cstatus(await e2e.pod(ns, "long"))
    # created just before the outage: warmlet may or may not have seen them when it begins
    await post_pods(
        e2e, ns, [pod(f"pre-{i}", pod_spec(node_name, LOOP, e2e.busybox, "Always")) for i in range(3)]
    )

    errors_before = api_errors()
    with LogCount() as logs:
        clock = Stopwatch()
        try:
            await asyncio.to_thread(cp.stop_apiserver)
            stopped_at = clock()
            # meanwhile the runtime goes on: the long container keeps running, `exits` exits
            await asyncio.sleep(max(0.0, APISERVER_DOWN_SECONDS - clock() + stopped_at - 15))
            running = {c.id for c in await e2e.containers(node_name) if c.state == 1}
            assert long_before["containerID"].split("//")[1] in running
            await asyncio.sleep(max(0.0, APISERVER_DOWN_SECONDS - (clock() - stopped_at)))
            down_errors = api_errors() - errors_before
            down_logs = logs.count
            down_for = clock() - stopped_at
        finally:
            await _restore_apiserver(cp)
        restarted_at = clock()
        # the node as the lifecycle controller leaves it: it may mark it Unknown on reconnecting
        # (the lease looks 60 s old) until warmlet's next renewal and status update
        ready_seen: list[tuple[float, str]] = []

        async def ready_again() -> bool:
            r = await ready_status(e2e, node_name)
            ready_seen.append((clock() - restarted_at, r))
            return r == "True" and len(ready_seen) > 1

        await wait_for(ready_again, 180, 1, "node Ready after the restart")
        not_ready = [t for t, r in ready_seen if r != "True"]
        want = {"long": "Running", "exits": "Failed", **{f"pre-{i}": "Running" for i in range(3)}}
        final = await wait_phases(e2e, ns, want, 180, "warmlet caught up after the apiserver restart")
        caught_up = clock() - restarted_at
        await wait_for(lambda: _is(ready_status(e2e, node_name), "True"), 120, 1, "node Ready")
        renewed = await lease_renew_time(e2e, node_name)

    long_after = cstatus(final["long"])
    assert long_after["containerID"] == long_before["containerID"], long_after
    assert long_after["restartCount"] == 0
    assert long_after["state"]["running"]["startedAt"] == long_before["state"]["running"]["startedAt"]
    term = cstatus(final["exits"])["state"]["terminated"]
    assert term["exitCode"] == 3 and term["reason"] == "Error", term
    for i in range(3):
        assert cstatus(final[f"pre-{i}"]).get("restartCount") == 0
    inv = await settled_inventory(e2e, node, ns)
    # A hot loop would be thousands of failed calls and log lines in 60 s; back-off keeps both to
    # a few per second at most (lease: 200 ms doubling to 7 s; everything else up to 10-30 s).
    per_s = down_errors / down_for
    assert per_s < 10, f"{down_errors:.0f} API errors in {down_for:.0f} s"
    assert down_logs / down_for < 10, (down_logs, logs.by_logger.most_common(5))
    assert renewed
    reliability.detail(
        f"apiserver down {down_for:.0f} s: {down_errors:.0f} failed API calls ({per_s:.1f}/s), "
        f"{down_logs} warning lines; caught up {caught_up:.0f} s after restart; node "
        + (
            f"not Ready until {max(not_ready):.0f} s after restart"
            if not_ready
            else "Ready at every sample after restart"
        )
    )
    reliability.detail(
        f"long-running pod kept its container (0 restarts); exit 3 during the outage reported; "
        f"3 pods created just before started; {len(inv.containers)} containers / "
        f"{len(inv.sandboxes)} sandboxes for the 4 running pods, 0 orphans"
    )


async def _is(aw: Any, value: str) -> bool:
    return bool(await aw == value)


@pytest.mark.reliability(
    fault="etcd stopped ~15 s and restarted in place (same data dir) under a running node",
    checked="pods keep running, an exit during the outage lands, node Ready, new pods and a "
    "deletion after it work, no duplicate or orphan in containerd",
)
async def test_etcd_restart(e2e: E2E, reliability: Any) -> None:
    cp = own_bed(e2e).cp
    cfg = e2e.config()
    node_name = cfg.node.name
    node = await e2e.start(cfg)
    ns = await e2e.namespace("flt")
    await post_pods(
        e2e,
        ns,
        [
            pod("long", pod_spec(node_name, LOOP, e2e.busybox, "Always")),
            pod("victim", pod_spec(node_name, LOOP, e2e.busybox, "Always")),
            pod("exits", pod_spec(node_name, "echo start; sleep 8; exit 0", e2e.busybox)),
        ],
    )
    await wait_phases(
        e2e, ns, {"long": "Running", "victim": "Running", "exits": "Running"}, 120, "pods running"
    )
    long_before = cstatus(await e2e.pod(ns, "long"))
    errors_before = api_errors()
    clock = Stopwatch()
    try:
        await asyncio.to_thread(cp.stop_etcd)
        await asyncio.sleep(15)
        down_for = clock()
    finally:
        await asyncio.to_thread(cp.start_etcd)
    restarted = clock()
    await asyncio.to_thread(cp.wait_apiserver, 120)  # the apiserver reconnects on its own

    async def retrying(fn: Any) -> Any:
        async def attempt() -> Any:
            try:
                return (await fn()) or True
            except (ApiError, OSError, TimeoutError):
                return None

        return await wait_for(attempt, 60, 1, "the API accepting writes again")

    await retrying(lambda: e2e.client.delete(f"/api/v1/namespaces/{ns}/pods/victim"))
    await retrying(
        lambda: e2e.client.post(
            f"/api/v1/namespaces/{ns}/pods", pod("after", pod_spec(node_name, "echo after", e2e.busybox))
        )
    )
    final = await wait_phases(
        e2e, ns, {"long": "Running", "exits": "Succeeded", "after": "Succeeded"}, 180, "pods settled"
    )

    async def victim_gone() -> bool:
        return "victim" not in {p["metadata"]["name"] for p in await e2e.pods(ns)}

    await wait_for(victim_gone, 120, 1, "the deleted pod removed by warmlet")
    settled = clock()
    assert cstatus(final["long"])["containerID"] == long_before["containerID"]
    assert cstatus(final["long"])["restartCount"] == 0
    assert cstatus(final["exits"])["state"]["terminated"]["exitCode"] == 0
    await wait_for(lambda: _is(ready_status(e2e, node_name), "True"), 120, 1, "node Ready")
    inv = await settled_inventory(e2e, node, ns)
    errors = api_errors() - errors_before
    reliability.detail(
        f"etcd down {down_for:.0f} s: {errors:.0f} failed API calls; pods settled "
        f"{settled - restarted:.0f} s after restart"
    )
    reliability.detail(
        f"0 restarts; deletion and a new pod after it done; {len(inv.containers)} container(s) / "
        f"{len(inv.sandboxes)} sandbox(es) left for the 1 running pod, 0 orphans"
    )


@pytest.mark.reliability(
    fault="watch expiry forced: apiserver restarted after etcd writes + compaction past warmlet's "
    "resourceVersion (the resumed watch is answered 410 Gone)",
    checked="warmlet relists (metric), a pod deleted and one created meanwhile are handled, "
    "no pod lost or duplicated, one container per pod",
)
async def test_watch_expired_410_relist(e2e: E2E, reliability: Any) -> None:
    cp = own_bed(e2e).cp
    cfg = e2e.config()
    node_name = cfg.node.name
    node = await e2e.start(cfg)
    ns = await e2e.namespace("flt")
    names = ["keep-0", "keep-1", "gone-0"]
    await post_pods(e2e, ns, [pod(n, pod_spec(node_name, LOOP, e2e.busybox, "Always")) for n in names])
    await wait_phases(e2e, ns, dict.fromkeys(names, "Running"), 120, "pods running")
    before = {n: cstatus(await e2e.pod(ns, n))["containerID"] for n in names}
    old_rv = node.pods.informer.resource_version if node.pods else ""
    gone_before = relists("gone")
    try:
        await asyncio.to_thread(cp.stop_apiserver)
        compacted = await asyncio.to_thread(cp.etcd.bump_and_compact)
    finally:
        await _restore_apiserver(cp)
    assert int(old_rv) < compacted, (old_rv, compacted)
    # changes warmlet has to learn from the relist (its watch is backing off right now)
    with contextlib.suppress(ApiError):
        await e2e.client.delete(f"/api/v1/namespaces/{ns}/pods/gone-0")
    await e2e.client.post(
        f"/api/v1/namespaces/{ns}/pods", pod("new-0", pod_spec(node_name, LOOP, e2e.busybox, "Always"))
    )

    async def relisted() -> bool:
        return relists("gone") > gone_before

    await wait_for(relisted, 120, 0.5, "a relist after 410 Gone")
    final = await wait_phases(
        e2e, ns, {"keep-0": "Running", "keep-1": "Running", "new-0": "Running"}, 120, "pods after relist"
    )

    async def deleted() -> bool:
        return "gone-0" not in {p["metadata"]["name"] for p in await e2e.pods(ns)}

    await wait_for(deleted, 120, 1, "the pod deleted meanwhile removed by warmlet")
    for n in ("keep-0", "keep-1"):
        assert cstatus(final[n])["containerID"] == before[n] and cstatus(final[n])["restartCount"] == 0
    inv = await settled_inventory(e2e, node, ns)
    gone_id = before["gone-0"].split("//")[1]
    assert gone_id not in {c.id for c in inv.containers}
    assert len(inv.containers) == 3, [c.metadata.name for c in inv.containers]
    n_relists = relists("gone") - gone_before
    reliability.detail(
        f"etcd compacted to rev {compacted} > warmlet's rv {old_rv}; {n_relists:.0f} relist(s) on 410"
    )
    reliability.detail("0 pods lost, 0 duplicated: deletion and creation during the gap both handled")
