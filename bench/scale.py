"""Scale: warmlet, KWOK and a bare status loop side by side, same API server, same pods, one run.

Cases (``--sizes``, default ``1000,10000,100x100``; ``--quick``: ``500,10x20``): N pods on one
node, and N nodes x M pods served by one process. For each case each contender
(bench/scale_contenders.py) starts its node process, then the bench creates the same pods directly
bound (spec.nodeName set; no scheduler), ``--concurrency`` POSTs in flight, and measures:

- seconds from the first POST to all Running and pods/s (client-side: one watch on the namespace);
- API calls per pod: the API server's ``apiserver_request_total`` before the first POST and after
  all Running (+ a short settle), split into reads and writes by verb, the bench's own pod POSTs
  removed (bench/apimetrics.py);
- resident memory (peak: VmHWM and 1 s samples; before/after) and CPU seconds (utime+stime) of
  the node process from /proc (bench/procstat.py). All three are their own processes: ``warmlet
  run``; KWOK's ``kwok``; the bare loop ``python -m bench.bare_loop``.

Afterwards the namespace is deleted and waited for (the bare loop's pods, which no node confirms,
are force-deleted first), so the next contender starts from the same API server state. Results:
bench/results/scale.json (``--out`` for elsewhere) with every case's three rows, the ratios and
the issue's goals; scale.png: bind → Running CDFs of every contender and case.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.apimetrics import account, counter_delta, scrape
from bench.common import RESULTS_DIR, bounded, plot_cdf, write_result
from bench.harness import bed_session, delete_namespace
from bench.kwok import KWOK_VERSION
from bench.podwatch import watch_namespace_pods
from bench.procstat import PeakTracker, sample
from bench.scale_contenders import (
    CONTENDERS,
    DESCRIPTIONS,
    RUNNERS,
    Case,
    RunContext,
    parse_case,
)
from bench.scale_figures import Timing, case_ratios, contender_figures, failed, goals, summary
from provider.kubeclient import ApiError, KubeClient
from testbed.testing import bare_pod, create_namespace

log = logging.getLogger("bench.scale")
JSON = dict[str, Any]
SCENARIO = "scale"
FULL_SIZES = "1000,10000,100x100"
QUICK_SIZES = "500,10x20"
SETTLE_SECONDS = 3.0  # after all Running: writes that follow Running (annotations, events) land


# ---------------------------------------------------------------------------------------- pod clock


def warmlet_wrote_status(obj: Mapping[str, Any]) -> bool:
    """Whether a pod object carries a status written by its node (the API server writes only phase)."""
    st = obj.get("status") or {}
    return bool(st.get("conditions") or st.get("hostIP") or st.get("containerStatuses"))


@dataclass
class ScaleClock:
    """First-seen (monotonic) times per pod: seen bound, first node status write, Running."""

    expect: int
    bound: dict[str, float] = field(default_factory=dict)
    status: dict[str, float] = field(default_factory=dict)
    running: dict[str, float] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def observe(self, obj: Mapping[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        if (obj.get("spec") or {}).get("nodeName"):
            self.bound.setdefault(name, now)
        if warmlet_wrote_status(obj):
            self.status.setdefault(name, now)
        if (obj.get("status") or {}).get("phase") == "Running" and name not in self.running:
            self.running[name] = now
            if len(self.running) >= self.expect:
                self.done.set()

    def first_write_running(self) -> float:
        """Fraction of pods whose first node-written status was already Running."""
        same = sum(1 for k, t in self.status.items() if self.running.get(k) == t)
        return same / max(1, len(self.status))

    async def run(self, client: KubeClient, ns: str, started: asyncio.Event) -> None:
        def on_event(etype: str, obj: JSON) -> None:
            if etype != "DELETED":
                self.observe(obj, time.monotonic())

        await watch_namespace_pods(client, ns, on_event, started=started)


def lags(first: Mapping[str, float], second: Mapping[str, float]) -> list[float]:
    """Per pod ``second - first`` (seconds) for pods present in both."""
    return [second[k] - first[k] for k in second if k in first]


# ---------------------------------------------------------------------------------------- measure


async def create_bound(client: KubeClient, ns: str, case: Case, nodes: list[str], concurrency: int) -> float:
    """POST the case's pods with spec.nodeName set, ``concurrency`` in flight; seconds it took."""
    sem = asyncio.Semaphore(concurrency)
    t0 = time.monotonic()

    async def one(i: int) -> None:
        node = case.node_of(i, nodes)
        p = bare_pod(f"s-{i:05d}", node)
        p["spec"]["nodeName"] = node
        async with sem:
            await client.post(f"/api/v1/namespaces/{ns}/pods", p)

    await asyncio.gather(*(one(i) for i in range(case.pods)))
    return time.monotonic() - t0


