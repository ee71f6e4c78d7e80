"""Long soak: a simulated warmlet node through a burst of thousands of pods, watched from outside.

The question is API load on the real control plane, not containers, so the pods run on the
simulated backend. All the time (idle, burst, afterwards) an observer samples the node's Lease
(``renewTime``) and the Node as the real node-lifecycle controller leaves it (Ready condition,
``node.kubernetes.io/unreachable``/``not-ready`` taints): the node must never go NotReady/Unknown
and no lease renewal may be missed (no gap between two renewals near twice the interval).

``node_soak`` is shared with the CI fault test (tests/faults/test_load.py, 2,000 pods, ~2 min);
this scenario is the long version (default 5,000 pods over 10 minutes) and writes
``bench/results/soak-node-ready.json`` with a ``reliability`` row for the README's table.

    warmlet bench soak-node-ready [--pods 5000] [--minutes 10]
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import contextlib
import datetime as dt
import itertools
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import write_result
from provider.kubeclient import ApiError, KubeClient
from testbed.testing import bare_pod, create_namespace, node_config, running_node

log = logging.getLogger("bench.soak_node")
JSON = dict[str, Any]
SCENARIO = "soak-node-ready"
BAD_TAINTS = ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")


@dataclass
class Sample:
    t: float
    ready: str
    reason: str
    taints: list[str]
    renew: str
    wall: float = 0.0  # epoch seconds of the sample


@dataclass
class SoakResult:
    pods: int
    burst_seconds: float = 0.0  # first POST -> all Running
    observed_seconds: float = 0.0
    samples: int = 0
    not_ready: list[tuple[float, str, str]] = field(default_factory=list)
    tainted: list[tuple[float, list[str]]] = field(default_factory=list)
    renewals: int = 0
    max_renew_gap: float = 0.0
    renew_interval: float = 10.0
    lease_errors: float = 0.0  # warmlet's own count of failed renewals
    api_errors: float = 0.0
    sample_errors: int = 0

    @property
    def missed_renewals(self) -> int:
        """Gaps of 2 intervals or more between renewals seen (a renewal skipped)."""
        return int(self.max_renew_gap >= 2 * self.renew_interval)

    @property
    def ok(self) -> bool:
        return not self.not_ready and not self.tainted and not self.missed_renewals and self.lease_errors == 0


def _micro_time(s: str) -> float:
    base, _, frac = s.rstrip("Z").partition(".")
    t = calendar.timegm(dt.datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").timetuple())
    return t + (float("0." + frac) if frac else 0.0)


def renew_gaps(renew_times: list[str], end: float) -> list[float]:
    """Gaps between consecutive distinct renewTimes, and from the last one to ``end`` (epoch)."""
    times = sorted({_micro_time(r) for r in renew_times if r})
    gaps = [b - a for a, b in itertools.pairwise(times)]
    if times:
        gaps.append(end - times[-1])
    return gaps


def _metric(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return float(REGISTRY.get_sample_value(name, labels) or 0.0)


def _api_errors() -> float:
    from prometheus_client import REGISTRY

    return sum(
        s.value
        for fam in REGISTRY.collect()
        if fam.name == "warmlet_api_errors"
        for s in fam.samples
        if s.name.endswith("_total")
    )


async def node_soak(
    kubeconfig: str | Path,
    workdir: Path,
    pods: int,
    idle_seconds: float = 15.0,
    after_seconds: float = 35.0,
    parallel: int = 32,
    sample_every: float = 1.0,
    min_total_seconds: float = 0.0,
) -> SoakResult:
    """Run one simulated node (production lease settings), burst ``pods`` through the scheduler,
    keep observing ``after_seconds`` once all run (and until ``min_total_seconds`` in all);
    force-delete them at the end."""
    cfg = node_config(kubeconfig, workdir)
    name = cfg.node.name
    res = SoakResult(pods=pods, renew_interval=cfg.node.lease_renew_interval_seconds)
    client = await KubeClient.from_kubeconfig(str(kubeconfig), max_connections=parallel + 4)
    watcher = client.clone(max_connections=2)  # the observer never queues behind the burst
    samples: list[Sample] = []
    stop = asyncio.Event()
    t0 = time.monotonic()
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"

    async def observe() -> None:
        while not stop.is_set():
            try:
                node, lease = await asyncio.gather(
                    watcher.get(f"/api/v1/nodes/{name}"), watcher.get(lease_path)
                )
                conds: list[JSON] = node["status"].get("conditions") or []
                ready: JSON = next((c for c in conds if c["type"] == "Ready"), {})
                taints = [t["key"] for t in (node.get("spec") or {}).get("taints") or []]
                samples.append(
                    Sample(
                        round(time.monotonic() - t0, 1),
                        str(ready.get("status", "")),
                        str(ready.get("reason", "")),
                        taints,
                        str(lease["spec"].get("renewTime", "")),
                        time.time(),
                    )
                )
            except (ApiError, OSError, TimeoutError, KeyError) as e:
                res.sample_errors += 1
                log.warning("soak sample failed error=%r", e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), sample_every)

    lease_err0, api_err0 = _metric("warmlet_node_lease_renewals_total", result="error"), _api_errors()
    ns = ""
    try:
        async with running_node(cfg):
            await _settled(watcher, name)  # registration's transient not-ready taint is not the test
            monitor = asyncio.create_task(observe())
            try:
                await asyncio.sleep(idle_seconds)
                ns = await create_namespace(client, "soak")
                sem = asyncio.Semaphore(parallel)

                async def create(i: int) -> None:
                    async with sem:
                        for attempt in range(5):
                            try:
                                await client.post(
                                    f"/api/v1/namespaces/{ns}/pods", bare_pod(f"soak-{i}", name)
                                )
                                return
                            except (ApiError, OSError, TimeoutError):
                                if attempt == 4:
                                    raise
                                await asyncio.sleep(1 + attempt)

                burst0 = time.monotonic()
                await asyncio.gather(*(create(i) for i in range(pods)))
                while True:
                    page = await client.list_all(f"/api/v1/namespaces/{ns}/pods", limit=1000)
                    running = sum((p.get("status") or {}).get("phase") == "Running" for p in page["items"])
                    if running == pods:
                        break
                    if time.monotonic() - burst0 > 600:
                        raise TimeoutError(f"{running}/{pods} Running after 600 s")
                    await asyncio.sleep(2.0)
                res.burst_seconds = round(time.monotonic() - burst0, 1)
                await asyncio.sleep(max(after_seconds, min_total_seconds - (time.monotonic() - t0)))
            finally:
                stop.set()
                await monitor
                res.lease_errors = _metric("warmlet_node_lease_renewals_total", result="error") - lease_err0
                res.api_errors = _api_errors() - api_err0
                if ns:
                    with contextlib.suppress(ApiError, OSError, TimeoutError):
                        await client.delete(f"/api/v1/namespaces/{ns}/pods", gracePeriodSeconds=0)
    finally:
        if ns:
            with contextlib.suppress(ApiError, OSError, TimeoutError):
                await client.delete(f"/api/v1/namespaces/{ns}")
        await client.close()
        await watcher.close()

    res.observed_seconds = samples[-1].t if samples else 0.0
    res.samples = len(samples)
    res.not_ready = [(s.t, s.ready, s.reason) for s in samples if s.ready != "True"]
    res.tainted = [(s.t, s.taints) for s in samples if any(k in BAD_TAINTS for k in s.taints)]
    renew = [s.renew for s in samples]
    res.renewals = len({r for r in renew if r})
    # up to the last sample, not to now: stopping the node and deleting thousands of pods after
    # the observation takes a while and is no lease gap
    gaps = renew_gaps(renew, samples[-1].wall if samples else time.time())
    res.max_renew_gap = round(max(gaps), 1) if gaps else 0.0
    return res


async def _settled(client: KubeClient, name: str, within: float = 120.0) -> None:
    """Until the new node is Ready and the lifecycle controller lifted its start-up taints."""
    deadline = time.monotonic() + within
    while True:
        node = await client.get(f"/api/v1/nodes/{name}")
        conds: list[JSON] = (node.get("status") or {}).get("conditions") or []
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
        taints = [t["key"] for t in (node.get("spec") or {}).get("taints") or []]
        if ready and not any(k in BAD_TAINTS for k in taints):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"node {name} not settled: ready={ready} taints={taints}")
        await asyncio.sleep(0.5)


def details(res: SoakResult) -> list[str]:
    """The figures of one soak, as README table details."""
    return [
        f"{res.pods:,} pods Running {res.burst_seconds:.0f} s after the first POST; "
        f"observed {res.observed_seconds:.0f} s in {res.samples} samples",
        f"Ready in {res.samples - len(res.not_ready)}/{res.samples} samples, "
        f"{len(res.tainted)} with unreachable/not-ready taint",
        f"{res.renewals} lease renewals, longest gap {res.max_renew_gap:.1f} s "
        f"(interval {res.renew_interval:.0f} s), {res.lease_errors:.0f} failed; "
        f"{res.api_errors:.0f} API errors",
    ]


# ------------------------------------------------------------------------------ bench scenario


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pods", type=int, default=5000, help="pods in the burst (default 5000)")
    parser.add_argument("--minutes", type=float, default=10.0, help="total observation (default 10)")


async def run(args: argparse.Namespace, quick: bool) -> dict[str, Any]:
    from bench.harness import bed_session

    pods = 1000 if quick else args.pods
    total = 120.0 if quick else args.minutes * 60
    idle = min(60.0, total / 5)
    async with bed_session(args.kubeconfig) as bed:
        with tempfile.TemporaryDirectory(prefix="warmlet-soak-") as tmp:
            res = await node_soak(
                bed.kubeconfig, Path(tmp), pods, idle_seconds=idle, min_total_seconds=total, sample_every=2.0
            )
    result: dict[str, Any] = {
        "scenario": SCENARIO,
        "quick": quick,
        "soak": {**asdict(res), "missed_renewals": res.missed_renewals},
        "reliability": {
            "fault": f"API load: a burst of {pods:,} pods (simulated backend) through the real scheduler, "
            f"{total / 60:.0f} min observed",
            "checked": "node never NotReady/Unknown, no unreachable/not-ready taint (node-lifecycle "
            "controller's view), no lease renewal missed",
            "outcome": "passed" if res.ok else "failed",
            "details": details(res),
            "when": dt.date.today().isoformat(),
        },
    }
    write_result(SCENARIO, result)
    return result


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    s = result["soak"]
    return [
        ("pods", f"{s['pods']:,}"),
        ("burst: first POST -> all Running", f"{s['burst_seconds']:.1f} s"),
        ("observed", f"{s['observed_seconds']:.0f} s ({s['samples']} samples)"),
        ("samples not Ready", str(len(s["not_ready"]))),
        ("samples with unreachable/not-ready taint", str(len(s["tainted"]))),
        ("lease renewals / longest gap", f"{s['renewals']} / {s['max_renew_gap']:.1f} s"),
        ("outcome", result["reliability"]["outcome"]),
    ]


if __name__ == "__main__":
    from bench.cli import module_main

    module_main(__name__)
