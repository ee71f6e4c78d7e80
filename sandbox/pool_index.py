"""The warm pool's records, indexed for the questions every acquire and release asks.

With 10,000 pods on a node, "the idle sandboxes of this workload", "how many of its sandboxes are in
use" and the per-workload gauges must not walk every record: each state change updates counters
here, and every question is a dict lookup (or a walk over one workload's idle sandboxes).
"""

from __future__ import annotations

import contextlib

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
        self._label_counts: dict[str, list[int]] = {}  # label -> [idle, busy]
        self.idle_total = 0
        self.idle_bytes = 0  # sum of the idle records' cost_bytes

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
        indexed = self.records.get(rec.sandbox_id) is rec
        if indexed:
            self._count(rec, -1)
        rec.state = state
        if indexed:
            self._count(rec, 1)

    def _count(self, rec: SandboxRecord, sign: int) -> None:
        key = rec.key
        if rec.state == "idle":
            bucket = self._idle.get(key)
            if sign > 0:
                if bucket is None:
                    bucket = self._idle[key] = {}
                bucket[rec.sandbox_id] = rec
            elif bucket is not None:
                bucket.pop(rec.sandbox_id, None)
                if not bucket:
                    del self._idle[key]
            self.idle_total += sign
            self.idle_bytes += sign * rec.cost_bytes
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
        label = metrics.workload_label(key)
        counts = self._label_counts.get(label)
        if counts is None:
            counts = self._label_counts[label] = [0, 0]
        counts[slot] += sign

    # ---------------------------------------------------------------- questions

    def idle(self, key: str | None = None, namespace: str | None = None) -> list[SandboxRecord]:
        if key is not None:
            recs = list(self._idle.get(key, {}).values())
        else:
            recs = [r for bucket in self._idle.values() for r in bucket.values()]
        if namespace is not None:
            recs = [r for r in recs if r.namespace == namespace]
        return recs

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
        """Set the pool gauges of the key's workload label (dropped when it has no sandbox left)."""
        label = metrics.workload_label(key)
        idle, busy = self._label_counts.get(label, (0, 0))
        if idle or busy:
            metrics.POOL_SANDBOXES.labels(label, "idle").set(idle)
            metrics.POOL_SANDBOXES.labels(label, "in_use").set(busy)
            return
        self._label_counts.pop(label, None)
        for state in ("idle", "in_use"):
            with contextlib.suppress(KeyError):
                metrics.POOL_SANDBOXES.remove(label, state)
