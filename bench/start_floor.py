"""The physical floor of a start wave: bare CRI StartContainer of already-created containers.

What no node can beat at an instant, measured with bare CRI calls against the bed's containerd (no
warmlet, no Kubernetes): N pod sandboxes (RunPodSandbox, as warm pool members), one container
CreateContainer'd in each (the variant's image and command: bench/cold_vs_warm.py's ``bare_pod``),
then at one instant every container StartContainer'd by ``concurrency`` workers taking them one by
one — exactly the shape of warmlet's start wave (provider/pods/start_wave.py). Per container:
``ContainerStatus.started_at`` (nanoseconds, the runtime's own) - the instant.

The sweep repeats a smaller wave at several concurrencies in the same sandboxes and reports each
one's StartContainer rate (starts per second from the instant to the last answer): which number of
calls in flight gives this node its best rate, the measurement behind
``pods.start_wave_concurrency``'s CRI default.

Everything it creates is labelled as one bench instance and removed at the end (or on failure).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bench.cold_vs_warm import bare_pod
from bench.common import bounded
from bench.harness import HOLD_COMMAND, remove_instance_sandboxes
from bench.midnight_figures import best_concurrency, started_figures, sweep_points, wave_rate
from testbed.util import kv

if TYPE_CHECKING:
    from proto import cri_pb2 as pb
    from sandbox.backend import ContainerSpec, PodSandboxSpec
    from sandbox.cri.client import CriClient

log = logging.getLogger("bench.start_floor")
JSON = dict[str, Any]

SWEEP = (1, 2, 4, 6, 8, 16, 32)  # StartContainer calls in flight
SETUP_CONCURRENCY = 8  # RunPodSandbox / CreateContainer / teardown calls in flight (not measured)
SOURCE = "CRI ContainerStatus.started_at (ns)"


class FloorPods:
    """N bare sandboxes of one bench instance, reused by every wave."""

    def __init__(self, cri: CriClient, instance: str, image: str, command: Sequence[str]) -> None:
        self.cri = cri
        self.instance = instance
        self.image = image
        self.command = command
        self.logdir = tempfile.mkdtemp(prefix="start-floor-")
        self.pods: list[tuple[str, PodSandboxSpec, pb.PodSandboxConfig, ContainerSpec]] = []
        self.attempt = 0

    async def make(self, n: int) -> None:
        async def one(i: int) -> None:
            spec, sb_cfg, container = bare_pod(
                self.instance, f"floor-{i}", self.image, self.logdir, self.command
            )
            sid = await self.cri.run_pod_sandbox(sb_cfg)
            self.pods.append((sid, spec, sb_cfg, container))

        await bounded([one(i) for i in range(n)], SETUP_CONCURRENCY)

    async def wave(self, n: int, concurrency: int, delay: float = 1.0) -> tuple[JSON, list[float]]:
        """Create one container in each of ``n`` sandboxes, start them all at one instant with
        ``concurrency`` workers, read their start times, then stop and remove them. Returns the
        wave's figures and each container's start - instant (ms)."""
        from sandbox.cri import mapping as m

        self.attempt += 1
        attempt = self.attempt

        async def create(
            sid: str, spec: PodSandboxSpec, sb_cfg: pb.PodSandboxConfig, c: ContainerSpec
        ) -> str:
            cfg = m.container_config(spec, c, attempt, instance=self.instance)
            return await self.cri.create_container(sid, cfg, sb_cfg)

        cids: list[str] = await bounded([create(*p) for p in self.pods[:n]], SETUP_CONCURRENCY)
        instant = time.time() + delay
        await asyncio.sleep(max(0.0, instant - time.time()))
        queue = list(reversed(cids))
        errors = 0

        async def worker() -> None:
            nonlocal errors
            while queue:
                cid = queue.pop()
                try:
                    await self.cri.start_container(cid)
                except Exception:
                    errors += 1

        t0 = time.time()
        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(cids))))))
        t_end = time.time()
        statuses = await bounded([self.cri.container_status(c) for c in cids], SETUP_CONCURRENCY)
        starts = [(s.status.started_at / 1e9, SOURCE) for s in statuses if s.status.started_at]
        await bounded([self._drop(c) for c in cids], SETUP_CONCURRENCY)
        fig = started_figures(starts, instant, len(cids))
        fig.update(
            concurrency=concurrency,
            start_errors=errors,
            late_first_call_ms=round((t0 - instant) * 1000, 2),
            rate_per_s=wave_rate(len(cids), instant, t_end),
        )
        log.info(kv("start floor wave", n=len(cids), concurrency=concurrency, rate=fig["rate_per_s"]))
        return fig, [round((t - instant) * 1000, 2) for t, _ in starts]

    async def _drop(self, cid: str) -> None:
        try:
            await self.cri.stop_container(cid, 2)
            await self.cri.remove_container(cid)
        except Exception as e:  # the sandbox's removal at the end takes it anyway
            log.warning(kv("start floor: container not removed", id=cid[:12], error=repr(e)))


async def measure_start_floor(
    cri_endpoint: str,
    image: str,
    n: int,
    concurrency: int,
    sweep: Sequence[int] = SWEEP,
    sweep_pods: int = 60,
    command: Sequence[str] = HOLD_COMMAND,
) -> JSON:
    """The floor for ``n`` containers at ``concurrency`` (the start wave's), then the rate sweep
    (``sweep_pods`` containers per concurrency). Cleans up everything it created."""
    from sandbox.cri.client import CriClient

    instance = f"bench-start-floor-{uuid.uuid4().hex[:6]}"
    cri = CriClient(cri_endpoint)
    pods: FloorPods | None = None
    try:
        if await cri.image_status(image) is None:
            await cri.pull_image(image)
        pods = FloorPods(cri, instance, image, command)
        t0 = time.monotonic()
        await pods.make(max(n, sweep_pods))
        setup_s = round(time.monotonic() - t0, 1)
        floor, samples_ms = await pods.wave(n, concurrency)
        per_point = min(n, sweep_pods)
        points = [(await pods.wave(per_point, c))[0] for c in sweep_points(sweep, per_point)]
    finally:
        removed = await remove_instance_sandboxes(cri_endpoint, instance)
        await cri.close()
        if pods is not None:
            shutil.rmtree(pods.logdir, ignore_errors=True)
        log.info(kv("start floor cleaned up", sandboxes=removed))
    rates = {p["concurrency"]: p["rate_per_s"] for p in points}
    return {
        **floor,
        "what": (
            "bare CRI StartContainer of N containers already created in N warm sandboxes, all at one "
            "instant, `concurrency` calls in flight (no warmlet, no Kubernetes)"
        ),
        "source": SOURCE,
        "image": image,
        "sandboxes_setup_seconds": setup_s,
        "sweep": {
            "pods_per_point": min(n, sweep_pods),
            "points": points,
            "rate_per_s_by_concurrency": rates,
            "best_concurrency": best_concurrency(rates),
        },
        "started_ms": samples_ms,
    }
