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
  The watcher's count of all directories in the window must equal it (``watcher_missed``).
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
import contextlib
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cgroup_watch import Created, DirWatcher
from bench.common import write_result
from bench.harness import Bed, bed_session, delete_namespace, owned_pod, owner_configmap
from bench.podwatch import START_LEVEL_ANNOTATION, PodClock
from provider.kubeclient import KubeClient
from testbed.testing import create_namespace

SCENARIO = "cgroup-churn"
JSON = dict[str, Any]
CGROUP_FS = Path("/sys/fs/cgroup")
RUN_COMMAND = ["sh", "-c", "exit 0"]
TASK_DIR = "io.containerd.runtime.v2.task"  # <containerd state>/<this>/<namespace>/<task id>
PROBE = "warmlet-churn-probe"
SETTLE_S = 5.0  # after the last run: the node removes its cgroups (kubelet: housekeeping, ~2 s)


# ---------------------------------------------------------------------------- pure parts


def parse_keyed(text: str) -> dict[str, int]:
    """A flat-keyed cgroup file (``cgroup.stat``, ``memory.stat``): ``key value`` per line."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            with contextlib.suppress(ValueError):
                out[parts[0]] = int(parts[1])
    return out


def parse_proc_cgroups(text: str) -> dict[str, int]:
    """``/proc/cgroups``: subsystem → num_cgroups (live + dying cgroups of its hierarchy)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and not line.startswith("#"):
            with contextlib.suppress(ValueError):
                out[parts[0]] = int(parts[2])
    return out


def dying_v1(num_cgroups: int, live_dirs: int) -> int:
    """Dying memory cgroups on v1: counted by /proc/cgroups (root included) but no directory."""
    return max(0, num_cgroups - live_dirs)


def created_between(ino_before: int, ino_after: int, stride: int) -> int | None:
    """Cgroups the hierarchy made strictly between two probe cgroups (kernfs numbers each cgroup
    with ``stride`` = 1 + its file count, cyclically increasing); None if not a whole multiple."""
    delta = ino_after - ino_before
    if stride <= 0 or delta <= 0 or delta % stride:
        return None
    return delta // stride - 1


def per_thousand(count: int, runs: int) -> float:
    return round(count * 1000 / runs, 1) if runs else float("nan")


def median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 3) if values else float("nan")


def between(created: Sequence[Created], first: str, last: str, root: str = "memory") -> list[Created]:
    """The directories of ``root`` recorded strictly between the probe cgroups ``first`` and
    ``last`` (one inotify queue: records are in the order the kernel made them)."""
    names = [c.name if c.root == root else None for c in created]
    if first not in names or last not in names:
        raise ValueError(f"probe {first if first not in names else last} not seen by the watcher")
    i, j = names.index(first), names.index(last)
    return [c for c in created[i + 1 : j] if c.root == root]


def task_ids(created: Iterable[Created], label: str = "containerd") -> set[str]:
    """Task ids a containerd started (``<TASK_DIR>/<namespace>/<id>`` under its state dir)."""
    out = set()
    for c in created:
        parts = c.rel.split("/")
        if c.root == label and len(parts) == 3 and parts[0] == TASK_DIR:
            out.add(parts[2])
    return out


def attribute(created: Iterable[Created], prefix: str, names: set[str]) -> list[Created]:
    """The node's cgroups: under ``prefix`` (its cgroup root, "" for none) or named in ``names``."""
    p = prefix.strip("/")
    return [c for c in created if (p and (c.rel == p or c.rel.startswith(p + "/"))) or c.name in names]


def classify(c: Created, container_ids: set[str], pod_uids: set[str], tasks: set[str]) -> str:
    """pod / container / sandbox (another task of the node: pause) / other (QoS parents, roots)."""
    if c.name in container_ids:
        return "container"
    if c.name.startswith("pod") and c.name[3:] in pod_uids:
        return "pod"
    parent = c.rel.rsplit("/", 2)[-2] if c.rel.count("/") else ""
    if c.name in tasks or (parent.startswith("pod") and parent[3:] in pod_uids):
        return "sandbox"
    return "other"