async def remove_namespace(client: KubeClient, ns: str, force: bool, wait: float = 900.0) -> bool:
    """Delete the namespace and wait until it is gone; ``force``: its pods first with grace 0
    (nobody confirms them)."""
    if force:
        # one DELETE per pod, 50 in flight: a deletecollection of 10,000 pods outlasts the
        # request's timeout and stops there (the rest then waited for a node that never confirms)
        pods = (await client.list_all(f"/api/v1/namespaces/{ns}/pods"))["items"]
        await bounded((_force_delete(client, ns, p["metadata"]["name"]) for p in pods), 50)
    return await delete_namespace(client, ns, wait)


async def _force_delete(client: KubeClient, ns: str, name: str) -> None:
    with contextlib.suppress(ApiError):  # already gone
        await client.delete(f"/api/v1/namespaces/{ns}/pods/{name}", gracePeriodSeconds=0)


async def measure(
    ctx: RunContext, name: str, case: Case, concurrency: int, wait_s: float
) -> tuple[JSON, list[float]]:
    """One contender on one case: its row of the result and its bind → Running latencies (ms)."""
    client = ctx.client
    ns = await create_namespace(client, f"scale-{name}")
    gone = False
    try:
        async with RUNNERS[name](ctx, case, ns) as node:
            await asyncio.sleep(2.0)  # settle after registration
            clock = ScaleClock(case.pods)
            started = asyncio.Event()
            watcher = asyncio.create_task(clock.run(client, ns, started))
            await asyncio.wait_for(started.wait(), 30)
            tracker = PeakTracker.start(node.pid)
            calls_before = await scrape(client)
            t0 = time.monotonic()
            creator = asyncio.create_task(create_bound(client, ns, case, node.nodes, concurrency))
            deadline = t0 + wait_s
            while not clock.done.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(clock.done.wait(), 1.0)
                tracker.poll()
            create_s = await creator
            all_running = max(clock.running.values()) - t0 if clock.done.is_set() else None
            log.info(
                "contender=%s case=%s running=%d/%d seconds=%s",
                name,
                case.label,
                len(clock.running),
                case.pods,
                all_running,
            )
            await asyncio.sleep(SETTLE_SECONDS)
            after = tracker.poll()
            calls_after = await scrape(client)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            t_del = time.monotonic()
            gone = await remove_namespace(client, ns, force=not node.confirms_deletion)
            delete_s = time.monotonic() - t_del
            with contextlib.suppress(OSError):
                log.info("contender=%s after delete rss_kb=%d", name, sample(node.pid).rss_kb)
    finally:
        if not gone:
            with contextlib.suppress(Exception):
                await remove_namespace(client, ns, force=True, wait=300)
    calls = account(counter_delta(calls_before, calls_after), case.pods, {"POST pods": case.pods})
    timing = Timing(case.pods, len(clock.running), create_s, all_running, delete_s, gone)
    row = contender_figures(
        timing,
        tracker.first,
        after,
        tracker.peak_kb(after),
        calls,
        lags(clock.bound, clock.status),
        lags(clock.bound, clock.running),
        clock.first_write_running(),
    )
    return row, [v * 1000 for v in lags(clock.bound, clock.running)]


async def warm_up(client: KubeClient, pods: int, concurrency: int) -> float:
    """Create ``pods`` pods bound to a kubelet-less node and force-delete them: the API server and
    etcd of a fresh bed are warm before the first contender is measured. Seconds it took."""
    t0 = time.monotonic()
    node = f"warmup-{int(time.time()) % 100000:05d}"
    await client.post("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
    ns = await create_namespace(client, "scale-warmup")
    try:
        await create_bound(client, ns, Case(1, pods), [node], concurrency)
    finally:
        await remove_namespace(client, ns, force=True, wait=300)
        with contextlib.suppress(ApiError):
            await client.delete(f"/api/v1/nodes/{node}")
    return time.monotonic() - t0


# ---------------------------------------------------------------------------------------- scenario


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes",
        default=None,
        help=f"comma-separated cases: PODS on one node or NODESxPODS "
        f"(default {FULL_SIZES}; --quick {QUICK_SIZES})",
    )
    parser.add_argument("-n", "--pods", type=int, default=None, help="one case: this many pods on one node")
    parser.add_argument(
        "--contenders", default=",".join(CONTENDERS), help="comma-separated, run in this order"
    )
    parser.add_argument("--no-floor", action="store_true", help="leave out the bare loop")
    parser.add_argument("--concurrency", type=int, default=50, help="pod POSTs in flight")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for all Running")
    parser.add_argument(
        "--warmup",
        type=int,
        default=500,
        help="pods created and deleted before the first measurement (0: none)",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"results directory (default {RESULTS_DIR})")


