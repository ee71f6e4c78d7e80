"""Leader election on a coordination.k8s.io Lease, like client-go's ``leaderelection``.

Two warmlet processes may run for one node name (high availability): only the holder of the
election Lease runs the node; the other waits as a standby and touches nothing (no Node or pod
writes, no CRI writes, no kubelet API port). Why client-go's rules: a standby never trusts the
holder's clock — a lease counts as expired only when the standby itself has seen the same record
unchanged for ``leaseDurationSeconds`` — and every write is a PUT carrying the resourceVersion
that was read, so two candidates can never both win the same round (409 Conflict for the loser).
A leader that cannot renew within ``renew_deadline`` gives up (``LeaderElector.hold`` returns) well
before a standby may take over (``renew_deadline < lease_duration``).

The decisions (:func:`observe`, :func:`decide`, :func:`released`) are pure functions of the Lease
read and a clock, unit-tested exhaustively; :class:`LeaderElector` only does the I/O.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Any, Literal

from prometheus_client import Gauge

from common.clock import SYSTEM, Clock
from common.retry import STOP, periodic
from provider.kubeclient import ApiError, KubeClient
from provider.metrics import LEADER, LEADER_RENEWALS, LEADER_TRANSITIONS
from provider.timefmt import micro_time, parse_rfc3339

log = logging.getLogger(__name__)
JSON = dict[str, Any]


# ---------------------------------------------------------------------------------------- pure


@dataclass(frozen=True)
class LeaseRecord:
    """The election-relevant part of a Lease (spec + resourceVersion)."""

    holder: str = ""
    duration_seconds: int = 0
    acquire_time: float | None = None
    renew_time: float | None = None
    transitions: int = 0
    resource_version: str = ""

    @property
    def key(self) -> tuple[str, float | None, int, int, str]:
        """What a standby compares to notice that the holder is alive (client-go: the whole record;
        the resourceVersion too, as renewTime is only read to the second)."""
        return (self.holder, self.renew_time, self.transitions, self.duration_seconds, self.resource_version)


@dataclass(frozen=True)
class Observation:
    """The last distinct record seen and WHEN (local clock) it was first seen."""

    record: LeaseRecord | None = None
    observed_at: float = 0.0


@dataclass(frozen=True)
class Decision:
    """What to do this round: create the Lease, update it (acquire or renew), or wait."""

    action: Literal["create", "update", "wait"]
    record: LeaseRecord | None = None  # what to write (create/update)
    acquiring: bool = False  # True when this write takes the lease from someone else (or nobody)
    wait_reason: str = ""


def parse_lease(obj: JSON) -> LeaseRecord:
    spec = obj.get("spec") or {}
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=parse_rfc3339(spec.get("acquireTime")),
        renew_time=parse_rfc3339(spec.get("renewTime")),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=str((obj.get("metadata") or {}).get("resourceVersion") or ""),
    )


def observe(prev: Observation, record: LeaseRecord | None, now: float) -> Observation:
    """Remember when the record last CHANGED: an unchanged record keeps its first-seen time."""
    if record is None:
        return Observation(None, now)
    if prev.record is not None and prev.record.key == record.key:
        return Observation(record, prev.observed_at)
    return Observation(record, now)


def expired(obs: Observation, now: float) -> bool:
    """Expired by OUR clock: unchanged for its whole duration since we first saw it, or released."""
    rec = obs.record
    if rec is None or not rec.holder:
        return True
    return obs.observed_at + rec.duration_seconds <= now


def decide(obs: Observation, identity: str, now: float, duration_seconds: int) -> Decision:
    """client-go's tryAcquireOrRenew: renew our own lease, take an expired or released one, else wait."""
    rec = obs.record
    if rec is None:
        return Decision(
            "create",
            LeaseRecord(identity, duration_seconds, now, now, 0),
            acquiring=True,
        )
    if rec.holder == identity:
        return Decision(
            "update",
            replace(
                rec,
                duration_seconds=duration_seconds,
                renew_time=now,
                acquire_time=rec.acquire_time if rec.acquire_time is not None else now,
            ),
        )
    if not expired(obs, now):
        return Decision("wait", wait_reason=f"held by {rec.holder}")
    return Decision(
        "update",
        replace(
            rec,
            holder=identity,
            duration_seconds=duration_seconds,
            acquire_time=now,
            renew_time=now,
            transitions=rec.transitions + 1,
        ),
        acquiring=True,
    )


def released(rec: LeaseRecord, identity: str, now: float) -> LeaseRecord | None:
    """client-go's ReleaseOnCancel: empty holder, 1 s duration, so a standby takes over at once.
    None when the lease is not ours (nothing to release)."""
    if rec.holder != identity:
        return None
    return replace(rec, holder="", duration_seconds=1, renew_time=now)


def next_try(obs: Observation, now: float, retry_period: float) -> float:
    """Seconds until a standby's next read: retry_period, or sooner when the lease expires (by our
    clock) before that, so a dead leader is replaced at expiry rather than up to a period later."""
    rec = obs.record
    if rec is None or not rec.holder:
        return retry_period
    until = obs.observed_at + rec.duration_seconds - now
    return max(0.05, min(retry_period, until + 0.01))


def renew_deadline_passed(last_renew: float, now: float, renew_deadline: float) -> bool:
    """A leader that could not renew for ``renew_deadline`` must stop acting as leader."""
    return now - last_renew >= renew_deadline


