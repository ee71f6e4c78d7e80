"""Midnight burst: K CronJobs sharing one schedule fire K pods at the same instant.

Models "thousands of jobs that must start at 00:00:00 (tolerance 3 s)": K distinct CronJobs
(each Job runs one pod, --parallelism P packs P pods into one Job of K/P CronJobs instead), all
scheduled at one minute boundary, in three variants side by side per backend
(bench/midnight_variants.py): ``no-prewarm`` (the pool is empty at the instant, the image cached),
``prewarm`` (schedule-aware prewarming, lead --lead-seconds) and ``punctual`` (the CronJobs opted
in with ``warmlet.io/punctual: "true"``: warmlet pre-creates their Jobs --punctual-lead-seconds
ahead, the pods wait on the node with their containers created and one start wave starts them at
the instant; prewarming on). The measured firing is the first one after the CronJobs are created
(a daily schedule "M H * * *" at the chosen boundary, so it fires once).

Per pod: the real container start - the instant (``warmlet.io/started-at``, milliseconds, where
warmlet wrote it, else kubelet's ``containerStatuses[].state.running.startedAt``, whole seconds:
the JSON says which per variant), observed Running - instant (client watch), created / bound, the
start level. Per variant: p50/p99/max of startedAt - instant, within 3 s, started before the
instant (must be 0), duplicate Jobs, and the split control plane (instant → bound) vs warmlet
(bound → Running).

The physical floor, CRI backend, same run (bench/start_floor.py): bare CRI StartContainer of the
same number of containers already created in warm sandboxes, all at one instant with the start
wave's concurrency, and the StartContainer rate at several concurrencies. Goals (issue 16):
punctual p99(startedAt - instant) <= 1.2 x the floor's, punctual within 3 s >= 0.9 x the floor's;
simulated: every pod started within 1 s, none before the instant.

    python -m bench.midnight_burst [--backend cri|simulated|both] [--quick] [--out-dir DIR]

Cluster: --kubeconfig, else the running CLI test bed, else a test bed started for the run
(bench.harness.bed_session); the CRI variants need the bed's containerd and busybox image.
warmlet runs as ``warmlet run`` subprocesses with a user bound to kind-config/rbac.yaml's role
(+ kind-config/punctual-rbac.yaml's for the punctual variant: bench.rbac_node).
Quick: 60 simulated pods per variant, the three variants firing at one instant on three nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, plot_cdf, write_result
from bench.harness import HOLD_COMMAND, Bed, bed_session
from bench.midnight_figures import (
    SOURCES,
    TARGET_SECONDS,
    prewarm_ratios,
    punctual_goals,
    punctual_lead,
)
from bench.midnight_variants import (
    MODES,
    SIM_TIMERS,
    SharedInstant,
    Variant,
    VariantRun,
    run_variant,
)
from provider.kubeclient import KubeClient

JSON = dict[str, Any]

SCENARIO = "midnight-burst"
PLOT_MIN_MS = 1.0  # the CDF plots are log-scale: smaller values (and any before the instant) drawn here


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["cri", "simulated", "both"], default="both")
    parser.add_argument("--pods-cri", type=int, default=200, help="pods fired at once on the CRI backend")
    parser.add_argument(
        "--pods-sim", type=int, default=2000, help="pods fired at once on the simulated backend"
    )
    parser.add_argument("--parallelism", type=int, default=1, help="pods per Job (K/P CronJobs)")
    parser.add_argument("--lead-seconds", type=float, default=30.0, help="cron prewarm lead time")
    parser.add_argument(
        "--punctual-lead-seconds",
        type=float,
        default=None,
        help="punctual variant: Jobs pre-created this long before the instant (punctual.lead_seconds; "
        "default 60 s, 0.1 s per pod for bigger bursts)",
    )
    parser.add_argument(
        "--start-wave-concurrency",
        type=int,
        default=0,
        help="pods.start_wave_concurrency of the nodes and the floor's (0: the backend's default)",
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}"
    )
    parser.add_argument(
        "--floor-sweep-pods",
        type=int,
        default=60,
        help="containers per point of the floor's concurrency sweep",
    )
    parser.add_argument("--no-floor", action="store_true", help="skip the bare-CRI floor")
    parser.add_argument("--timeout", type=float, default=300.0, help="per variant, after the instant")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=RESULTS_DIR,
        help="where the JSON and plots go (default bench/results)",
    )


def variants(args: argparse.Namespace, quick: bool) -> list[Variant]:
    """Quick: 60 simulated pods per variant, short leads. Otherwise the requested backends and modes."""
    modes = [m for m in str(args.modes).split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown modes {bad}; known: {MODES}")
    conc = args.start_wave_concurrency
    if quick:
        return [Variant("simulated", m, 60, 1, 10.0, 15.0, conc) for m in modes]
    out = []
    for backend, n in (("cri", args.pods_cri), ("simulated", args.pods_sim)):
        if args.backend in (backend, "both"):
            lead = args.punctual_lead_seconds or punctual_lead(n)
            out += [Variant(backend, m, n, args.parallelism, args.lead_seconds, lead, conc) for m in modes]
    return out


def cri_start_concurrency(configured: int) -> int:
    """The start wave's concurrency on the CRI backend: the configured one, else the backend's default."""
    from sandbox.cri.backend import CriBackend

    return configured or CriBackend.capabilities.start_concurrency


async def run_concurrently(
    client: KubeClient, bed: Bed, vs: Sequence[Variant], wait_s: float
) -> list[VariantRun]:
    """Quick mode: the variants fire at the same instant on their own nodes (one or two minutes)."""
    shared = SharedInstant(len(vs))
    return list(await asyncio.gather(*(run_variant(client, bed, v, 5.0, wait_s, shared) for v in vs)))


async def measure(
    args: argparse.Namespace, quick: bool, bed: Bed, vs: Sequence[Variant]
) -> tuple[list[VariantRun], JSON]:
    """Every variant (one after another; quick: together) and the CRI floor for the CRI pod count,
    measured right after the CRI variants (the machine as they found it), before the simulated ones."""
    from bench.start_floor import measure_start_floor

    floors: JSON = {}
    cri_pods = max((v.pods for v in vs if v.backend == "cri"), default=0)

    async def floor() -> None:
        if cri_pods and not args.no_floor and "cri" not in floors:
            floors["cri"] = await measure_start_floor(
                bed.cri_endpoint,
                bed.images["busybox"],
                cri_pods,
                cri_start_concurrency(args.start_wave_concurrency),
                sweep_pods=args.floor_sweep_pods,
                command=HOLD_COMMAND,
            )

    client = await KubeClient.from_kubeconfig(bed.kubeconfig, max_connections=64)
    try:
        if quick:
            runs = await run_concurrently(client, bed, vs, args.timeout)
        else:
            runs = []
            for v in sorted(vs, key=lambda v: v.backend != "cri"):  # CRI first, then its floor
                if v.backend != "cri":
                    await floor()
                runs.append(await run_variant(client, bed, v, 5.0, args.timeout))
    finally:
        await client.close()
    await floor()
    return runs, floors


def ratios_for(results: dict[str, JSON], floors: JSON) -> JSON:
    """Per backend: no-prewarm vs prewarm, and the punctual variant against its goals."""
    out: JSON = {}
    for backend in ("cri", "simulated"):
        r: JSON = {}
        on, off = results.get(f"{backend}/prewarm"), results.get(f"{backend}/no-prewarm")
        if on and off:
            r.update(prewarm_ratios(off, on))
        punctual = results.get(f"{backend}/punctual")
        if punctual:
            floor = floors.get(backend)
            if backend == "cri" and floor is None:
                r["punctual"] = {"floor": "not measured (--no-floor)"}
            else:
                r["punctual"] = punctual_goals(punctual, floor)
        if r:
            out[backend] = r
    return out


def plots(out_dir: Path, vs: Sequence[Variant], runs: Sequence[VariantRun], floors: JSON) -> list[str]:
    """Per backend midnight-burst-started-<backend>.png (startedAt - instant: the three variants +
    the floor), midnight-burst-running.png (observed Running - instant, every variant), and
    midnight-burst.png (the one bench/RESULTS.md shows): the first backend's started plot (CRI's)."""
    paths = []
    for backend in [b for b in ("cri", "simulated") if any(v.backend == b for v in vs)]:
        series: dict[str, Sequence[float]] = {
            v.label: [max(PLOT_MIN_MS, x) for x in r.started_ms]
            for v, r in zip(vs, runs, strict=True)
            if v.backend == backend
        }
        floor = floors.get(backend)
        if floor is not None:
            series[f"{backend}/floor (bare CRI, {floor['concurrency']} in flight)"] = [
                max(PLOT_MIN_MS, x) for x in floor.get("started_ms") or []
            ]
        paths.append(
            plot_cdf(
                series,
                f"midnight burst, {backend}: container started - scheduled instant",
                out_dir / f"{SCENARIO}-started-{backend}.png",
                xlabel=f"startedAt - instant (ms, log scale; below {PLOT_MIN_MS:.0f} ms drawn at it)",
            )
        )
    if paths:
        shutil.copyfile(paths[0], out_dir / f"{SCENARIO}.png")
        paths.append(out_dir / f"{SCENARIO}.png")
    paths.append(
        plot_cdf(
            {v.label: r.running_ms for v, r in zip(vs, runs, strict=True)},
            "midnight burst: scheduled instant -> pod Running (client watch)",
            out_dir / f"{SCENARIO}-running.png",
            xlabel="time from the scheduled instant to Running (ms)",
        )
    )
    return [str(p) for p in paths]


async def run(args: argparse.Namespace, quick: bool) -> dict[str, Any]:
    vs = variants(args, quick)
    async with bed_session(getattr(args, "kubeconfig", None), getattr(args, "cri_endpoint", None)) as bed:
        if any(v.backend == "cri" for v in vs) and not (bed.cri_endpoint and bed.images.get("busybox")):
            raise RuntimeError("the CRI variants need the test bed's containerd and busybox image")
        runs, floors = await measure(args, quick, bed, vs)
    results = {v.label: r.figures for v, r in zip(vs, runs, strict=True)}
    result: JSON = {
        "quick": quick,
        "target_seconds": TARGET_SECONDS,
        "variants_fire": "at the same instant on separate nodes" if quick else "one after another",
        "pods_created_by": (
            "CronJob -> Job controller -> kube-scheduler (nodeSelector); punctual: warmlet pre-creates "
            "the Job (the CronJob controller adopts it at the instant)"
        ),
        "simulated_timers": SIM_TIMERS,
        "started_at_sources": SOURCES,
        "control_plane_floor": "instant -> pod bound (split.control_plane_instant_to_bound)",
        "variants": results,
        "floor": floors,
        "ratios": ratios_for(results, floors),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = write_result(SCENARIO, result, args.out_dir)
    result["plots"] = plots(args.out_dir, vs, runs, floors)
    return {"scenario": SCENARIO, **result, "path": str(path)}


def _f(v: Any, unit: str = "ms") -> str:
    return "-" if v is None else f"{float(v):,.0f}{unit}"


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for label, v in (result.get("variants") or {}).items():
        cp = (v.get("split") or {}).get("control_plane_instant_to_bound") or {}
        rows.append(
            (
                label,
                f"n={v.get('running')}/{v.get('expected')} Running p50={_f(v.get('p50_ms'))} "
                f"p99={_f(v.get('p99_ms'))} all={v.get('seconds_to_all_running')}s "
                f"within3s={v.get('within_3s')} bind p50={_f(cp.get('p50_ms'))} "
                f"levels={v.get('start_levels')}",
            )
        )
        s = v.get("started_minus_instant")
        if s:
            rows.append(
                (
                    f"{label} startedAt-instant",
                    f"p50={_f(s.get('p50_ms'))} p99={_f(s.get('p99_ms'))} max={_f(s.get('max_ms'))} "
                    f"within3s={s.get('within_3s')} before={s.get('before_instant')} "
                    f"duplicates={v.get('duplicates')} source={s.get('sources')}",
                )
            )
    for backend, f in (result.get("floor") or {}).items():
        sweep = f.get("sweep") or {}
        rows.append(
            (
                f"{backend} floor (bare CRI, {f.get('concurrency')} in flight)",
                f"n={f.get('started')} p50={_f(f.get('p50_ms'))} p99={_f(f.get('p99_ms'))} "
                f"max={_f(f.get('max_ms'))} within3s={f.get('within_3s')} rate={f.get('rate_per_s')}/s",
            )
        )
        rows.append(
            (
                f"{backend} floor rate by concurrency",
                " ".join(f"{c}:{r}/s" for c, r in (sweep.get("rate_per_s_by_concurrency") or {}).items())
                + f" best={sweep.get('best_concurrency')}",
            )
        )
    for backend, r in (result.get("ratios") or {}).items():
        if "p50_no_prewarm_over_prewarm" in r:
            rows.append(
                (
                    f"{backend} ratios",
                    f"p50 off/on={r['p50_no_prewarm_over_prewarm']} "
                    f"p99 off/on={r['p99_no_prewarm_over_prewarm']}",
                )
            )
        if r.get("punctual"):
            rows.append(
                (f"{backend} punctual goals", ", ".join(f"{k}={v}" for k, v in r["punctual"].items()))
            )
    return rows


if __name__ == "__main__":
    from bench.cli import module_main

    module_main("bench.midnight_burst")
