"""CPU cost per pod of the simulated backend: N acquire/ensure-image/create/start/release cycles.

No API server, no provider: only ``SimulatedBackend`` (and so ``WarmPool`` and ``ImageCache``).
``--live`` pods are started before the batch is released (1: one pod at a time; N: all at once),
over 50 workloads, so the pool keeps, reuses and evicts sandboxes as in a burst. Prints JSON.

Compare two trees in one run by running it once per tree (``PYTHONPATH=<tree>``), interleaved::

    PYTHONPATH=/path/to/main python -m bench.sim_pool_cycles --live 1000
    PYTHONPATH=. python -m bench.sim_pool_cycles --live 1000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import tempfile
import time

from sandbox.backend import ContainerSpec, PodSandboxSpec, PullPolicy
from sandbox.simulated import SimulatedBackend


async def cycles(n: int, live: int, workloads: int = 50) -> float:
    """CPU seconds (this process) for ``n`` pod cycles, ``live`` pods running at a time."""
    logs = tempfile.mkdtemp(prefix="sim-pool-cycles-", dir="/dev/shm")
    backend = SimulatedBackend(logs)
    await backend.start()
    container = ContainerSpec(name="main", image="busybox:1.36")
    specs = [
        PodSandboxSpec(
            uid=f"u{i}",
            namespace="default",
            name=f"p{i}",
            workload_key=f"default/ReplicaSet/w{i % workloads}#h",
            hostname=f"p{i}",
            annotations={"warmlet.io/sim-run-seconds": "inf"},
        )
        for i in range(n)
    ]
    gc.collect()
    t0 = time.process_time()
    for start in range(0, n, live):
        batch = specs[start : start + live]
        for spec in batch:
            sandbox = await backend.acquire_sandbox(spec)
            await backend.ensure_image(container.image, PullPolicy.IF_NOT_PRESENT)
            cid = await backend.create_container(sandbox, spec, container, 0)
            await backend.start_container(cid)
        for spec in batch:
            await backend.release_sandbox(spec.uid, reusable=True)
    seconds = time.process_time() - t0
    await backend.close()
    shutil.rmtree(logs, ignore_errors=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--live", type=int, default=1000, help="pods running at once (a batch)")
    args = parser.parse_args()
    seconds = asyncio.run(cycles(args.pods, max(1, args.live)))
    print(
        json.dumps(
            {
                "pods": args.pods,
                "live": args.live,
                "cpu_seconds": seconds,
                "us_per_pod": seconds / args.pods * 1e6,
            }
        )
    )


if __name__ == "__main__":
    main()
