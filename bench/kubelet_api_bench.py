"""Kubelet API benchmark: one /metrics/resource scrape with 1,000 simulated pods, and
/containerLogs throughput on a 100 MB CRI log against ``cat`` of the same file (the floor).

Everything goes through the real server (HTTPS, auth middleware) on loopback.
Run: ``python -m bench.kubelet_api_bench [--pods 1000] [--log-mb 100]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import ratio, summarize_ms, write_result
from common.crilog import encode_line
from provider.config import ServerConfig
from provider.kubelet_api import StaticPods, start_kubelet_api
from provider.kubelet_api.auth import AlwaysAllow, UserInfo
from provider.kubelet_api.resource_metrics import render_resource_metrics
from sandbox.backend import ContainerSpec, PodSandboxSpec
from sandbox.simulated import SimulatedBackend


class _Anyone:
    async def authenticate(self, peercert: Mapping[str, Any] | None, authorization: str | None) -> UserInfo:
        return UserInfo("bench")


def _pod(i: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"p{i}", "namespace": "bench", "uid": f"uid-{i}"},
        "spec": {"containers": [{"name": "main", "image": "busybox"}, {"name": "side", "image": "busybox"}]},
    }


def _write_log(path: str, megabytes: int) -> int:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    line = b"x" * 90
    ts = 1_700_000_000 * 10**9
    with open(path, "wb") as f:
        block = b"".join(encode_line(ts + i, "stdout", line + str(i).encode()) for i in range(10_000))
        while f.tell() < megabytes * 1024 * 1024:
            f.write(block)
        return f.tell()


def _time_cat(path: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


async def _get(session: aiohttp.ClientSession, url: str, ctx: ssl.SSLContext) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    async with session.get(url, ssl=ctx) as r:
        assert r.status == 200, r.status
        async for chunk in r.content.iter_chunked(1 << 20):
            n += len(chunk)
    return time.perf_counter() - t0, n


async def measure(pods: int, log_mb: int, scrapes: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="kapi-bench-"))
    backend = SimulatedBackend(tmp / "logs")
    await backend.start()
    provider = StaticPods()
    for i in range(pods):
        p = _pod(i)
        provider.put(p)
        spec = PodSandboxSpec(
            uid=f"uid-{i}", namespace="bench", name=f"p{i}", workload_key="k", hostname=f"p{i}"
        )
        sb = await backend.acquire_sandbox(spec)
        for c in ("main", "side"):
            cid = await backend.create_container(sb, spec, ContainerSpec(name=c, image="busybox"), 0)
            await backend.start_container(cid)
    cfg = ServerConfig(address="127.0.0.1", port=0, cert_dir=tmp / "pki", log_limit_bytes_max=1 << 40)
    api = await start_kubelet_api(
        cfg, "bench-node", backend, provider, None, authenticator=_Anyone(), authorizer=AlwaysAllow()
    )
    assert api.serving.ca_file is not None
    ctx = ssl.create_default_context(cafile=str(api.serving.ca_file))
    result: dict[str, Any] = {"pods": pods, "containers": pods * 2}
    try:
        async with aiohttp.ClientSession() as session:
            await _get(session, f"{api.url}/metrics/resource", ctx)  # warm-up
            times = []
            size = 0
            for _ in range(scrapes):
                dt_, size = await _get(session, f"{api.url}/metrics/resource", ctx)
                times.append(dt_)
            render = []
            for _ in range(scrapes):
                usage = await backend.stats()
                t0 = time.perf_counter()
                render_resource_metrics(usage)
                render.append(time.perf_counter() - t0)
            result["metrics_resource_scrape"] = {**summarize_ms(times), "bytes": size}
            result["metrics_resource_render_only"] = summarize_ms(render)
            summary_times = [(await _get(session, f"{api.url}/stats/summary", ctx))[0] for _ in range(5)]
            result["stats_summary"] = summarize_ms(summary_times)

            log_path = backend.log_path("bench", "p0", "uid-0", "main", 0)
            file_bytes = await asyncio.to_thread(_write_log, log_path, log_mb)
            cat_s = await asyncio.to_thread(_time_cat, log_path)
            base = f"{api.url}/containerLogs/bench/p0/main"
            plain_s, plain_n = await _get(session, base, ctx)
            ts_s, ts_n = await _get(session, base + "?timestamps=true", ctx)
            tail_s, tail_n = await _get(session, base + "?tailLines=100", ctx)
            mb = file_bytes / 1e6
            result["container_logs"] = {
                "file_mb": round(mb, 1),
                "cat_floor_s": round(cat_s, 3),
                "cat_mb_per_s": round(mb / cat_s, 1),
                "plain_s": round(plain_s, 3),
                "plain_mb_per_s": round(mb / plain_s, 1),
                "plain_output_mb": round(plain_n / 1e6, 1),
                "timestamps_s": round(ts_s, 3),
                "timestamps_output_mb": round(ts_n / 1e6, 1),
                "tail100_ms": round(tail_s * 1000, 2),
                "tail100_bytes": tail_n,
                "plain_vs_cat": ratio(plain_s, cat_s),
            }
    finally:
        await api.close()
        await backend.close()
        await asyncio.to_thread(shutil.rmtree, tmp, True)
    return result


# ---- scenario interface (bench/harness.py): ``warmlet bench kubelet-api [--quick]``

SCENARIO = "kubelet-api"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pods", type=int, default=None, help="simulated pods (default 1000; --quick 200)")
    parser.add_argument("--log-mb", type=int, default=None, help="log size (default 100; --quick 20)")
    parser.add_argument("--scrapes", type=int, default=None, help="scrapes timed (default 20; --quick 5)")


async def run(args: argparse.Namespace, quick: bool) -> dict[str, Any]:
    """Measure (no cluster needed) and write bench/results/kubelet-api.json."""
    pods = args.pods or (200 if quick else 1000)
    log_mb = args.log_mb or (20 if quick else 100)
    scrapes = args.scrapes or (5 if quick else 20)
    result = await measure(pods, log_mb, scrapes)
    write_result(SCENARIO, result)
    return result


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    scrape = result.get("metrics_resource_scrape") or {}
    logs = result.get("container_logs") or {}
    return [
        ("pods (containers)", f"{result.get('pods')} ({result.get('containers')})"),
        ("/metrics/resource p50 / p99 (ms)", f"{scrape.get('p50_ms')} / {scrape.get('p99_ms')}"),
        ("/stats/summary p50 (ms)", f"{(result.get('stats_summary') or {}).get('p50_ms')}"),
        ("containerLogs MB/s (cat floor)", f"{logs.get('plain_mb_per_s')} ({logs.get('cat_mb_per_s')})"),
        ("containerLogs vs cat", f"{logs.get('plain_vs_cat')}x"),
        ("tailLines=100 (ms)", f"{logs.get('tail100_ms')}"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--log-mb", type=int, default=100)
    ap.add_argument("--scrapes", type=int, default=20)
    args = ap.parse_args()
    result = asyncio.run(measure(args.pods, args.log_mb, args.scrapes))
    path = write_result("kubelet-api", result)
    print(path.read_text())


if __name__ == "__main__":
    main()
