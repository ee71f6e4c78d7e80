"""Upkeep of the warm pool: prewarming, trimming to the caps, idle health, the maintenance loop.

Executes the pure plans of ``pool_policy`` (``plan_topup``, ``plan_trim``) on a ``WarmPool``. The
maintenance loop sleeps on the pool's clock, so tests drive it with a ``FakeClock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from typing import Protocol

from common.clock import Clock
from sandbox import metrics
from sandbox.backend import BackendError, PodSandboxSpec
from sandbox.pool_index import PoolIndex
from sandbox.pool_policy import (
    EvictReason,
    IdleSandbox,
    PoolDefaults,
    WorkloadPolicy,
    over_global_cap,
    plan_topup,
    plan_trim,
    spec_cost_bytes,
)
from sandbox.pool_state import SandboxDriver, SandboxRecord

log = logging.getLogger("warmlet.pool")

MAX_MAINTENANCE_BACKOFF = 60.0


class UpkeptPool(Protocol):
    """What upkeep needs of the pool it keeps (``WarmPool``): its state, and the two operations
    that must stay the pool's own (learning a workload's policy, destroying a sandbox)."""

    driver: SandboxDriver
    defaults: PoolDefaults
    clock: Clock
    index: PoolIndex
    records: dict[str, SandboxRecord]
    templates: dict[str, PodSandboxSpec]
    policies: dict[str, WorkloadPolicy]

    def learn(self, spec: PodSandboxSpec) -> WorkloadPolicy: ...

    def policy(self, key: str) -> WorkloadPolicy: ...

    def idle(self, key: str | None = None, namespace: str | None = None) -> list[SandboxRecord]: ...

    def save(self) -> None: ...

    async def destroy(self, rec: SandboxRecord, reason: EvictReason) -> None: ...


class PoolUpkeep:
    """Creates idle sandboxes ahead of pods, evicts what the policy says, runs the maintenance loop."""

    def __init__(self, pool: UpkeptPool) -> None:
        self.pool = pool
        self._creating: dict[str, int] = {}  # workload key -> idle sandboxes being created
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ prewarm / top-up

    def creating(self, key: str) -> int:
        return self._creating.get(key, 0)

    async def prewarm(self, spec: PodSandboxSpec, count: int) -> int:
        """Have ``count`` idle sandboxes ready for the spec's workload (capped by its max and the caps).

        Also pulls the workload's images. Returns how many idle sandboxes of the key are ready after
        the call (idempotent: a second call with the same count creates nothing).
        """
        pool = self.pool
        pol = pool.learn(spec)
        await pool.driver.ensure_images(spec)
        if not pol.enabled or count <= 0:
            return len(pool.idle(spec.workload_key, spec.namespace))
        await self.create_idle({spec.workload_key: min(count, pol.max)}, trigger="prewarm")
        return len(pool.idle(spec.workload_key, spec.namespace))

    async def create_idle(self, wanted: dict[str, int], trigger: str) -> None:
        """Create idle sandboxes so each key has ``wanted`` idle, within the global caps."""
        index = self.pool.index
        templates = self.pool.templates
        plan = plan_topup(
            wanted,
            index.idle_counts(),
            dict(self._creating),
            idle_total=index.idle_total,
            idle_bytes=index.idle_bytes,
            cost_bytes={k: spec_cost_bytes(templates[k]) for k in wanted if k in templates},
            defaults=self.pool.defaults,
        )
        jobs = [self._create_one(key, trigger) for key, n in plan.items() for _ in range(n)]
        if jobs:
            await asyncio.gather(*jobs)

    async def _create_one(self, key: str, trigger: str) -> None:
        pool = self.pool
        tpl = pool.templates.get(key)
        if tpl is None:
            return
        self._creating[key] = self._creating.get(key, 0) + 1
        try:
            uid = f"warm-{random.getrandbits(64):016x}"
            spec = dataclasses.replace(tpl, uid=uid, name=uid)
            try:
                sid, ip = await pool.driver.create_sandbox(spec, prewarmed=True)
            except BackendError as e:
                metrics.POOL_PREWARM.labels(trigger, "error").inc()
                log.warning("prewarm create failed workload=%s error=%s", metrics.workload_label(key), e)
                return
            now = pool.clock.time()
            pool.index.add(
                SandboxRecord(
                    sandbox_id=sid,
                    key=key,
                    namespace=tpl.namespace,
                    state="idle",
                    pod_ip=ip,
                    created_at=now,
                    idle_since=now,
                    cost_bytes=spec_cost_bytes(tpl),
                )
            )
            metrics.POOL_PREWARM.labels(trigger, "created").inc()
            pool.index.publish(key)
            pool.save()
        finally:
            self._creating[key] -= 1
            if not self._creating[key]:
                del self._creating[key]

    # ------------------------------------------------------------------ eviction

    async def enforce_caps(self, key: str) -> None:
        """After a sandbox of ``key`` went idle: evict the least recently idled sandboxes while the
        idle pool exceeds a global cap (O(evicted), not O(pool)); a key over its max gets a full
        trim. Idle TTLs are enforced by the maintenance pass."""
        pool = self.pool
        index = pool.index
        if index.idle_count(key) > pool.policy(key).max:
            await self.trim()
            return
        evicted = False
        while (reason := over_global_cap(index.idle_total, index.idle_bytes, pool.defaults)) is not None:
            rec = index.oldest_idle()
            if rec is None:
                break
            index.set_state(rec, "releasing")  # claimed: no acquire takes it while destroyed
            await pool.destroy(rec, reason)
            evicted = True
        if evicted:
            pool.save()

    async def trim(self) -> None:
        """Evict idle sandboxes by TTL, per-workload max and the global caps."""
        pool = self.pool
        idle = [IdleSandbox(r.sandbox_id, r.key, r.idle_since, r.cost_bytes) for r in pool.idle()]
        plan = plan_trim(idle, pool.policies, pool.defaults, pool.clock.time())
        for sid, reason in plan:
            rec = pool.records.get(sid)
            if rec is None or rec.state != "idle":
                continue
            pool.index.set_state(rec, "releasing")  # claimed: no acquire takes it while destroyed
            await pool.destroy(rec, reason)
        if plan:
            pool.save()

    async def check_idle_health(self) -> None:
        """Destroy idle sandboxes whose pause died (a warm start there would fail)."""
        pool = self.pool
        for rec in pool.idle():
            try:
                ready = await pool.driver.sandbox_ready(rec.sandbox_id)
            except BackendError:
                continue
            if not ready and rec.state == "idle":
                pool.index.set_state(rec, "releasing")
                await pool.destroy(rec, EvictReason.UNHEALTHY)
                pool.save()

    # ------------------------------------------------------------------ maintenance

    async def maintain(self) -> None:
        """One maintenance pass: health of idle members, trim, then top up each workload to its min."""
        pool = self.pool
        await self.check_idle_health()
        await self.trim()
        wanted = {
            k: p.min for k, p in pool.policies.items() if p.enabled and p.min > 0 and k in pool.templates
        }
        if wanted:
            await self.create_idle(wanted, trigger="min")

    def start(self, interval: float) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(interval), name="pool-maint")

    @property
    def running(self) -> bool:
        return self._task is not None

    async def _loop(self, interval: float) -> None:
        """A maintenance pass every ``interval`` seconds on the pool's clock; failures back off."""
        delay = interval
        while True:
            await self.pool.clock.sleep(delay)
            try:
                await self.maintain()
                delay = interval
            except Exception:
                delay = min(max(delay * 2, 1.0), MAX_MAINTENANCE_BACKOFF)
                log.exception("pool maintenance failed retry_in=%.1f", delay)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