def node_figures(
    runs: int,
    mine: Sequence[Created],
    kinds: Callable[[Created], str],
    container_ids: Sequence[str],
) -> JSON:
    """A node's count: cgroups made in its window, per 1,000 runs, by kind, container misses."""
    by_kind = Counter(kinds(c) for c in mine)
    seen = {c.name for c in mine}
    return {
        "runs": runs,
        "created": len(mine),
        "per_1000_runs": per_thousand(len(mine), runs),
        "per_run": round(len(mine) / runs, 3) if runs else float("nan"),
        "by_kind_per_1000_runs": {k: per_thousand(v, runs) for k, v in sorted(by_kind.items())},
        "runs_without_container_id": runs - len(container_ids),
        "misses": sum(1 for cid in container_ids if cid not in seen),
    }


def window_check(watched_all: int, probe_count: int | None) -> JSON:
    """The watcher's count of every cgroup made in the window against the inode counter's."""
    missed = None if probe_count is None else probe_count - watched_all
    return {"watcher_all": watched_all, "kernfs_counter_all": probe_count, "watcher_missed": missed}


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


# ---------------------------------------------------------------------------- host reads


@dataclass(frozen=True)
class Hierarchy:
    version: int
    root: Path  # the memory hierarchy's root directory

    @staticmethod
    def detect(fs: Path = CGROUP_FS) -> Hierarchy:
        if (fs / "cgroup.controllers").exists():
            return Hierarchy(2, fs)
        return Hierarchy(1, fs / "memory")

    def read_ms(self, reads: int) -> list[float]:
        """Timed reads of the root memory.stat (open + read to the end + close), in ms."""
        out = []
        for _ in range(reads):
            t0 = time.perf_counter()
            with open(self.root / "memory.stat", "rb") as f:
                f.read()
            out.append((time.perf_counter() - t0) * 1000)
        return out

    def dying(self) -> int:
        if self.version == 2:
            return parse_keyed((self.root / "cgroup.stat").read_text()).get("nr_dying_descendants", 0)
        live = sum(1 for _ in os.walk(self.root))
        return dying_v1(parse_proc_cgroups(Path("/proc/cgroups").read_text()).get("memory", 0), live)

    def probe(self, name: str) -> tuple[int, int]:
        """(inode, stride) of a probe cgroup ``name`` made and removed at once."""
        d = self.root / name
        d.mkdir()
        try:
            return d.stat().st_ino, 1 + len(os.listdir(d))
        finally:
            d.rmdir()

    def checkpoint(self, reads: int, probe: str) -> JSON:
        ms = self.read_ms(reads)
        ino, stride = self.probe(probe)
        return {
            "probe": probe,
            "ino": ino,
            "stride": stride,
            "dying": self.dying(),
            "memory_stat_read_ms": median(ms),
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
    probe_all = created_between(before["ino"], after["ino"], before["stride"])
    fig.update(
        {
            "failed_runs": runs.failed,
            "start_levels": dict(runs.levels),
            "duration_s": round(duration, 1),
            "window_check": window_check(len(window), probe_all),
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
                nodes["warmlet"] = await warmlet_phase(p, client)
                nodes["kubelet"] = await kubelet_phase(p, client)
            finally:
                await client.close()
    result = build_result(runs, args.lanes, hierarchy, nodes, METHOD)
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
        rows.append((f"{name}: memory cgroups per 1,000 runs", f"{n.get('per_1000_runs')} ({kinds})"))
        rows.append(
            (
                f"{name}: root memory.stat read ms before / after",
                f"{n.get('memory_stat_read_ms_before')} / {n.get('memory_stat_read_ms_after')}",
            )
        )
        rows.append(
            (f"{name}: dying cgroups before / after", f"{n.get('dying_before')} / {n.get('dying_after')}")
        )
        wc = n.get("window_check") or {}
        rows.append(
            (f"{name}: watcher missed / container misses", f"{wc.get('watcher_missed')} / {n.get('misses')}")
        )
    rows.append(("ratio warmlet / kubelet", str(result.get("ratio_warmlet_over_kubelet"))))
    return rows


if __name__ == "__main__":
    from bench.cli import module_main

    module_main("bench.cgroup_churn")
