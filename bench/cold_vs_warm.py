"""Cold vs image-cached vs warm pod starts on the CRI backend, next to a bare-CRI floor.

Why: warmlet's claim is that a workload's next pod starts warm. This measures, on one warmlet
node (a ``warmlet run`` subprocess) with containerd, the start latency a user sees — client-side
POST to the first watch event with phase Running — at each start level, one pod at a time:

- cold: the image is removed from containerd (CRI RemoveImage) before each pod, so it is pulled
  from the loopback registry; each pod has its own owner (no warm sandbox for its key);
- image_cached: image present, each pod has its own owner (a new sandbox per pod);
- warm: every pod has the same owner; create → Running → delete → gone (sandbox back in the
  pool) → next. One unmeasured warm-up pod first puts a sandbox in the pool.

Owners are ConfigMaps no controller manages (``provider.workload`` keys unknown controller kinds
by the owner), so bare pods get a stable workload key with nothing recreating them. Each pod's
``warmlet.io/start-level`` annotation is checked against the intended level (mismatches counted).

Floor: a bare CRI loop (``sandbox.cri.client``): create+start the same container in one existing
sandbox, N times (stop+remove between, not timed) — what a warm start cannot go below. It runs
beside the node, one sample after each warm pod (``BareFloor``): the runtime then holds the same
idle sandboxes for both, and both see the same noise.

    warmlet bench cold-vs-warm [--quick] [-n 50] [--image REF]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import RESULTS_DIR, plot_cdf, ratio, summarize_ms, write_result
from bench.harness import (
    HOLD_COMMAND,
    Bed,
    bed_session,
    delete_namespace,
    owned_pod,
    owner_configmap,
    warmlet_node,
)
from bench.podwatch import START_LEVEL_ANNOTATION, PodClock
from provider.kubeclient import KubeClient
from testbed.testing import create_namespace
from testbed.util import kv

if TYPE_CHECKING:
    from proto import cri_pb2 as pb
    from sandbox.backend import ContainerSpec, PodSandboxSpec

log = logging.getLogger("bench.cold_vs_warm")
SCENARIO = "cold-vs-warm"
LEVELS = ("cold", "image_cached", "warm")
JSON = dict[str, Any]
# (level, index, seconds, observed start level) after each measured pod: progress for the demo.
OnPod = Callable[[str, int, float, str | None], None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", type=int, default=None, help="pods per level (default 50; --quick 10)")
    parser.add_argument("--image", default=None, help="image of the workload (default: the bed's fat image)")
    parser.add_argument(
        "--levels", default=",".join(LEVELS), help=f"comma-separated subset of {','.join(LEVELS)}"
    )


# ---------------------------------------------------------------------------- measurement


async def remove_image(cri_endpoint: str, image: str) -> bool:
    """CRI RemoveImage so the next pod has to pull (True when it was present)."""
    from sandbox.cri.client import CriClient

    cri = CriClient(cri_endpoint)
    try:
        present = await cri.image_status(image)
        if present is None:
            return False
        await cri.remove_image(present.id)
        return True
    finally:
        await cri.close()


async def measure_levels(
    client: KubeClient,
    node: str,
    cri_endpoint: str,
    image: str,
    n: int,
    levels: Sequence[str] = LEVELS,
    on_pod: OnPod | None = None,
    ns: str | None = None,
    floor: BareFloor | None = None,
) -> JSON:
    """Start ``n`` pods per level one at a time on ``node``; latencies and start-level checks.
    With ``floor``, one floor sample follows each measured warm pod once it is gone.

    Returns {"samples_s": {level: [seconds]}, "mismatches": [...], "namespace": ns}.
    """
    own_ns = ns is None
    ns = ns or await create_namespace(client, "cvw")
    samples: dict[str, list[float]] = {lv: [] for lv in levels}
    mismatches: list[JSON] = []
    run_id = uuid.uuid4().hex[:4]
    try:
        async with PodClock(client, ns) as clock:

            async def one(level: str, name: str, owner: JSON, measured: bool, i: int) -> None:
                if level == "cold":
                    await remove_image(cri_endpoint, image)
                t = await clock.create(owned_pod(name, node, image, owner))
                await clock.wait(name, "running", within=300)
                seconds = t.start_seconds or 0.0
                observed = await clock.wait_annotation(name, START_LEVEL_ANNOTATION, within=15)
                if measured:
                    samples[level].append(seconds)
                    if observed != level:
                        mismatches.append({"pod": name, "intended": level, "observed": observed})
                    if on_pod is not None:
                        on_pod(level, i, seconds, observed)
                log.info(kv("pod started", level=level, pod=name, ms=round(seconds * 1000, 1), seen=observed))
                await clock.delete_and_wait_gone(name, within=120)

            for level in levels:
                if level == "warm":
                    owner = await owner_configmap(client, ns, f"warm-{run_id}")
                    await one(level, f"warm-{run_id}-warmup", owner, False, -1)
                    for i in range(n):
                        await one(level, f"warm-{run_id}-{i}", owner, True, i)
                        if floor is not None:
                            await floor.sample()
                else:
                    prefix = "cold" if level == "cold" else "cached"
                    for i in range(n):
                        owner = await owner_configmap(client, ns, f"{prefix}-{run_id}-{i}")
                        await one(level, f"{prefix}-{run_id}-{i}", owner, True, i)
    finally:
        if own_ns:
            await delete_namespace(client, ns)
    return {"samples_s": samples, "mismatches": mismatches, "namespace": ns}


def bare_pod(
    instance: str, name: str, image: str, logdir: str, command: Sequence[str] = HOLD_COMMAND
) -> tuple[PodSandboxSpec, pb.PodSandboxConfig, ContainerSpec]:
    """A bare-CRI pod of the floors (no warmlet): its sandbox spec, PodSandboxConfig (labelled as
    ``instance``'s, so ``bench.harness.remove_instance_sandboxes`` finds it) and one container
    ``app`` running ``command``. Container configs: ``mapping.container_config(spec, container, i,
    instance=instance)``. Also used by bench/start_floor.py."""
    from sandbox.backend import ContainerSpec, PodSandboxSpec
    from sandbox.cri import mapping as m

    spec = PodSandboxSpec(
        uid=str(uuid.uuid4()),
        namespace="bench-floor",
        name=name,
        workload_key="bench/floor",
        hostname="floor",
    )
    container = ContainerSpec(name="app", image=image, command=list(command))
    return spec, m.sandbox_config(spec, logdir, instance=instance), container


class BareFloor:
    """Bare CRI (no warmlet): create+start the same container in one existing sandbox, directly
    and through warmlet's CRI relay (``cri.call_relay``), in the order alternating per sample so
    both see the same noise. Opened while the warmlet node runs and sampled between its warm pods
    (``measure_levels``): the floor then meets the runtime in the warm level's state (the idle
    sandboxes of the levels before it; 100 idle sandboxes make containerd's create+start about
    30 ms slower on the 2-core bed) and the same noise, instead of an emptied runtime later."""

    def __init__(self, cri_endpoint: str, image: str) -> None:
        from sandbox.cri.client import CriClient
        from sandbox.cri.relay import RelayProcess, upstream_path

        self.image = image
        self.instance = f"bench-floor-{uuid.uuid4().hex[:6]}"
        self.spec, self.sb_cfg, self.container = bare_pod(
            self.instance, self.instance, image, tempfile.mkdtemp(prefix="cvw-floor-")
        )
        self.cri = CriClient(cri_endpoint)
        self.relay = RelayProcess(upstream_path(cri_endpoint))
        self.relayed = CriClient(cri_endpoint)
        self.samples: dict[str, list[float]] = {"start_s": [], "relayed_start_s": []}
        self.teardown: list[float] = []
        self.sid = ""

    async def __aenter__(self) -> BareFloor:
        try:
            await asyncio.to_thread(self.relay.start)
            self.relayed.dial_through(self.relay.target)
            if await self.cri.image_status(self.image) is None:
                await self.cri.pull_image(self.image)
            self.sid = await self.cri.run_pod_sandbox(self.sb_cfg)
            await self.relayed.version()  # connected before the first timed call, like the direct one
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.sid:
            with contextlib.suppress(Exception):
                await self.cri.stop_pod_sandbox(self.sid)
                await self.cri.remove_pod_sandbox(self.sid)
        await self.cri.close()
        await self.relayed.close()
        await asyncio.to_thread(self.relay.stop)

    async def sample(self) -> None:
        """One timed create+start each way (stop+remove after each, not timed)."""
        from sandbox.cri import mapping as m

        i = len(self.samples["start_s"])
        order = [("start_s", self.cri), ("relayed_start_s", self.relayed)]
        for j, (key, client) in enumerate(order if i % 2 == 0 else order[::-1]):
            cfg = m.container_config(self.spec, self.container, 2 * i + j, instance=self.instance)
            t0 = time.perf_counter()
            cid = await client.create_container(self.sid, cfg, self.sb_cfg)
            await client.start_container(cid)
            t1 = time.perf_counter()
            await self.cri.stop_container(cid, 5)
            await self.cri.remove_container(cid)
            self.samples[key].append(t1 - t0)
            self.teardown.append(time.perf_counter() - t1)

    async def fill(self, n: int) -> JSON:
        """Sample until there are ``n``; the samples as ``build_result`` takes them."""
        while len(self.samples["start_s"]) < n:
            await self.sample()
        return {**self.samples, "stop_remove_s": list(self.teardown)}


def build_result(
    n: int, image: str, samples_s: dict[str, list[float]], floor: JSON, mismatches: list[JSON], node: JSON
) -> JSON:
    """The result dict (pure: figures, ratios and raw samples in ms from measured seconds)."""
    levels = {lv: summarize_ms(s) for lv, s in samples_s.items()}
    relayed = summarize_ms(floor.get("relayed_start_s") or [])
    floor_sum: JSON = {
        **summarize_ms(floor.get("start_s") or []),
        "what": "CRI CreateContainer+StartContainer in one existing sandbox (bare client, no warmlet)",
        "stop_remove": summarize_ms(floor.get("stop_remove_s") or []),
        "relayed": relayed,
    }

    def p50(level: str) -> float:
        return float(levels[level]["p50_ms"]) if level in levels else float("nan")

    ratios = {
        "image_cached_over_warm_p50": ratio(p50("image_cached"), p50("warm")),
        "cold_over_warm_p50": ratio(p50("cold"), p50("warm")),
        "warm_over_floor_p50": ratio(p50("warm"), float(floor_sum["p50_ms"])),
        "relayed_over_direct_floor_p50": ratio(float(relayed["p50_ms"]), float(floor_sum["p50_ms"])),
    }
    return {
        "n": n,
        "image": image,
        "latency": "client-side POST -> first watch event with phase Running, one pod at a time",
        "levels": levels,
        "floor": floor_sum,
        "ratios": ratios,
        "level_mismatches": len(mismatches),
        "mismatches": mismatches,
        "node": node,
        "samples_ms": {
            **{lv: [round(s * 1000, 2) for s in v] for lv, v in samples_s.items()},
            "floor": [round(s * 1000, 2) for s in floor.get("start_s") or []],
            "floor_relayed": [round(s * 1000, 2) for s in floor.get("relayed_start_s") or []],
        },
    }


def plot(result: JSON, path: Path) -> Path:
    series = {k: v for k, v in result["samples_ms"].items() if v}
    title = f"pod start latency, one warmlet node, CRI (n={result['n']} per level)"
    return plot_cdf(series, title, path, xlabel="POST → Running (ms, log scale)")


async def measure(bed: Bed, n: int, image: str, levels: Sequence[str], on_pod: OnPod | None = None) -> JSON:
    """Start a warmlet node on ``bed`` and measure every level, the floor between the warm pods
    (``BareFloor``; after the levels when there is no warm level)."""
    client = await KubeClient.from_kubeconfig(bed.kubeconfig)
    try:
        async with warmlet_node(bed, "cri") as node, BareFloor(bed.cri_endpoint, image) as bare:
            got = await measure_levels(
                client, node.name, bed.cri_endpoint, image, n, levels, on_pod, floor=bare
            )
            floor = await bare.fill(n)
            node_info = {"name": node.name, "backend": node.backend, "process": "warmlet run (subprocess)"}
    finally:
        await client.close()
    return build_result(n, image, got["samples_s"], floor, got["mismatches"], node_info)


async def run(args: argparse.Namespace, quick: bool) -> JSON:
    """Scenario entry point: measure, write bench/results/cold-vs-warm.json and its CDF plot."""
    n = args.n or (10 if quick else 50)
    levels = [lv for lv in str(args.levels).split(",") if lv]
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad:
        raise ValueError(f"unknown levels {bad}; known: {LEVELS}")
    async with bed_session(args.kubeconfig, args.cri_endpoint) as bed:
        image = args.image or bed.images.get("fat") or bed.images.get("busybox")
        if not image:
            raise ValueError("no image: pass --image (a pullable image that has sh)")
        result = await measure(bed, n, image, levels)
    result["quick"] = quick
    write_result(SCENARIO, result)
    plot(result, RESULTS_DIR / f"{SCENARIO}.png")
    return result


def _ms(v: Any) -> str:
    return "-" if v is None else f"{float(v):,.0f}"


def summary_rows(result: JSON) -> list[tuple[str, str]]:
    """level → p50 / p95 / p99, floor, ratios, start-level check."""
    rows: list[tuple[str, str]] = []
    for lv, s in (result.get("levels") or {}).items():
        rows.append(
            (
                f"{lv} (n={s.get('n')}) p50/p95/p99 ms",
                f"{_ms(s.get('p50_ms'))} / {_ms(s.get('p95_ms'))} / {_ms(s.get('p99_ms'))}",
            )
        )
    f = result.get("floor") or {}
    if f:
        rows.append(
            (
                "floor: bare CRI create+start ms",
                f"{_ms(f.get('p50_ms'))} / {_ms(f.get('p95_ms'))} / {_ms(f.get('p99_ms'))}",
            )
        )
    r = f.get("relayed") or {}
    if r.get("n"):
        rows.append(
            (
                "floor through the CRI relay ms",
                f"{_ms(r.get('p50_ms'))} / {_ms(r.get('p95_ms'))} / {_ms(r.get('p99_ms'))}",
            )
        )
    names = {
        "image_cached_over_warm_p50": "image_cached / warm (p50)",
        "cold_over_warm_p50": "cold / warm (p50)",
        "warm_over_floor_p50": "warm / floor (p50)",
        "relayed_over_direct_floor_p50": "floor through the CRI relay / direct (p50)",
    }
    for k, v in (result.get("ratios") or {}).items():
        rows.append((names.get(k, k), f"{v}x"))
    rows.append(("start-level annotation mismatches", str(result.get("level_mismatches", "-"))))
    return rows


async def _main(ns: argparse.Namespace) -> None:
    result = await run(ns, ns.quick)
    for k, v in summary_rows(result):
        print(f"{k:40} {v}")


if __name__ == "__main__":
    from bench.harness import add_common_arguments

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap)
    add_arguments(ap)
    ap.add_argument("--quick", action="store_true")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(_main(ap.parse_args()))
