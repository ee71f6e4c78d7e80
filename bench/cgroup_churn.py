"""Node churn: memory cgroups made per 1,000 CronJob runs on warmlet (warm) vs a real kubelet.

Why: the users who run tens of thousands of CronJobs saw hundreds of thousands of dying memory
cgroups on their nodes, and every read of the root ``memory.stat`` took seconds. In ONE run, on
the same machine, the same short workload runs N times (``--runs``) first on a warmlet node (CRI
backend, warm pool, ``warmlet run`` subprocess on the bed's containerd) and then on a real kubelet
v1.36.3 (bench/kubelet_baseline.py: own containerd, cgroupfs under its own cgroupRoot).

Workload: a "CronJob run" is one Job-shaped pod: busybox ``sh -c 'exit 0'``, restartPolicy Never,
created, run to Succeeded, deleted and gone, ``--lanes`` of them in flight. They are bare pods of
that shape owned by a ConfigMap per lane (a stable workload key, as a CronJob's Jobs have on
warmlet): a real ``* * * * *`` CronJob fires once a minute, far too slow for hundreds of runs.
Each lane runs one unmeasured warm-up pod first (image cached on both nodes, a warm sandbox in
warmlet's pool), so the window measures steady-state runs.

What is counted (method, also written into the result):

- created: every directory made in the memory hierarchy during the node's window, seen by a
  recursive inotify watcher (bench/cgroup_watch.py), attributed to the node: kubelet's are under
  its cgroupRoot; warmlet's are named by a task id of the bed's containerd (watched in its task
  state directory) or ``pod<uid>`` of one of its pods. Each is classified pod / container (id in
  the pod's status) / sandbox (another task of the node: the pause container) / other.
- completeness check that cannot miss: kernfs numbers the inodes of a cgroup hierarchy with a
  cyclic counter, and each cgroup takes 1 + (files per cgroup) numbers; a probe cgroup made at
  both ends of a window gives how many cgroups the whole hierarchy made in between (everyone's).
  The watcher's count of all directories in the window must equal it (``watcher_missed``). Exact
  on cgroup v1 (every non-root memory cgroup has the same files); not used on v2.
- misses: runs whose container cgroup the watcher did not see.
- dying: cgroup v2 root ``cgroup.stat`` ``nr_dying_descendants``; v1: the memory row of
  ``/proc/cgroups`` (live + dying) minus the live directories. Machine-wide (the kernel cannot
  attribute them): before and after each node's window.
- ``memory.stat`` of the memory root: median of ``--reads`` timed reads, before and after.

    warmlet bench cgroup-churn [--runs 200] [--lanes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cgroup_count import (
    Hierarchy,
    attribute,
    between,
    classify,
    created_between,
    node_figures,
    task_ids,
    window_check,
)
from bench.cgroup_watch import DirWatcher
from bench.common import write_result
from bench.harness import Bed, bed_session, delete_namespace, owned_pod, owner_configmap
from bench.podwatch import START_LEVEL_ANNOTATION, PodClock
from provider.kubeclient import KubeClient
from testbed.testing import create_namespace

SCENARIO = "cgroup-churn"
JSON = dict[str, Any]
RUN_COMMAND = ["sh", "-c", "exit 0"]
PROBE = "warmlet-churn-probe"
SETTLE_S = 5.0  # after the last run: the node removes its cgroups (kubelet: housekeeping, ~2 s)


def build_result(runs: int, lanes: int, hierarchy: JSON, nodes: dict[str, JSON], notes: list[str]) -> JSON:
    w = (nodes.get("warmlet") or {}).get("per_1000_runs")
    k = (nodes.get("kubelet") or {}).get("per_1000_runs")
    ratio = round(w / k, 3) if isinstance(w, float) and isinstance(k, float) and k else None
    return {
        "runs": runs,
        "lanes": lanes,
        "workload": f"Job-shaped bare pods: busybox {' '.join(RUN_COMMAND)!r}, restartPolicy Never, "
        f"create -> Succeeded -> delete -> gone, {lanes} in flight",
        "hierarchy": hierarchy,
        "nodes": nodes,
        "ratio_warmlet_over_kubelet": ratio,
        "method": notes,
    }


# ---------------------------------------------------------------------------- workload


class RunClock(PodClock):
    """PodClock plus each pod's status when it first reached Succeeded/Failed."""

    def __init__(self, client: KubeClient, ns: str) -> None:
        super().__init__(client, ns)
        self.finished: dict[str, JSON] = {}

    async def _observe(self, etype: str, obj: JSON) -> None:
        name = str((obj.get("metadata") or {}).get("name"))
        status = obj.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed") and name not in self.finished:
            self.finished[name] = {"status": status, "uid": (obj.get("metadata") or {}).get("uid", "")}
        await super()._observe(etype, obj)

    async def wait_finished(self, name: str, within: float) -> JSON:
        async def until() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: name in self.finished)

        await asyncio.wait_for(until(), within)
        return self.finished[name]


