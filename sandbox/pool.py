"""The warm pool: which sandbox belongs to which pod, which are idle for which workload, and upkeep.

Why a separate layer over the runtime: reuse is a security boundary (a sandbox is never handed to
another workload key or namespace) and a resource problem (idle sandboxes must be trimmed, caps
enforced, minimums kept), independent of how sandboxes are made. The pool executes the pure plans of
``pool_policy`` and delegates the runtime work (create/scrub/destroy) to a ``SandboxDriver``
(the CRI backend, or the simulated one), so it is testable with a fake driver.

Records, the driver protocol and the state file are in ``pool_state``; the indexes that keep every
acquire/release O(1) in ``pool_index``; prewarming, trimming and the maintenance loop in
``pool_upkeep``. Time comes from an injected ``Clock`` (wall time: records are persisted).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from common.clock import SYSTEM, Clock
from sandbox import metrics
from sandbox.backend import BackendError, PodSandboxSpec
from sandbox.pool_index import PoolIndex
from sandbox.pool_policy import (
    ConcurrencyTracker,
    EvictReason,
    PoolDefaults,
    WorkloadPolicy,
    decide_release,
    policy_for,
    spec_cost_bytes,
)
from sandbox.pool_state import STATE_VERSION, PoolStateFile, SandboxDriver, SandboxRecord, SandboxState
from sandbox.pool_upkeep import PoolUpkeep

__all__ = ["STATE_VERSION", "SandboxDriver", "SandboxRecord", "SandboxState", "WarmPool", "spec_cost_bytes"]

log = logging.getLogger("warmlet.pool")

# Counter series looked up once per label (every acquire counts a hit or a miss); bounded.
_hits = functools.lru_cache(maxsize=1024)(metrics.POOL_HITS.labels)
_misses = functools.lru_cache(maxsize=1024)(metrics.POOL_MISSES.labels)
_evictions = functools.lru_cache(maxsize=32)(metrics.POOL_EVICTIONS.labels)


class WarmPool:
    """Sandbox ownership + warm reuse per workload key. All methods run on one event loop."""

    def __init__(
        self,
        driver: SandboxDriver,
        defaults: PoolDefaults,
        state_file: Path | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.driver = driver
        self.defaults = defaults
        self.clock = clock
        self.index = PoolIndex()
        self.records = self.index.records  # sandbox_id -> record (read-only outside the pool)
        self.by_pod = self.index.by_pod  # pod uid -> sandbox_id
        self.templates: dict[str, PodSandboxSpec] = {}  # workload key -> last spec seen
        self.policies: dict[str, WorkloadPolicy] = {}
        self.tracker = ConcurrencyTracker(window_seconds=defaults.concurrency_window_seconds)
        self._state = PoolStateFile(state_file) if state_file is not None else None
        self._pod_locks: dict[str, asyncio.Lock] = {}
        # pod uid -> JSON text of the final container states of a finished pod whose sandbox was
        # released but whose terminal status may not be in the API yet. Persisted, so a warmlet
        # killed in between never runs that pod again (its containers are gone after the scrub).
        self.finished: dict[str, str] = {}
        self.upkeep = PoolUpkeep(self)

    @property
    def state_file(self) -> Path | None:
        return self._state.path if self._state is not None else None

    # ------------------------------------------------------------------ bookkeeping

    def policy(self, key: str) -> WorkloadPolicy:
        return self.policies.get(key) or policy_for(self.defaults)

    def learn(self, spec: PodSandboxSpec) -> WorkloadPolicy:
        """Remember the workload's latest spec (template for top-ups) and its effective policy."""
        key = spec.workload_key
        prev = self.templates.get(key)
        self.templates[key] = spec
        pol = self.policies.get(key)
        if pol is None or prev is None or prev.annotations != spec.annotations:
            pol = self.policies[key] = policy_for(self.defaults, spec.annotations)
        return pol

    def idle(self, key: str | None = None, namespace: str | None = None) -> list[SandboxRecord]:
        return self.index.idle(key, namespace)

    def in_use_count(self, key: str) -> int:
        return self.index.in_use_count(key)

    def get_by_pod(self, pod_uid: str) -> SandboxRecord | None:
        sid = self.by_pod.get(pod_uid)
        return self.records.get(sid) if sid else None

    def pod_lock(self, pod_uid: str) -> asyncio.Lock:
        lock = self._pod_locks.get(pod_uid)
        if lock is None:
            lock = self._pod_locks[pod_uid] = asyncio.Lock()
        return lock

    def track(self, key: str, learn: bool = True) -> None:
        """Record the key's in-use level (learned concurrency, unless the key is single-use) and
        publish its gauges."""
        if learn:
            self.tracker.record(key, self.index.in_use_count(key), self.clock.time())
        self.index.publish(key)
        self._forget_if_unused(key)

    def _forget_if_unused(self, key: str) -> None:
        """Forget a workload with no sandbox left and no min to keep (a bare pod, a finished Job):
        its template, policy and concurrency history would otherwise stay for ever, one per pod."""
        index = self.index
        if (
            index.idle_count(key)
            or index.in_use_count(key)
            or self.upkeep.creating(key)
            or self.policy(key).min > 0
        ):
            return
        self.templates.pop(key, None)
        self.policies.pop(key, None)
        self.tracker.forget(key)

    # ------------------------------------------------------------------ persistence

    def save(self) -> None:
        """Write the state file atomically (tmp + rename): a crash never leaves half a file."""
        if self._state is not None:
            self._state.save(list(self.records.values()), self.templates, self.finished)

    def load(self) -> tuple[list[SandboxRecord], dict[str, PodSandboxSpec]]:
        """Read the state file (missing or corrupt: empty; adoption falls back to labels)."""
        loaded = self._state.load() if self._state is not None else None
        if loaded is None:
            return [], {}
        recs, tpls, self.finished = loaded
        return recs, tpls

    def adopt(self, records: Iterable[SandboxRecord], templates: dict[str, PodSandboxSpec]) -> None:
        """Install records rebuilt by the backend at start (running pods keep their sandbox)."""
        for k, spec in templates.items():
            self.templates[k] = spec
            self.policies[k] = policy_for(self.defaults, spec.annotations)
        for r in records:
            tpl = self.templates.get(r.key)
            if tpl is not None:  # a record of an older state file has no cost: its workload's
                r.cost_bytes = spec_cost_bytes(tpl)
            self.index.add(r)
            if r.pod_uid and r.state == "in_use":
                self.by_pod[r.pod_uid] = r.sandbox_id
        for key in self.index.workload_keys():
            self.track(key)
        self.save()

    # ------------------------------------------------------------------ finished pods

    def keep_finished(self, pod_uid: str, data: dict[str, Any]) -> None:
        """Persist a finished pod's final states (saved with the next ``save``, e.g. by release)."""
        self.finished[pod_uid] = json.dumps(data)

    def finished_of(self, pod_uid: str) -> dict[str, Any] | None:
        text = self.finished.get(pod_uid)
        return json.loads(text) if text is not None else None

    def drop_finished(self, pod_uid: str) -> None:
        """The pod's terminal status is in the API (or the pod is gone): no need to persist it
        (not saved now: an extra entry in the file is harmless, the next save drops it)."""
        self.finished.pop(pod_uid, None)

    # ------------------------------------------------------------------ acquire / release

    async def acquire(self, spec: PodSandboxSpec) -> SandboxRecord:
        """The pod's sandbox: its own (idempotent), a warm one of the same key+namespace, or a new one."""
        async with self.pod_lock(spec.uid):
            existing = self.get_by_pod(spec.uid)
            if existing is not None:
                return existing
            pol = self.policy(spec.workload_key) if spec.single_use else self.learn(spec)
            rec = self._take_idle(spec) if pol.enabled and not spec.single_use else None
            warm = rec is not None
            label = metrics.workload_label(spec.workload_key)
            if rec is not None:
                _hits(label).inc()
                log.info(
                    "pool hit pod=%s/%s uid=%s sandbox=%s workload=%s",
                    spec.namespace,
                    spec.name,
                    spec.uid,
                    rec.sandbox_id[:12],
                    label,
                )
            else:
                _misses(label).inc()
                sid, ip = await self.driver.create_sandbox(spec, prewarmed=False)
                rec = SandboxRecord(
                    sandbox_id=sid,
                    key=spec.workload_key,
                    namespace=spec.namespace,
                    state="in_use",
                    pod_ip=ip,
                    created_at=self.clock.time(),
                )
                self.index.add(rec)
            rec.pod_uid = spec.uid
            rec.pod_name = spec.name
            rec.from_pool = warm
            rec.uses += 1
            rec.idle_since = 0.0
            rec.scratch_dirs = list(spec.scratch_dirs)
            rec.cost_bytes = spec_cost_bytes(spec)
            rec.single_use = spec.single_use
            self.by_pod[spec.uid] = rec.sandbox_id
            self.track(spec.workload_key, learn=not spec.single_use)
            self.save()
            return rec

    def _take_idle(self, spec: PodSandboxSpec) -> SandboxRecord | None:
        """Most recently idled sandbox of exactly this key AND namespace (never across them)."""
        cands = self.index.idle(spec.workload_key, spec.namespace)
        if not cands:
            return None
        rec = max(cands, key=lambda r: (r.idle_since, r.sandbox_id))
        self.index.set_state(rec, "in_use")  # claimed synchronously: no other acquire can take it
        return rec

    def _decide(self, rec: SandboxRecord, pol: WorkloadPolicy, reusable: bool) -> EvictReason | None:
        return decide_release(
            pol,
            reusable,
            idle_of_key=self.index.idle_count(rec.key),
            peak=self.tracker.peak(rec.key, self.clock.time()),
            cost_bytes=rec.cost_bytes,
            defaults=self.defaults,
        )

    async def release(self, pod_uid: str, reusable: bool) -> None:
        """Scrub the pod's sandbox and keep it idle for its workload, or destroy it."""
        async with self.pod_lock(pod_uid):
            rec = self.get_by_pod(pod_uid)
            if rec is None:
                return
            self.index.set_state(rec, "releasing")
            self.by_pod.pop(pod_uid, None)
            self.save()
            pol = self.policy(rec.key)
            reason = self._decide(rec, pol, reusable)
            if reason is None:
                try:
                    ok = await self.driver.scrub_sandbox(rec)
                except BackendError as e:
                    log.warning("sandbox scrub failed sandbox=%s error=%s", rec.sandbox_id[:12], e)
                    ok = False
                # Re-check: others may have been released into the pool while we scrubbed.
                reason = self._decide(rec, pol, True) if ok else EvictReason.UNHEALTHY
            if reason is None:
                rec.pod_uid = ""
                rec.pod_name = ""
                rec.scratch_dirs = []
                rec.idle_since = self.clock.time()
                self.index.set_state(rec, "idle")
                log.info("sandbox returned to pool sandbox=%s pod_uid=%s", rec.sandbox_id[:12], pod_uid)
            else:
                await self.destroy(rec, reason)
            self.track(rec.key, learn=not rec.single_use)
            self._pod_locks.pop(pod_uid, None)
            self.save()
        if reason is None:
            await self.upkeep.enforce_caps(rec.key)  # the global caps may now be exceeded

    async def destroy(self, rec: SandboxRecord, reason: EvictReason) -> None:
        """Drop the record and destroy its sandbox (a failure of the runtime is logged)."""
        _evictions(reason.value).inc()
        log.info(
            "sandbox destroyed sandbox=%s workload=%s reason=%s",
            rec.sandbox_id[:12],
            metrics.workload_label(rec.key),
            reason,
        )
        self.index.remove(rec)
        if rec.pod_uid and self.by_pod.get(rec.pod_uid) == rec.sandbox_id:
            self.by_pod.pop(rec.pod_uid, None)
        try:
            await self.driver.destroy_sandbox(rec.sandbox_id)
        except BackendError as e:
            log.warning("sandbox destroy failed sandbox=%s error=%s", rec.sandbox_id[:12], e)
        self.index.publish(rec.key)
        self._forget_if_unused(rec.key)

    async def forget_pod(self, pod_uid: str) -> SandboxRecord | None:
        """Drop the pod's record without scrubbing (the backend destroys its sandbox)."""
        rec = self.get_by_pod(pod_uid)
        if rec is None:
            return None
        self.by_pod.pop(pod_uid, None)
        self._pod_locks.pop(pod_uid, None)
        self.index.remove(rec)
        self.track(rec.key, learn=not rec.single_use)
        self.save()
        return rec

    # ------------------------------------------------------------------ prewarm / upkeep

    async def prewarm(self, spec: PodSandboxSpec, count: int) -> int:
        """Have ``count`` idle sandboxes ready for the spec's workload (see ``PoolUpkeep.prewarm``)."""
        return await self.upkeep.prewarm(spec, count)

    async def trim(self) -> None:
        await self.upkeep.trim()

    async def check_idle_health(self) -> None:
        await self.upkeep.check_idle_health()

    async def maintain(self) -> None:
        await self.upkeep.maintain()

    def start_maintenance(self, interval: float) -> None:
        self.upkeep.start(interval)

    async def stop_maintenance(self) -> None:
        await self.upkeep.stop()
