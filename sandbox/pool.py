"""The warm pool: which sandbox belongs to which pod, which are idle for which workload, and upkeep.

Why a separate layer over the runtime: reuse is a security boundary (a sandbox is never handed to
another workload key or namespace) and a resource problem (idle sandboxes must be trimmed, caps
enforced, minimums kept), independent of how sandboxes are made. The pool executes the pure plans of
``pool_policy`` and delegates the runtime work (create/scrub/destroy) to a ``SandboxDriver``
(the CRI backend), so it is testable with a fake driver.

CRI fixes a sandbox's metadata (name/namespace/uid) at RunPodSandbox, so after reuse the runtime
still shows the first pod. The truth about "which pod uses which sandbox" lives here and is
persisted in a small JSON state file (and recoverable from container labels at adoption).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from sandbox import metrics
from sandbox.backend import BackendError, PodSandboxSpec
from sandbox.cri.mapping import workload_key_label
from sandbox.pool_policy import (
    ConcurrencyTracker,
    EvictReason,
    IdleSandbox,
    PoolDefaults,
    WorkloadPolicy,
    decide_release,
    plan_topup,
    plan_trim,
    policy_for,
    sandbox_cost_bytes,
)

log = logging.getLogger("warmlet.pool")

STATE_VERSION = 1

SandboxState = Literal["idle", "in_use", "releasing", "creating"]


@dataclass
class SandboxRecord:
    """One sandbox warmlet owns (in use by a pod, or idle in its workload's pool)."""

    sandbox_id: str
    key: str
    namespace: str
    state: SandboxState
    pod_uid: str = ""  # current pod ('' while idle)
    pod_name: str = ""
    pod_ip: str = ""
    created_at: float = 0.0
    idle_since: float = 0.0
    from_pool: bool = False  # the current pod got it warm
    uses: int = 0  # how many pods have used it
    scratch_dirs: list[str] = field(default_factory=list)  # current pod's dirs to wipe on reuse

    def to_json(self) -> dict[str, Any]:
        # Same dict as dataclasses.asdict (flat fields + a list of str), without its deep copy:
        # saved on every acquire/release, over every record (hot in a burst).
        d = dict(self.__dict__)
        d["scratch_dirs"] = list(self.scratch_dirs)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SandboxRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


class SandboxDriver(Protocol):
    """Runtime operations the pool needs (implemented by the CRI backend)."""

    async def create_sandbox(self, spec: PodSandboxSpec, prewarmed: bool) -> tuple[str, str]:
        """Run a new sandbox for ``spec``; return (sandbox_id, pod_ip)."""

    async def scrub_sandbox(self, record: SandboxRecord) -> bool:
        """Remove every container and leftover process, wipe scratch dirs; False if unusable."""

    async def destroy_sandbox(self, sandbox_id: str) -> None:
        """Stop and remove the sandbox and its containers (idempotent)."""

    async def sandbox_ready(self, sandbox_id: str) -> bool: ...

    async def ensure_images(self, spec: PodSandboxSpec) -> None:
        """Make the workload's images present (IfNotPresent)."""


class WarmPool:
    """Sandbox ownership + warm reuse per workload key. All methods run on one event loop."""

    def __init__(
        self,
        driver: SandboxDriver,
        defaults: PoolDefaults,
        state_file: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.driver = driver
        self.defaults = defaults
        self.state_file = state_file
        self.clock = clock
        self.records: dict[str, SandboxRecord] = {}  # sandbox_id -> record
        self.by_pod: dict[str, str] = {}  # pod uid -> sandbox_id
        self.templates: dict[str, PodSandboxSpec] = {}  # workload key -> last spec seen
        self.policies: dict[str, WorkloadPolicy] = {}
        self.tracker = ConcurrencyTracker(window_seconds=defaults.concurrency_window_seconds)
        self._creating: dict[str, int] = {}
        # workload key -> (template object, its JSON text): save() encodes each template once
        self._template_json: dict[str, tuple[PodSandboxSpec, str]] = {}
        self._pod_locks: dict[str, asyncio.Lock] = {}
        self._maint_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # pod uid -> JSON text of the final container states of a finished pod whose sandbox was
        # released but whose terminal status may not be in the API yet. Persisted, so a warmlet
        # killed in between never runs that pod again (its containers are gone after the scrub).
        self.finished: dict[str, str] = {}

    # ------------------------------------------------------------------ bookkeeping

    def policy(self, key: str) -> WorkloadPolicy:
        return self.policies.get(key) or policy_for(self.defaults)

    def _learn(self, spec: PodSandboxSpec) -> WorkloadPolicy:
        """Remember the workload's latest spec (template for top-ups) and its effective policy."""
        self.templates[spec.workload_key] = spec
        pol = policy_for(self.defaults, spec.annotations)
        self.policies[spec.workload_key] = pol
        return pol

    def idle(self, key: str | None = None, namespace: str | None = None) -> list[SandboxRecord]:
        return [
            r
            for r in self.records.values()
            if r.state == "idle"
            and (key is None or r.key == key)
            and (namespace is None or r.namespace == namespace)
        ]

    def in_use_count(self, key: str) -> int:
        return sum(1 for r in self.records.values() if r.key == key and r.state in ("in_use", "releasing"))

    def get_by_pod(self, pod_uid: str) -> SandboxRecord | None:
        sid = self.by_pod.get(pod_uid)
        return self.records.get(sid) if sid else None

    def pod_lock(self, pod_uid: str) -> asyncio.Lock:
        lock = self._pod_locks.get(pod_uid)
        if lock is None:
            lock = self._pod_locks[pod_uid] = asyncio.Lock()
        return lock

    def _update_gauges(self, keys: Iterable[str]) -> None:
        for label in {metrics.workload_label(k) for k in keys}:
            idle = busy = 0
            for r in self.records.values():
                if metrics.workload_label(r.key) == label:
                    idle += r.state == "idle"
                    busy += r.state in ("in_use", "releasing")
            if idle or busy:
                metrics.POOL_SANDBOXES.labels(label, "idle").set(idle)
                metrics.POOL_SANDBOXES.labels(label, "in_use").set(busy)
            else:  # the workload has no sandbox left: drop its series
                for state in ("idle", "in_use"):
                    with contextlib.suppress(KeyError):
                        metrics.POOL_SANDBOXES.remove(label, state)

    def _track(self, key: str) -> None:
        self.tracker.record(key, self.in_use_count(key), self.clock())
        self._update_gauges([key])

    # ------------------------------------------------------------------ persistence

    def save(self) -> None:
        """Write the state file atomically (tmp + rename): a crash never leaves half a file."""
        if self.state_file is None:
            return
        sandboxes = [r.to_json() for r in self.records.values() if r.state != "creating"]
        # The text of json.dumps({"version", "sandboxes", "templates"}), built from each template's
        # cached encoding: saved on every acquire/release, this was ~25 ms with 200 workloads.
        templates = ", ".join(
            f"{json.dumps(k)}: {self._template_text(k, v)}" for k, v in self.templates.items()
        )
        finished = ", ".join(f"{json.dumps(k)}: {v}" for k, v in self.finished.items())
        text = (
            f'{{"version": {json.dumps(STATE_VERSION)}, "sandboxes": {json.dumps(sandboxes)}, '
            f'"templates": {{{templates}}}, "finished": {{{finished}}}}}'
        )
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_file.parent, prefix=".pool-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, self.state_file)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _template_text(self, key: str, spec: PodSandboxSpec) -> str:
        """JSON of a template, encoded once per template object (templates are replaced, not mutated)."""
        cached = self._template_json.get(key)
        if cached is not None and cached[0] is spec:
            return cached[1]
        text = json.dumps(spec.model_dump(mode="json"))
        self._template_json[key] = (spec, text)
        return text

    def load(self) -> tuple[list[SandboxRecord], dict[str, PodSandboxSpec]]:
        """Read the state file (missing or corrupt: empty; adoption falls back to labels)."""
        if self.state_file is None or not self.state_file.exists():
            return [], {}
        try:
            data = json.loads(self.state_file.read_text())
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"unknown state version {data.get('version')}")
            recs = [SandboxRecord.from_json(d) for d in data.get("sandboxes", [])]
            tpls = {k: PodSandboxSpec.model_validate(v) for k, v in data.get("templates", {}).items()}
            self.finished = {str(k): json.dumps(v) for k, v in (data.get("finished") or {}).items()}
            return recs, tpls
        except (OSError, ValueError, TypeError) as e:
            log.warning(
                "pool state unreadable, adopting from labels only path=%s error=%s", self.state_file, e
            )
            return [], {}

    def adopt(self, records: Iterable[SandboxRecord], templates: dict[str, PodSandboxSpec]) -> None:
        """Install records rebuilt by the backend at start (running pods keep their sandbox)."""
        for k, spec in templates.items():
            self.templates[k] = spec
            self.policies[k] = policy_for(self.defaults, spec.annotations)
        for r in records:
            self.records[r.sandbox_id] = r
            if r.pod_uid and r.state == "in_use":
                self.by_pod[r.pod_uid] = r.sandbox_id
        for key in {r.key for r in self.records.values()}:
            self._track(key)
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
            pol = self._learn(spec)
            rec = self._take_idle(spec) if pol.enabled else None
            warm = rec is not None
            label = workload_key_label(spec.workload_key)[:12]
            if rec is not None:
                metrics.POOL_HITS.labels(metrics.workload_label(spec.workload_key)).inc()
                log.info(
                    "pool hit pod=%s/%s uid=%s sandbox=%s key=%s",
                    spec.namespace,
                    spec.name,
                    spec.uid,
                    rec.sandbox_id[:12],
                    label,
                )
            else:
                metrics.POOL_MISSES.labels(metrics.workload_label(spec.workload_key)).inc()
                sid, ip = await self.driver.create_sandbox(spec, prewarmed=False)
                now = self.clock()
                rec = SandboxRecord(
                    sandbox_id=sid,
                    key=spec.workload_key,
                    namespace=spec.namespace,
                    state="in_use",
                    pod_ip=ip,
                    created_at=now,
                )
                self.records[sid] = rec
            rec.state = "in_use"
            rec.pod_uid = spec.uid
            rec.pod_name = spec.name
            rec.from_pool = warm
            rec.uses += 1
            rec.idle_since = 0.0
            rec.scratch_dirs = list(spec.scratch_dirs)
            self.by_pod[spec.uid] = rec.sandbox_id
            self._track(spec.workload_key)
            self.save()
            return rec

    def _take_idle(self, spec: PodSandboxSpec) -> SandboxRecord | None:
        """Most recently idled sandbox of exactly this key AND namespace (never across them)."""
        cands = [r for r in self.idle(spec.workload_key, spec.namespace)]
        if not cands:
            return None
        rec = max(cands, key=lambda r: (r.idle_since, r.sandbox_id))
        rec.state = "in_use"  # claimed synchronously: no other acquire can take it
        return rec

    async def release(self, pod_uid: str, reusable: bool) -> None:
        """Scrub the pod's sandbox and keep it idle for its workload, or destroy it."""
        async with self.pod_lock(pod_uid):
            rec = self.get_by_pod(pod_uid)
            if rec is None:
                return
            rec.state = "releasing"
            self.by_pod.pop(pod_uid, None)
            self.save()
            reason: EvictReason | None = None
            pol = self.policy(rec.key)
            pre = decide_release(
                pol,
                reusable,
                idle_of_key=len(self.idle(rec.key)),
                peak=self.tracker.peak(rec.key, self.clock()),
                cost_bytes=sandbox_cost_bytes(0, 0),
                defaults=self.defaults,
            )
            if pre is not None:
                reason = pre
            else:
                try:
                    ok = await self.driver.scrub_sandbox(rec)
                except BackendError as e:
                    log.warning("sandbox scrub failed sandbox=%s error=%s", rec.sandbox_id[:12], e)
                    ok = False
                if not ok:
                    reason = EvictReason.UNHEALTHY
                else:
                    # Re-check: others may have been released into the pool while we scrubbed.
                    reason = decide_release(
                        pol,
                        True,
                        idle_of_key=len(self.idle(rec.key)),
                        peak=self.tracker.peak(rec.key, self.clock()),
                        cost_bytes=sandbox_cost_bytes(0, 0),
                        defaults=self.defaults,
                    )
            if reason is None:
                rec.state = "idle"
                rec.pod_uid = ""
                rec.pod_name = ""
                rec.scratch_dirs = []
                rec.idle_since = self.clock()
                log.info("sandbox returned to pool sandbox=%s pod_uid=%s", rec.sandbox_id[:12], pod_uid)
            else:
                await self._destroy(rec, reason)
            self._track(rec.key)
            self._pod_locks.pop(pod_uid, None)
            self.save()
        if reason is None:
            await self.trim()  # global caps may now be exceeded: evict the LRU idle ones

    async def _destroy(self, rec: SandboxRecord, reason: EvictReason) -> None:
        metrics.POOL_EVICTIONS.labels(reason.value).inc()
        log.info(
            "sandbox destroyed sandbox=%s key=%s reason=%s",
            rec.sandbox_id[:12],
            workload_key_label(rec.key)[:12],
            reason,
        )
        self.records.pop(rec.sandbox_id, None)
        if rec.pod_uid and self.by_pod.get(rec.pod_uid) == rec.sandbox_id:
            self.by_pod.pop(rec.pod_uid, None)
        try:
            await self.driver.destroy_sandbox(rec.sandbox_id)
        except BackendError as e:
            log.warning("sandbox destroy failed sandbox=%s error=%s", rec.sandbox_id[:12], e)
        self._update_gauges([rec.key])

    async def forget_pod(self, pod_uid: str) -> SandboxRecord | None:
        """Drop the pod's record without scrubbing (the backend destroys its sandbox)."""
        rec = self.get_by_pod(pod_uid)
        if rec is None:
            return None
        self.by_pod.pop(pod_uid, None)
        self.records.pop(rec.sandbox_id, None)
        self._track(rec.key)
        self.save()
        return rec

    # ------------------------------------------------------------------ prewarm / upkeep

    async def prewarm(self, spec: PodSandboxSpec, count: int) -> int:
        """Have ``count`` idle sandboxes ready for the spec's workload (capped by its max and the caps).

        Also pulls the workload's images. Returns how many idle sandboxes of the key are ready after
        the call (idempotent: a second call with the same count creates nothing).
        """
        pol = self._learn(spec)
        await self.driver.ensure_images(spec)
        if not pol.enabled or count <= 0:
            return len(self.idle(spec.workload_key, spec.namespace))
        want = min(count, pol.max)
        await self._create_idle({spec.workload_key: want}, trigger="prewarm")
        return len(self.idle(spec.workload_key, spec.namespace))

    async def _create_idle(self, wanted: dict[str, int], trigger: str) -> None:
        idle = self.idle()
        counts: dict[str, int] = {}
        for r in idle:
            counts[r.key] = counts.get(r.key, 0) + 1
        plan = plan_topup(
            wanted,
            counts,
            dict(self._creating),
            idle_total=len(idle),
            idle_bytes=len(idle) * sandbox_cost_bytes(0, 0),
            cost_bytes={},
            defaults=self.defaults,
        )
        jobs = [self._create_one(key, trigger) for key, n in plan.items() for _ in range(n)]
        if jobs:
            await asyncio.gather(*jobs)

    async def _create_one(self, key: str, trigger: str) -> None:
        tpl = self.templates.get(key)
        if tpl is None:
            return
        self._creating[key] = self._creating.get(key, 0) + 1
        try:
            uid = f"warm-{random.getrandbits(64):016x}"
            spec = tpl.model_copy(
                update={"uid": uid, "name": f"warm-{workload_key_label(key)[:10]}-{uid[5:13]}"}
            )
            try:
                sid, ip = await self.driver.create_sandbox(spec, prewarmed=True)
            except BackendError as e:
                metrics.POOL_PREWARM.labels(trigger, "error").inc()
                log.warning("prewarm create failed key=%s error=%s", workload_key_label(key)[:12], e)
                return
            now = self.clock()
            self.records[sid] = SandboxRecord(
                sandbox_id=sid,
                key=key,
                namespace=tpl.namespace,
                state="idle",
                pod_ip=ip,
                created_at=now,
                idle_since=now,
            )
            metrics.POOL_PREWARM.labels(trigger, "created").inc()
            self._update_gauges([key])
            self.save()
        finally:
            self._creating[key] -= 1
            if not self._creating[key]:
                del self._creating[key]

    async def trim(self) -> None:
        """Evict idle sandboxes by TTL, per-workload max and the global caps."""
        now = self.clock()
        idle = [IdleSandbox(r.sandbox_id, r.key, r.idle_since, sandbox_cost_bytes(0, 0)) for r in self.idle()]
        plan = plan_trim(idle, self.policies, self.defaults, now)
        for sid, reason in plan:
            rec = self.records.get(sid)
            if rec is None or rec.state != "idle":
                continue
            rec.state = "releasing"  # claimed: acquire cannot take it while it is being destroyed
            await self._destroy(rec, reason)
        if plan:
            self.save()

    async def check_idle_health(self) -> None:
        """Destroy idle sandboxes whose pause died (a warm start there would fail)."""
        for rec in self.idle():
            try:
                ready = await self.driver.sandbox_ready(rec.sandbox_id)
            except BackendError:
                continue
            if not ready and rec.state == "idle":
                rec.state = "releasing"
                await self._destroy(rec, EvictReason.UNHEALTHY)
                self.save()

    async def maintain(self) -> None:
        """One maintenance pass: health of idle members, trim, then top up each workload to its min."""
        await self.check_idle_health()
        await self.trim()
        wanted = {
            k: p.min for k, p in self.policies.items() if p.enabled and p.min > 0 and k in self.templates
        }
        if wanted:
            await self._create_idle(wanted, trigger="min")

    def start_maintenance(self, interval: float) -> None:
        if self._maint_task is None:
            self._maint_task = asyncio.get_running_loop().create_task(
                self._maintenance_loop(interval), name="pool-maint"
            )

    def wake(self) -> None:
        self._wake.set()

    async def _maintenance_loop(self, interval: float) -> None:
        backoff = interval
        while True:
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=backoff)
                self._wake.clear()
                await self.maintain()
                backoff = interval
            except asyncio.CancelledError:
                raise
            except Exception:
                backoff = min(max(backoff * 2, 1.0), 60.0)
                log.exception("pool maintenance failed retry_in=%.1f", backoff)

    async def stop_maintenance(self) -> None:
        task, self._maint_task = self._maint_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
