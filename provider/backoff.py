"""Per-key exponential back-off with an explicit clock (kubelet's flowcontrol.Backoff).

Used for container restarts (CrashLoopBackOff: 10 s doubling to 300 s) and image pulls
(ImagePullBackOff). Pure: the caller passes ``now``, so unit tests need no sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Entry:
    delay: float
    last_update: float


class Backoff:
    def __init__(self, initial: float = 10.0, cap: float = 300.0) -> None:
        self.initial = initial
        self.cap = cap
        self._entries: dict[str, _Entry] = {}

    def delay(self, key: str) -> float:
        """The current back-off period of the key (0 when it has none)."""
        e = self._entries.get(key)
        return e.delay if e else 0.0

    def remaining(self, key: str, since: float, now: float) -> float:
        """Seconds still to wait, counting the current period from ``since``."""
        e = self._entries.get(key)
        if e is not None and now - e.last_update > 2 * self.cap:  # stale entries expire like kubelet's GC
            del self._entries[key]
        return self.peek_remaining(key, since, now)

    def peek_remaining(self, key: str, since: float, now: float) -> float:
        """Like :meth:`remaining` but read-only: a stale entry counts as none and is kept."""
        e = self._entries.get(key)
        if e is None or now - e.last_update > 2 * self.cap:
            return 0.0
        return max(0.0, e.delay - (now - since))

    def next(self, key: str, now: float) -> float:
        """Record one more failure; returns the new period."""
        e = self._entries.get(key)
        if e is None or now - e.last_update > 2 * self.cap:
            e = _Entry(self.initial, now)
        else:
            e = _Entry(min(self.cap, e.delay * 2), now)
        self._entries[key] = e
        return e.delay

    def reset(self, key: str) -> None:
        self._entries.pop(key, None)

    def forget_prefix(self, prefix: str) -> None:
        """Drop every key of one pod (keys are ``<uid>/...``)."""
        for k in [k for k in self._entries if k.startswith(prefix)]:
            del self._entries[k]

    def __len__(self) -> int:
        return len(self._entries)