def container_id(status: JSON) -> str:
    cs = status.get("containerStatuses") or []
    raw = str(cs[0].get("containerID") or "") if cs else ""
    return raw.split("://", 1)[-1]


@dataclass
class Runs:
    pod_uids: set[str]
    container_ids: list[str]
    levels: Counter[str]
    failed: int


async def run_pods(
    client: KubeClient, ns: str, node: str, image: str, runs: int, owners: list[JSON], pin: bool, prefix: str
) -> Runs:
    """``runs`` pods (one lane per owner in flight), each create → Succeeded → delete → gone."""
    out = Runs(set(), [], Counter(), 0)
    lanes = len(owners)
    clock = RunClock(client, ns)
    async with clock:

        async def one(name: str, owner: JSON) -> None:
            pod = owned_pod(name, node, image, owner, command=RUN_COMMAND, grace_seconds=1)
            pod["spec"]["restartPolicy"] = "Never"
            if pin:  # a real kubelet: bound directly (no warmlet taint, no scheduler in the way)
                pod["spec"]["nodeName"] = node
                pod["spec"].pop("nodeSelector", None)
            await clock.create(pod)
            done = await clock.wait_finished(name, 180)
            out.pod_uids.add(str(done["uid"]))
            if done["status"].get("phase") != "Succeeded":
                out.failed += 1
            cid = container_id(done["status"])
            if cid:
                out.container_ids.append(cid)
            out.levels[clock.times(name).annotations.get(START_LEVEL_ANNOTATION, "-")] += 1
            await clock.delete_and_wait_gone(name, 120)

        async def lane(i: int) -> None:
            for r in range(i, runs, lanes):
                await one(f"{prefix}-{r}", owners[i])

        async with asyncio.TaskGroup() as tg:
            for i in range(min(lanes, runs)):
                tg.create_task(lane(i))
    return out


# ---------------------------------------------------------------------------- one node


@dataclass
class Phase:
    """What a node's measurement needs: the bed, the watcher, the hierarchy, the options."""

    bed: Bed
    watcher: DirWatcher
    h: Hierarchy
    image: str
    runs: int
    lanes: int
    reads: int


