"""Shared benchmark plumbing: machine stamp, percentiles, result files and plots.

Every figure is measured side by side in one run and reported with ratios; absolute
times are stamped with the machine they came from.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import time
from collections.abc import Awaitable, Iterable, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """Cores, memory and kernel of this machine, for stamping absolute figures."""
    mem_kb = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
                    break
    except OSError:
        pass
    return {
        "cores": os.cpu_count() or 0,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize_ms(seconds: Sequence[float]) -> dict[str, float | int]:
    """n / p50 / p95 / p99 / mean in milliseconds from a list of durations in seconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(sum(ms) / len(ms), 2) if ms else math.nan,
    }


def ratio(a: float, b: float) -> float:
    """a / b rounded, NaN when b is zero or missing."""
    if not b or math.isnan(b) or math.isnan(a):
        return math.nan
    return round(a / b, 2)


def write_result(scenario: str, result: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """Write bench/results/<scenario>.json with the scenario name, machine and time stamped."""
    results_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "scenario": scenario,
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    payload.update(result)
    path = results_dir / f"{scenario}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def plot_cdf(
    series: dict[str, Sequence[float]], title: str, path: Path, xlabel: str = "latency (ms)"
) -> Path:
    """A CDF plot (PNG) of several latency series given in milliseconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, values in series.items():
        if not values:
            continue
        xs = sorted(values)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=f"{label} (n={len(xs)}, p50={percentile(xs, 50):.0f} ms)")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of pods")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


async def bounded(calls: Iterable[Awaitable[Any]], concurrency: int = 32) -> list[Any]:
    """Await ``calls`` with at most ``concurrency`` in flight (thousands of POSTs, PATCHes,
    DELETEs or CRI calls); results in order."""
    sem = asyncio.Semaphore(concurrency)

    async def one(call: Awaitable[Any]) -> Any:
        async with sem:
            return await call

    return list(await asyncio.gather(*(one(c) for c in calls)))