def lease_body(name: str, namespace: str, rec: LeaseRecord) -> JSON:
    spec: JSON = {
        "holderIdentity": rec.holder,
        "leaseDurationSeconds": rec.duration_seconds,
        "leaseTransitions": rec.transitions,
    }
    if rec.acquire_time is not None:
        spec["acquireTime"] = micro_time(rec.acquire_time)
    if rec.renew_time is not None:
        spec["renewTime"] = micro_time(rec.renew_time)
    meta: JSON = {"name": name, "namespace": namespace}
    if rec.resource_version:
        meta["resourceVersion"] = rec.resource_version
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}


def validate_timings(lease_duration: float, renew_deadline: float, retry_period: float) -> None:
    """client-go's checks: the leader must give up before a standby may take over."""
    if not lease_duration > renew_deadline:
        raise ValueError(
            "leader_election: lease_duration_seconds must be greater than renew_deadline_seconds"
        )
    if not renew_deadline > retry_period * 1.2:
        raise ValueError(
            "leader_election: renew_deadline_seconds must be greater than 1.2 x retry_period_seconds"
        )
    if retry_period <= 0:
        raise ValueError("leader_election: retry_period_seconds must be positive")


# ---------------------------------------------------------------------------------------- I/O


class LeaderElector:
    """Acquire, hold and release one election Lease (see module docstring)."""

    def __init__(
        self,
        client: KubeClient,
        name: str,
        namespace: str,
        identity: str,
        lease_duration: float = 10.0,
        renew_deadline: float = 8.0,
        retry_period: float = 2.0,
        clock: Clock = SYSTEM,
        gauge: Gauge = LEADER,  # 1 while held (another election, e.g. punctual's, has its own)
    ) -> None:
        validate_timings(lease_duration, renew_deadline, retry_period)
        self.gauge = gauge
        self.client = client
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.duration = max(1, round(lease_duration))
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.clock = clock
        self.obs = Observation()
        self.last_renew = 0.0
        self.is_leader = False
        self._waiting_for: str | None = None
        self.gauge.set(0)

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    async def _read(self) -> LeaseRecord | None:
        try:
            return parse_lease(await self.client.get(self.path))
        except ApiError as e:
            if e.not_found:
                return None
            raise

    async def try_acquire_or_renew(self) -> bool:
        """One round; True if we hold the lease after it."""
        rec = await self._read()
        now = self.clock.time()
        self.obs = observe(self.obs, rec, now)
        d = decide(self.obs, self.identity, now, self.duration)
        if d.action == "wait" or d.record is None:
            return False
        body = lease_body(self.name, self.namespace, d.record)
        try:
            if d.action == "create":
                obj = await self.client.post(
                    f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases", body
                )
            else:
                obj = await self.client.put(self.path, body)
        except ApiError as e:
            if e.conflict or e.not_found:
                return False  # someone else wrote first: re-read next round
            raise
        written = parse_lease(obj)
        self.obs = Observation(written, now)
        self.last_renew = now
        if d.acquiring:
            LEADER_TRANSITIONS.inc()
            log.info(
                "leader election: acquired lease=%s/%s identity=%s transitions=%d previous=%s",
                self.namespace,
                self.name,
                self.identity,
                written.transitions,
                rec.holder if rec else "",
            )
        return True

    async def acquire(self) -> None:
        """Block until we hold the lease (the standby phase: reads only, every retry_period, or
        sooner when the holder's lease expires by our clock)."""
        await periodic(
            self._acquire_round,
            lambda: next_try(self.obs, self.clock.time(), self.retry_period),
            clock=self.clock,
            on_error=lambda e, _: log.warning("leader election: acquire round failed err=%r", e),
        )

    async def _acquire_round(self) -> object:
        if await self.try_acquire_or_renew():
            self.is_leader = True
            self.gauge.set(1)
            return STOP
        holder = self.obs.record.holder if self.obs.record else ""
        if holder != self._waiting_for:
            self._waiting_for = holder
            log.info(
                "leader election: standby lease=%s/%s identity=%s holder=%s",
                self.namespace,
                self.name,
                self.identity,
                holder,
            )
        return None

    async def hold(self) -> None:
        """Renew every retry_period; RETURNS when leadership is lost (caller must stop at once)."""
        await periodic(self._renew_round, self.retry_period, clock=self.clock, wait_first=True)

    async def _renew_round(self) -> object:
        ok = False
        try:
            remaining = self.renew_deadline - (self.clock.time() - self.last_renew)
            ok = await asyncio.wait_for(self.try_acquire_or_renew(), timeout=max(0.1, remaining))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("leader election: renew failed err=%r", e)
        LEADER_RENEWALS.labels(result="ok" if ok else "error").inc()
        if ok:
            return None
        rec = self.obs.record
        if rec is not None and rec.holder and rec.holder != self.identity:
            self._lost(f"lease taken by {rec.holder}")
            return STOP
        if renew_deadline_passed(self.last_renew, self.clock.time(), self.renew_deadline):
            self._lost("renew deadline passed")
            return STOP
        return None

    def _lost(self, why: str) -> None:
        self.is_leader = False
        self.gauge.set(0)
        log.error(
            "leader election: lost leadership lease=%s/%s identity=%s reason=%s",
            self.namespace,
            self.name,
            self.identity,
            why,
        )

    async def release(self) -> None:
        """Give the lease up (graceful stop) so a standby need not wait for it to expire."""
        if not self.is_leader:
            return
        self.is_leader = False
        self.gauge.set(0)
        try:
            rec = await self._read()
            if rec is None:
                return
            rel = released(rec, self.identity, self.clock.time())
            if rel is None:
                return
            await self.client.put(self.path, lease_body(self.name, self.namespace, rel))
            log.info(
                "leader election: released lease=%s/%s identity=%s", self.namespace, self.name, self.identity
            )
        except (ApiError, OSError, TimeoutError) as e:
            log.warning("leader election: release failed err=%r", e)