async def measure_node(
    p: Phase, client: KubeClient, node: str, pin: bool, prefix: str, kind: Callable[[Runs], JSON]
) -> JSON:
    """Warm up (one pod per lane), checkpoint, the runs, settle, checkpoint; the node's figures.
    ``kind`` gives the node's attribution: {"prefix": cgroup root, "names": extra names}."""
    ns = await create_namespace(client, f"churn-{prefix}")
    probe = f"{PROBE}-{os.getpid()}-{prefix}"
    try:
        owners = [await owner_configmap(client, ns, f"{prefix}-lane-{i}") for i in range(p.lanes)]
        await run_pods(client, ns, node, p.image, p.lanes, owners, pin, f"{prefix}-warmup")
        await asyncio.sleep(2)
        before = await asyncio.to_thread(p.h.checkpoint, p.reads, f"{probe}-a")
        t0 = time.monotonic()
        runs = await run_pods(client, ns, node, p.image, p.runs, owners, pin, prefix)
        duration = time.monotonic() - t0
        await asyncio.sleep(SETTLE_S)
        after = await asyncio.to_thread(p.h.checkpoint, p.reads, f"{probe}-b")
        live = await asyncio.to_thread(p.h.live_dirs)
    finally:
        await delete_namespace(client, ns)
    await asyncio.sleep(0.5)  # the watcher's thread records the last probe
    created = p.watcher.snapshot()
    window = between(created, before["probe"], after["probe"])
    rule = kind(runs)
    mine = attribute(window, rule["prefix"], rule["names"])
    tasks = task_ids(created)
    cids = set(runs.container_ids)
    fig = node_figures(p.runs, mine, lambda c: classify(c, cids, runs.pod_uids, tasks), runs.container_ids)
    # v1: every non-root memory cgroup has the same files, so one stride; v2: the files depend on
    # the parent's subtree_control, so the inode counter is no exact count there
    probe_all = created_between(before["ino"], after["ino"], before["stride"]) if p.h.version == 1 else None
    fig.update(
        {
            "failed_runs": runs.failed,
            "start_levels": dict(runs.levels),
            "duration_s": round(duration, 1),
            "window_check": window_check(len(window), probe_all, len(mine)),
            "still_live_after": sum(1 for c in mine if c.rel in live),
            "dying_before": before["dying"],
            "dying_after": after["dying"],
            "memory_stat_read_ms_before": before["memory_stat_read_ms"],
            "memory_stat_read_ms_after": after["memory_stat_read_ms"],
            "examples": sorted({c.rel for c in mine})[:6],
            "watcher_overflowed": p.watcher.overflowed,
        }
    )
    return fig


async def warmlet_phase(p: Phase, client: KubeClient) -> JSON:
    from bench.rbac_node import warmlet_process

    async with warmlet_process(p.bed, "cri", {"max_per_workload": max(8, p.lanes)}) as node:

        def rule(runs: Runs) -> JSON:
            tasks = task_ids(p.watcher.snapshot())
            return {"prefix": "", "names": tasks | {f"pod{u}" for u in runs.pod_uids}}

        fig = await measure_node(p, client, node.name, False, "wl", rule)
    return {"ran": True, "node": node.name, **fig}


async def kubelet_phase(p: Phase, client: KubeClient) -> JSON:
    from bench.kubelet_baseline import K8S_VERSION, KubeletUnavailable, running_kubelet

    try:
        async with running_kubelet(p.bed) as node:
            fig = await measure_node(
                p, client, node.name, True, "kb", lambda _runs: {"prefix": node.cgroup_root, "names": set()}
            )
            return {
                "ran": True,
                "node": node.name,
                "version": K8S_VERSION,
                "cgroup_root": node.cgroup_root,
                **fig,
            }
    except KubeletUnavailable as e:
        return {"ran": False, "reason": str(e)}


METHOD = [
    "created = directories made in the memory cgroup hierarchy during the node's window (after "
    "one warm-up pod per lane, until 5 s after the last run), seen by a recursive inotify watcher "
    "(add watch, then scan: only a child made and removed within microseconds of its parent "
    "could be missed); window_check compares the watcher's count of everyone's cgroups with the "
    "kernfs inode counter (each cgroup takes 1 + files-per-cgroup inode numbers), which cannot "
    "miss any",
    "attribution: kubelet = under its cgroupRoot; warmlet = named by a task id of the bed's "
    "containerd (its task state directory, watched) or pod<uid> of its pods; other engineers' "
    "containers on the machine are therefore not counted",
    "kinds: container = the id in the pod's containerStatuses; sandbox = another task of the "
    "node (pause) or a child of the pod cgroup; pod = pod<uid>",
    "dying: machine-wide (v1: /proc/cgroups memory num_cgroups minus live directories; v2: "
    "cgroup.stat nr_dying_descendants), not attributable to a node",
    "memory.stat read: median of timed open+read+close of the memory root's memory.stat",
]