def chosen_cases(args: argparse.Namespace, quick: bool) -> list[Case]:
    if args.pods:
        return [Case(1, args.pods)]
    return [
        parse_case(s) for s in (args.sizes or (QUICK_SIZES if quick else FULL_SIZES)).split(",") if s.strip()
    ]


def chosen_contenders(args: argparse.Namespace) -> list[str]:
    names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = [c for c in names if c not in RUNNERS]
    if unknown:
        raise SystemExit(f"unknown contenders {unknown}; known: {', '.join(CONTENDERS)}")
    return [c for c in names if not (args.no_floor and c == "bare")]


async def run(args: argparse.Namespace, quick: bool) -> dict[str, Any]:
    cases, names = chosen_cases(args, quick), chosen_contenders(args)
    out_dir: Path = args.out or RESULTS_DIR
    results: dict[str, JSON] = {}
    series: dict[str, Sequence[float]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="warmlet-bench-scale-"))
    async with bed_session(getattr(args, "kubeconfig", None)) as bed:
        client = await KubeClient.from_kubeconfig(bed.kubeconfig, max_connections=64)
        ctx = RunContext(bed, client, workdir)
        try:
            if args.warmup > 0:
                log.info("warming the API server up with %d pods", args.warmup)
                await warm_up(client, args.warmup, args.concurrency)
            for case in cases:
                rows: dict[str, JSON] = {}
                for name in names:
                    log.info("measuring contender=%s case=%s", name, case.label)
                    try:
                        rows[name], lat_ms = await measure(ctx, name, case, args.concurrency, args.timeout)
                        series[f"{name} {case.label}"] = lat_ms
                    except Exception as e:  # one contender failing leaves the others' figures
                        log.exception("contender failed contender=%s case=%s", name, case.label)
                        rows[name] = failed(e)
                    await asyncio.sleep(5.0)  # let the API server and etcd settle between contenders
                results[case.label] = {
                    "nodes": case.nodes,
                    "pods_per_node": case.pods_per_node,
                    "pods": case.pods,
                    "contenders": rows,
                    "ratios": case_ratios(rows),
                }
        finally:
            await client.close()
    result = result_document(args, quick, cases, names, results, ctx)
    write_result(SCENARIO, result, out_dir)
    plot_cdf(
        series,
        "scale: bind -> Running per pod, warmlet / KWOK / bare loop",
        out_dir / f"{SCENARIO}.png",
        xlabel="pod's bind event -> Running event, client-side (ms)",
    )
    return {"scenario": SCENARIO, **result}


def result_document(
    args: argparse.Namespace,
    quick: bool,
    cases: list[Case],
    names: list[str],
    results: dict[str, JSON],
    ctx: RunContext,
) -> JSON:
    sizes = [c.label for c in cases]
    goal = goals(results)
    gcase = goal["warmlet_within_1.3x_of_bare"]["case"]
    warm = ((results.get(gcase) or {}).get("contenders") or {}).get("warmlet") or {}
    lat = warm.get("bind_to_running") or {}
    kwok = ctx.kwok
    return {
        "quick": quick,
        "sizes": sizes,
        "full_run": ",".join(sizes) == FULL_SIZES and names == list(CONTENDERS),
        "pods_created": f"directly bound (spec.nodeName set), {args.concurrency} POSTs in flight, "
        f"pod i on node i // pods_per_node; {args.warmup} pods created and deleted first (warm-up)",
        "contenders": {n: DESCRIPTIONS[n] for n in names},
        "kwok": {
            "version": KWOK_VERSION,
            "built_by": "scripts/build-kwok.sh",
            "binary": str(kwok.binary),
            "stages": kwok.stage_names(),
            "stages_source": kwok.source,
        }
        if kwok
        else None,
        "api_calls": "apiserver_request_total after all Running (+3 s) minus before the first POST, less "
        "the bench's pod POSTs; other components' calls in the window included; open watches not counted",
        "memory": "peak = max(VmHWM, 1 s VmRSS samples) of the node process; "
        "cpu = utime+stime delta over the window",
        "cases": results,
        "goals": goal,
        # interface figures: the goal case's warmlet row (bench/RESULTS.md, earlier readers)
        "n": (results.get(gcase) or {}).get("pods"),
        "warmlet": warm,
        "p50_ms": lat.get("p50_ms"),
        "p95_ms": lat.get("p95_ms"),
        "p99_ms": lat.get("p99_ms"),
    }


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    return summary(result)


if __name__ == "__main__":
    from bench.cli import module_main

    module_main("bench.scale")
