"""Pure sizing policy of the warm pool: per-workload limits, overrides, learned targets, eviction plans.

Why pure: the pool's decisions (keep or destroy a released sandbox, what to trim, how many to
create ahead) are where bugs cost the most (leaked sandboxes, cold starts, memory blow-ups), so
they are plain functions of (state, policy, clock), unit tested exhaustively; ``sandbox/pool.py``
only executes the plans.

Rules:
- A released sandbox is kept idle while its workload has fewer idle sandboxes than its *retention
  limit* = clamp(peak concurrent pods of the workload in the recent window, min, max). A burst of N
  pods therefore leaves N warm sandboxes, a one-at-a-time CronJob leaves one.
- An idle sandbox idle longer than its workload's TTL is evicted, down to the workload's min.
- Global caps (count and memory) bound the IDLE pool; the least recently used idle sandboxes of any
  workload are evicted first. In-use sandboxes are never evicted by the pool. A sandbox counts
  against the memory cap with ``sandbox_cost_bytes``: the memory its workload's next pod will take
  (pod-level request, else limit), at least the pause/shim floor every sandbox pins.
- Top-up (maintenance) creates sandboxes up to the workload's min, within the global caps.
- Annotations on a pod override its workload's policy: ``warmlet.io/pool-min``, ``warmlet.io/pool-max``,
  ``warmlet.io/pool-ttl-seconds``, ``warmlet.io/pool=off``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sandbox.backend import PodSandboxSpec

log = logging.getLogger("warmlet.pool")

ANNOTATION_POOL = "warmlet.io/pool"
ANNOTATION_MIN = "warmlet.io/pool-min"
ANNOTATION_MAX = "warmlet.io/pool-max"
ANNOTATION_TTL = "warmlet.io/pool-ttl-seconds"

MAX_PER_WORKLOAD_HARD = 1024  # an annotation cannot ask for more than this
# The floor of a sandbox's cost: the pause process, shim and netns every sandbox pins, idle or not
# (a conservative estimate). A workload without a memory request or limit costs this much.
DEFAULT_SANDBOX_COST_BYTES = 8 * 1024 * 1024


class EvictReason(StrEnum):
    DISABLED = "disabled"  # pool off globally or for the workload
    NOT_REUSABLE = "not_reusable"  # the provider said so (failed pod, security, ...)
    RETENTION = "retention"  # workload already has as many idle as its retention limit
    TTL = "ttl"  # idle longer than the workload's TTL
    GLOBAL_COUNT = "global_count"
    GLOBAL_MEMORY = "global_memory"
    UNHEALTHY = "unhealthy"  # sandbox not ready or scrub failed
    ORPHAN = "orphan"  # owned by no pod and no pool (reconcile)


class PoolSettings(Protocol):
    """The pool section of the configuration (``PoolConfig``) as the sandbox side reads it."""

    enabled: bool
    min_per_workload: int
    max_per_workload: int
    idle_ttl_seconds: float
    global_max_sandboxes: int
    global_max_memory_bytes: int


@dataclass(frozen=True)
class PoolDefaults:
    """Global pool settings (from PoolConfig)."""

    enabled: bool = True
    min_per_workload: int = 0
    max_per_workload: int = 8
    idle_ttl_seconds: float = 600.0
    global_max_sandboxes: int = 256
    global_max_memory_bytes: int = 8 * 1024**3
    concurrency_window_seconds: float = 600.0

    @classmethod
    def from_settings(cls, pool: PoolSettings) -> PoolDefaults:
        """The defaults of a configured pool; peaks are remembered at least a minute (or the TTL)."""
        return cls(
            enabled=pool.enabled,
            min_per_workload=pool.min_per_workload,
            max_per_workload=pool.max_per_workload,
            idle_ttl_seconds=pool.idle_ttl_seconds,
            global_max_sandboxes=pool.global_max_sandboxes,
            global_max_memory_bytes=pool.global_max_memory_bytes,
            concurrency_window_seconds=max(60.0, pool.idle_ttl_seconds),
        )


@dataclass(frozen=True)
class WorkloadPolicy:
    enabled: bool
    min: int
    max: int
    ttl_seconds: float


def _int_annotation(annotations: Mapping[str, str], key: str) -> int | None:
    raw = annotations.get(key)
    if raw is None:
        return None
    try:
        v = int(raw.strip())
    except ValueError:
        log.warning("ignoring invalid pool annotation key=%s value=%r", key, raw)
        return None
    if v < 0:
        log.warning("ignoring negative pool annotation key=%s value=%r", key, raw)
        return None
    return min(v, MAX_PER_WORKLOAD_HARD)


def _float_annotation(annotations: Mapping[str, str], key: str) -> float | None:
    raw = annotations.get(key)
    if raw is None:
        return None
    try:
        v = float(raw.strip())
    except ValueError:
        log.warning("ignoring invalid pool annotation key=%s value=%r", key, raw)
        return None
    if not (v >= 0 and v != float("inf")):  # rejects NaN, negatives and inf
        log.warning("ignoring out-of-range pool annotation key=%s value=%r", key, raw)
        return None
    return v


def policy_for(defaults: PoolDefaults, annotations: Mapping[str, str] | None = None) -> WorkloadPolicy:
    """The effective policy of a workload: defaults overridden by its pods' annotations.

    Invalid overrides are ignored (logged). If min > max after overrides, max wins (min is lowered):
    a cap is a promise about resources, a min only a latency wish.
    """
    ann = annotations or {}
    enabled = defaults.enabled and ann.get(ANNOTATION_POOL, "").strip().lower() not in {
        "off",
        "false",
        "disabled",
    }
    mn = _int_annotation(ann, ANNOTATION_MIN)
    mx = _int_annotation(ann, ANNOTATION_MAX)
    ttl = _float_annotation(ann, ANNOTATION_TTL)
    min_v = defaults.min_per_workload if mn is None else mn
    max_v = defaults.max_per_workload if mx is None else mx
    ttl_v = defaults.idle_ttl_seconds if ttl is None else ttl
    min_v = max(0, min(min_v, max_v))
    if not enabled:
        return WorkloadPolicy(enabled=False, min=0, max=0, ttl_seconds=0.0)
    return WorkloadPolicy(enabled=True, min=min_v, max=max(0, max_v), ttl_seconds=ttl_v)


@dataclass
class ConcurrencyTracker:
    """Peak concurrent in-use sandboxes per workload over a sliding window (the learned target).

    Per key: the samples in the window as (time, level, seq), and a second deque of the samples
    that can still be a peak (levels strictly decreasing), so ``peak`` is O(1) amortized however
    many pods a burst started (a sliding-window maximum).
    """

    window_seconds: float = 600.0
    _samples: dict[str, deque[tuple[float, int, int]]] = field(default_factory=dict)
    _peaks: dict[str, deque[tuple[int, int]]] = field(default_factory=dict)  # (seq, level)
    _seq: int = 0

    def record(self, key: str, in_use: int, now: float) -> None:
        """Record the in-use count of ``key`` after a change."""
        self._seq += 1
        q = self._samples.get(key)
        if q is None:
            q = self._samples[key] = deque()
            self._peaks[key] = deque()
        q.append((now, in_use, self._seq))
        peaks = self._peaks[key]
        while peaks and peaks[-1][1] <= in_use:
            peaks.pop()
        peaks.append((self._seq, in_use))
        self._expire(key, now)

    def _expire(self, key: str, now: float) -> None:
        q = self._samples.get(key)
        if not q:
            return
        # Keep the last sample older than the window: it tells the level at the window's start.
        while len(q) > 1 and q[1][0] <= now - self.window_seconds:
            q.popleft()
        first = q[0][2]
        peaks = self._peaks[key]
        while peaks[0][0] < first:  # the last sample is always in both: never empties
            peaks.popleft()

    def peak(self, key: str, now: float) -> int:
        self._expire(key, now)
        peaks = self._peaks.get(key)
        return peaks[0][1] if peaks else 0

    def forget(self, key: str) -> None:
        self._samples.pop(key, None)
        self._peaks.pop(key, None)

    def keys(self) -> list[str]:
        return list(self._samples)


def retention_limit(policy: WorkloadPolicy, peak: int) -> int:
    """How many idle sandboxes a workload may keep: its recent peak concurrency within [min, max]."""
    if not policy.enabled:
        return 0
    return max(policy.min, min(policy.max, peak))


@dataclass(frozen=True)
class IdleSandbox:
    """An idle pool member as the policy sees it."""

    sandbox_id: str
    key: str
    idle_since: float
    cost_bytes: int = DEFAULT_SANDBOX_COST_BYTES


def decide_release(
    policy: WorkloadPolicy,
    reusable: bool,
    idle_of_key: int,
    peak: int,
    cost_bytes: int,
    defaults: PoolDefaults,
) -> EvictReason | None:
    """Keep a just-released sandbox idle (None) or destroy it (the reason).

    The caller evicts older idle sandboxes first via ``plan_trim`` when the global caps are hit; here
    a sandbox is refused only if even an empty pool could not take it or its workload is full.
    """
    if not defaults.enabled or not policy.enabled:
        return EvictReason.DISABLED
    if not reusable:
        return EvictReason.NOT_REUSABLE
    if idle_of_key >= retention_limit(policy, peak):
        return EvictReason.RETENTION
    if defaults.global_max_sandboxes <= 0:
        return EvictReason.GLOBAL_COUNT
    if cost_bytes > defaults.global_max_memory_bytes:
        return EvictReason.GLOBAL_MEMORY
    return None


def plan_trim(
    idle: Iterable[IdleSandbox],
    policies: Mapping[str, WorkloadPolicy],
    defaults: PoolDefaults,
    now: float,
) -> list[tuple[str, EvictReason]]:
    """Which idle sandboxes to destroy now: TTL per workload (down to min), then global caps (LRU).

    Workloads without a known policy get the defaults. Returns (sandbox_id, reason) in eviction order.
    """
    entries = sorted(idle, key=lambda e: (e.idle_since, e.sandbox_id))
    out: list[tuple[str, EvictReason]] = []
    evicted: set[str] = set()
    by_key: dict[str, list[IdleSandbox]] = {}
    for e in entries:
        by_key.setdefault(e.key, []).append(e)
    default_policy = policy_for(defaults)
    for key, items in by_key.items():
        pol = policies.get(key, default_policy)
        if not pol.enabled or not defaults.enabled:
            for e in items:
                out.append((e.sandbox_id, EvictReason.DISABLED))
                evicted.add(e.sandbox_id)
            continue
        keep = len(items)
        for e in items:  # oldest first
            if keep > pol.max:
                out.append((e.sandbox_id, EvictReason.RETENTION))
            elif keep > pol.min and now - e.idle_since > pol.ttl_seconds:
                out.append((e.sandbox_id, EvictReason.TTL))
            else:
                continue
            evicted.add(e.sandbox_id)
            keep -= 1
    remaining = [e for e in entries if e.sandbox_id not in evicted]
    count = len(remaining)
    mem = sum(e.cost_bytes for e in remaining)
    for e in remaining:  # least recently idled first, across workloads
        reason = over_global_cap(count, mem, defaults)
        if reason is None:
            break
        out.append((e.sandbox_id, reason))
        count -= 1
        mem -= e.cost_bytes
    return out


def over_global_cap(idle_count: int, idle_bytes: int, defaults: PoolDefaults) -> EvictReason | None:
    """Which global cap an idle pool of this size exceeds (count first), None if within both;
    while it exceeds one, the least recently idled sandbox is evicted."""
    if idle_count > defaults.global_max_sandboxes:
        return EvictReason.GLOBAL_COUNT
    if idle_bytes > defaults.global_max_memory_bytes:
        return EvictReason.GLOBAL_MEMORY
    return None


def plan_topup(
    wanted: Mapping[str, int],
    idle_counts: Mapping[str, int],
    creating: Mapping[str, int],
    idle_total: int,
    idle_bytes: int,
    cost_bytes: Mapping[str, int],
    defaults: PoolDefaults,
) -> dict[str, int]:
    """How many sandboxes to create per workload to reach ``wanted`` idle, within the global caps.

    ``wanted`` is min (maintenance) or a prewarm count, already capped by the workload's max.
    Creations in progress count as idle. Workloads are served in key order, so the result is
    deterministic; a workload is never given more than it asked for.
    """
    out: dict[str, int] = {}
    count = idle_total + sum(creating.values())
    mem = idle_bytes + sum(
        creating.get(k, 0) * cost_bytes.get(k, DEFAULT_SANDBOX_COST_BYTES) for k in creating
    )
    if not defaults.enabled:
        return out
    for key in sorted(wanted):
        need = wanted[key] - idle_counts.get(key, 0) - creating.get(key, 0)
        cost = cost_bytes.get(key, DEFAULT_SANDBOX_COST_BYTES)
        n = 0
        while (
            n < need
            and count < defaults.global_max_sandboxes
            and mem + cost <= defaults.global_max_memory_bytes
        ):
            n += 1
            count += 1
            mem += cost
        if n:
            out[key] = n
    return out


def sandbox_cost_bytes(memory_limit_bytes: int, memory_request_bytes: int) -> int:
    """What one sandbox of a workload counts against the pool's memory cap.

    A warm sandbox stands for a pod of its workload about to run in it: it counts the memory that pod
    takes (its pod-level memory request, or its limit when no request is set), and never less than
    ``DEFAULT_SANDBOX_COST_BYTES``, the pause/shim/netns overhead every sandbox pins even while idle.
    So ``global_max_memory_bytes`` bounds how much workload memory the idle pool stands ready for.
    """
    wanted = memory_request_bytes if memory_request_bytes > 0 else memory_limit_bytes
    return max(DEFAULT_SANDBOX_COST_BYTES, wanted)


def spec_cost_bytes(spec: PodSandboxSpec) -> int:
    """What a sandbox of this pod counts against the pool's memory cap (pod-level resources)."""
    return sandbox_cost_bytes(spec.resources.memory_limit_bytes, spec.resources.memory_request_bytes)