async def run(args: argparse.Namespace, quick: bool) -> JSON:
    runs = args.runs or (20 if quick else 200)
    h = Hierarchy.detect()
    hierarchy = {"version": h.version, "memory_root": str(h.root)}
    nodes: dict[str, JSON] = {}
    async with bed_session(args.kubeconfig, args.cri_endpoint) as bed:
        if not bed.cri_endpoint or "busybox" not in bed.images:
            raise ValueError("cgroup-churn needs the test bed (its containerd and busybox image)")
        state = Path(bed.cri_endpoint.removeprefix("unix://")).parent / "state"
        with DirWatcher({"memory": (h.root, 64), "containerd": (state, 3)}) as watcher:
            p = Phase(bed, watcher, h, bed.images["busybox"], runs, args.lanes, args.reads)
            client = await KubeClient.from_kubeconfig(bed.kubeconfig)
            try:
                ends = {"start": await asyncio.to_thread(h.checkpoint, args.reads, f"{PROBE}-start")}
                nodes["warmlet"] = await warmlet_phase(p, client)
                nodes["kubelet"] = await kubelet_phase(p, client)
                await asyncio.sleep(SETTLE_S)
                ends["end"] = await asyncio.to_thread(h.checkpoint, args.reads, f"{PROBE}-end")
            finally:
                await client.close()
    result = build_result(runs, args.lanes, hierarchy, nodes, METHOD)
    result["machine_wide"] = {
        "what": "start: before the warmlet node; end: both nodes stopped (kubelet's cgroup root removed)",
        **{
            k: {"dying": v["dying"], "memory_stat_read_ms": v["memory_stat_read_ms"]} for k, v in ends.items()
        },
    }
    result["quick"] = quick
    write_result(SCENARIO, result)
    return {"scenario": SCENARIO, **result}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=None, help="runs per node (default 200; --quick 20)")
    parser.add_argument("--lanes", type=int, default=2, help="runs in flight at once (default 2)")
    parser.add_argument("--reads", type=int, default=15, help="timed memory.stat reads per checkpoint")


def summary_rows(result: JSON) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [("runs per node", str(result.get("runs")))]
    for name, n in (result.get("nodes") or {}).items():
        if not n.get("ran"):
            rows.append((f"{name}", f"not run: {str(n.get('reason'))[:200]}"))
            continue
        kinds = ", ".join(f"{k} {v}" for k, v in (n.get("by_kind_per_1000_runs") or {}).items())
        wc = n.get("window_check") or {}
        rows += [
            (f"{name}: memory cgroups per 1,000 runs", f"{n.get('per_1000_runs')} ({kinds})"),
            (
                f"{name}: root memory.stat read ms before / after",
                f"{n.get('memory_stat_read_ms_before')} / {n.get('memory_stat_read_ms_after')}",
            ),
            (f"{name}: dying cgroups before / after", f"{n.get('dying_before')} / {n.get('dying_after')}"),
            (f"{name}: its cgroups still live after", str(n.get("still_live_after"))),
            (f"{name}: watcher missed / container misses", f"{wc.get('watcher_missed')} / {n.get('misses')}"),
        ]
    rows.append(("ratio warmlet / kubelet", str(result.get("ratio_warmlet_over_kubelet"))))
    mw = result.get("machine_wide") or {}
    if "end" in mw and "start" in mw:
        rows.append(
            (
                "machine: dying cgroups, memory.stat ms at start / end",
                f"{mw['start']['dying']}, {mw['start']['memory_stat_read_ms']} / "
                f"{mw['end']['dying']}, {mw['end']['memory_stat_read_ms']}",
            )
        )
    return rows


if __name__ == "__main__":
    from bench.cli import module_main

    module_main("bench.cgroup_churn")
