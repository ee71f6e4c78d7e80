"""Garbage collection of what this warmlet owns in the runtime and on disk.

- :class:`PodGC` (``Backend.reconcile``): sandboxes of pods that are gone are released, sandboxes
  and containers nobody owns are removed, and log directories of unknown pods deleted.
- :class:`OrphanSweeper`: every 15 s, sandboxes of this instance that warmlet neither tracks nor
  is creating (a RunPodSandbox whose answer a runtime restart lost) are destroyed.
- :class:`ImageGC`: every minute, images beyond the budget that nothing needs are removed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from common.retry import doubling, periodic
from sandbox import metrics
from sandbox.cri import host
from sandbox.cri import mapping as m
from sandbox.cri.context import CriContext
from sandbox.cri.finished import FinishedPods
from sandbox.cri.sandboxes import CriSandboxes
from sandbox.cri.scrub import ContainerReaper
from sandbox.images import ImageCache
from sandbox.pool import WarmPool
from sandbox.pool_policy import EvictReason

log = logging.getLogger("warmlet.cri")

ORPHAN_SWEEP_SECONDS = 15.0
ORPHAN_SWEEP_MAX_DELAY_SECONDS = 300.0
ORPHAN_MIN_AGE_SECONDS = 20.0  # younger sandboxes may be a RunPodSandbox whose answer is on its way
IMAGE_GC_MAX_DELAY_SECONDS = 600.0

Release = Callable[[str, bool], Awaitable[None]]
"""``Backend.release_sandbox`` (pod uid, reusable)."""


class PodGC:
    """``Reconciler.reconcile`` over CRI (see module doc)."""

    def __init__(
        self,
        ctx: CriContext,
        pool: WarmPool,
        sandboxes: CriSandboxes,
        reaper: ContainerReaper,
        finished: FinishedPods,
        release: Release,
    ) -> None:
        self.ctx = ctx
        self.pool = pool
        self.sandboxes = sandboxes
        self.reaper = reaper
        self.finished = finished
        self.release = release

    async def reconcile(self, live_pod_uids: set[str]) -> None:
        """Release sandboxes of vanished pods; remove unowned containers/sandboxes and stale log dirs."""
        for rec in list(self.pool.records.values()):
            if rec.state == "in_use" and rec.pod_uid and rec.pod_uid not in live_pod_uids:
                log.info(
                    "reconcile: releasing sandbox of gone pod pod_uid=%s sandbox=%s",
                    rec.pod_uid,
                    rec.sandbox_id[:12],
                )
                await self.release(rec.pod_uid, True)
        known = set(self.pool.records)
        client = self.ctx.client
        for sb in await client.list_pod_sandbox(labels=self.ctx.selector):
            if sb.id not in known:
                log.info("reconcile: destroying unowned sandbox=%s", sb.id[:12])
                metrics.POOL_EVICTIONS.labels(EvictReason.ORPHAN.value).inc()
                await self.sandboxes.destroy_sandbox(sb.id)
        current = {r.pod_uid for r in self.pool.records.values() if r.pod_uid}
        for c in await client.list_containers(labels=self.ctx.selector):
            uid = m.pod_uid_of(c.labels)
            if c.pod_sandbox_id not in known or (uid not in current and uid not in live_pod_uids):
                await self.reaper.kill_and_remove(c.id)
        keep = live_pod_uids | current
        self.finished.drop_all_but(live_pod_uids)
        await asyncio.to_thread(host.remove_stale_log_dirs, self.ctx.log_dir, keep)


class OrphanSweeper:
    """Destroys this instance's sandboxes that warmlet does not track and is not creating."""

    def __init__(self, ctx: CriContext, pool: WarmPool, sandboxes: CriSandboxes) -> None:
        self.ctx = ctx
        self.pool = pool
        self.sandboxes = sandboxes

    async def run(self) -> None:
        backoff = doubling(ORPHAN_SWEEP_SECONDS, ORPHAN_SWEEP_MAX_DELAY_SECONDS)

        def failed(e: Exception, failures: int) -> None:
            # runtime away: the PLEG reports it; just slow down
            log.warning("orphan sweep failed retry_in=%.0f error=%s", backoff.delay(failures), e)

        await periodic(
            self.sweep,
            ORPHAN_SWEEP_SECONDS,
            wait_first=True,
            backoff=backoff,
            on_error=failed,
            clock=self.ctx.clock,
        )

    async def sweep(self, min_age: float = ORPHAN_MIN_AGE_SECONDS) -> list[str]:
        """Why: a RunPodSandbox cut short by a runtime restart may still have made the sandbox while
        its answer was lost; warmlet retries under another attempt, and without this sweep the
        first one would stay until warmlet's next start (the start-up reconcile)."""
        now = self.ctx.clock.time()
        swept: list[str] = []
        for sb in await self.ctx.client.list_pod_sandbox(labels=self.ctx.selector):
            if sb.id in self.pool.records or now - sb.created_at / 1e9 < min_age:
                continue
            if self.sandboxes.creating(m.pod_uid_of(sb.labels)):
                continue
            log.warning(
                "destroying orphan sandbox=%s pod=%s/%s", sb.id[:12], sb.metadata.namespace, sb.metadata.name
            )
            metrics.POOL_EVICTIONS.labels(EvictReason.ORPHAN.value).inc()
            await self.sandboxes.destroy_sandbox(sb.id)
            swept.append(sb.id)
        return swept


class ImageGC:
    """Removes images beyond the cache's budget; keeps those of containers, of pooled workloads'
    templates and the pause image."""

    def __init__(self, ctx: CriContext, pool: WarmPool, images: ImageCache, interval: float) -> None:
        self.ctx = ctx
        self.pool = pool
        self.images = images
        self.interval = interval

    async def run(self) -> None:
        backoff = doubling(self.interval, IMAGE_GC_MAX_DELAY_SECONDS)

        def failed(e: Exception, failures: int) -> None:
            log.warning("image gc failed retry_in=%.0f error=%s", backoff.delay(failures), e)

        await periodic(
            self.collect,
            self.interval,
            wait_first=True,
            backoff=backoff,
            on_error=failed,
            clock=self.ctx.clock,
        )

    async def collect(self) -> list[str]:
        """One pass; returns the removed image ids."""
        in_use: set[str] = set()
        for c in await self.ctx.client.list_containers():
            in_use.update(x for x in (c.image.image, c.image_ref, c.image.user_specified_image) if x)
        pooled = {r.key for r in self.pool.records.values()}
        for key, spec in self.pool.templates.items():
            if key in pooled or self.pool.policy(key).min > 0:
                in_use.update(spec.images)
        pause = self.ctx.runtime.sandbox_image
        if pause:
            in_use.add(pause)
        return await self.images.garbage_collect(in_use)
