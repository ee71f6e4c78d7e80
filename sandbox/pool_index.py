"""The warm pool's records, indexed for the questions every acquire and release asks.

With 10,000 pods on a node, "the idle sandboxes of this workload", "how many of its sandboxes are in
use" and the per-workload gauges must not walk every record: each state change updates counters
here, and every question is a dict lookup (or a walk over one workload's idle sandboxes).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools

from sandbox import metrics
from sandbox.pool_state import SandboxRecord, SandboxState

_BUSY = ("in_use", "releasing")


class PoolIndex:
    """Records by sandbox id and by pod, idle records by workload key, counts per key and label.

    A record's ``state`` changes only through :meth:`set_state` while it is indexed.
    """

    def __init__(self) -> None:
        self.records: dict[str, SandboxRecord] = {}  # sandbox_id -> record
        self.by_pod: dict[str, str] = {}  # pod uid -> sandbox_id
        self._idle: dict[str, dict[str, SandboxRecord]] = {}  # key -> sandbox_id -> idle record
        self._busy: dict[str, int] = {}  # key -> records in use or releasing
        self._labels: dict[str, str] = {}  # key with records -> its metrics label
        self._gauges: dict[str, _LabelGauges] = {}  # label -> its counts and gauge series
        self.idle_total = 0
        self.idle_bytes = 0  # sum of the idle records' cost_bytes
        # (idle_since, sandbox_id, record) of every record when it became idle; entries of records
        # no longer idle (or idle again since) are dropped when they reach the top, or compacted.
        self._lru: list[tuple[float, str, int, SandboxRecord]] = []
        self._seq = itertools.count()

    # ---------------------------------------------------------------- changes

    def add(self, rec: SandboxRecord) -> None:
        old = self.records.get(rec.sandbox_id)
        if old is not None:
            self._count(old, -1)
        self.records[rec.sandbox_id] = rec
        self._count(rec, 1)

    def remove(self, rec: SandboxRecord) -> None:
        if self.records.get(rec.sandbox_id) is rec:
            del self.records[rec.sandbox_id]
            self._count(rec, -1)

    def set_state(self, rec: SandboxRecord, state: SandboxState) -> None:
        if (rec.state in _BUSY and state in _BUSY) or self.records.get(rec.sandbox_id) is not rec:
            rec.state = state  # in use <-> releasing (both busy), or not indexed: no count changes
            return
        self._count(rec, -1)
        rec.state = state
        self._count(rec, 1)

    def _count(self, rec: SandboxRecord, sign: int) -> None:
        key = rec.key
        if rec.state == "idle":
            bucket = self._idle.get(key)
            if sign > 0:
                if bucket is None:
                    bucket = self._idle[key] = {}
                bucket[rec.sandbox_id] = rec
                heapq.heappush(self._lru, (rec.idle_since, rec.sandbox_id, next(self._seq), rec))
            elif bucket is not None:
                bucket.pop(rec.sandbox_id, None)
                if not bucket:
                    del self._idle[key]
            self.idle_total += sign
            self.idle_bytes += sign * rec.cost_bytes
            if len(self._lru) > 2 * self.idle_total + 64:
                self._compact()
            slot = 0
        elif rec.state in _BUSY:
            n = self._busy.get(key, 0) + sign
            if n:
                self._busy[key] = n
            else:
                self._busy.pop(key, None)
            slot = 1
        else:
            return
        label = self.label(key)
        gauges = self._gauges.get(label)
        if gauges is None:
            gauges = self._gauges[label] = _LabelGauges(label)
        gauges.counts[slot] += sign
        if sign < 0 and key not in self._idle and key not in self._busy:
            del self._labels[key]  # bounded: only keys that have records keep a cached label

    def label(self, key: str) -> str:
        """The key's metrics label (``metrics.workload_label``), cached while the key has records."""
        label = self._labels.get(key)
        if label is None:
            label = self._labels[key] = metrics.workload_label(key)
        return label

    # ---------------------------------------------------------------- questions

    def idle(self, key: str | None = None, namespace: str | None = None) -> list[SandboxRecord]:
        if key is not None:
            recs = list(self._idle.get(key, {}).values())
        else:
            recs = [r for bucket in self._idle.values() for r in bucket.values()]
        if namespace is not None:
            recs = [r for r in recs if r.namespace == namespace]
        return recs

    def oldest_idle(self) -> SandboxRecord | None:
        """The least recently idled sandbox (smallest ``(idle_since, sandbox_id)``), as ``plan_trim``
        orders them; O(log n) amortized."""
        lru = self._lru
        while lru:
            since, sid, _, rec = lru[0]
            if rec.state == "idle" and rec.idle_since == since and self.records.get(sid) is rec:
                return rec
            heapq.heappop(lru)
        return None

    def _compact(self) -> None:
        self._lru = [
            (r.idle_since, r.sandbox_id, next(self._seq), r) for b in self._idle.values() for r in b.values()
        ]
        heapq.heapify(self._lru)

    def idle_count(self, key: str) -> int:
        return len(self._idle.get(key, ()))

    def idle_counts(self) -> dict[str, int]:
        return {k: len(b) for k, b in self._idle.items()}

    def in_use_count(self, key: str) -> int:
        return self._busy.get(key, 0)

    def workload_keys(self) -> set[str]:
        return {r.key for r in self.records.values()}

    # ---------------------------------------------------------------- gauges

    def publish(self, key: str) -> None:
        """Expose the pool gauges of the key's workload label (dropped when it has no sandbox left).

        The series read the counts when scraped: a state change costs no gauge update."""
        label = self._labels.get(key) or metrics.workload_label(key)
        gauges = self._gauges.get(label)
        if gauges is not None and any(gauges.counts):
            gauges.publish()
            return
        self._gauges.pop(label, None)
        for state in ("idle", "in_use"):
            with contextlib.suppress(KeyError):
                metrics.POOL_SANDBOXES.remove(label, state)


class _LabelGauges:
    """Idle and busy counts of one workload label, read by its two gauge series at scrape time."""

    __slots__ = ("counts", "label", "published")

    def __init__(self, label: str) -> None:
        self.label = label
        self.counts = [0, 0]  # idle, busy
        self.published = False

    def publish(self) -> None:
        if not self.published:
            counts = self.counts
            metrics.POOL_SANDBOXES.labels(self.label, "idle").set_function(lambda: counts[0])
            metrics.POOL_SANDBOXES.labels(self.label, "in_use").set_function(lambda: counts[1])
            self.published = True
