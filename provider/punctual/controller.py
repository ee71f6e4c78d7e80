"""The I/O loop of punctual CronJobs: watches, a keyed work queue with timers, and the API calls.

CronJobs and Jobs come from two :class:`~provider.reflector.Reflector` instances (list + watch);
Jobs are indexed by the uid of the CronJob that owns them. Every change of a CronJob or of one of
its Jobs queues the CronJob (keyed by uid) on a :class:`~provider.pods.queue.WorkQueue`, whose
timers (:mod:`common.timers` on the injected clock) also bring it back at the time the decision
asked for (the start of the lead, the instant). A pass asks :func:`provider.punctual.decide.decide`
what to do and does it in order, stopping at the first failure (the next watch event or a retry
decides again from what is then true). With ``punctual.leader_election`` only the holder of one
Lease acts, so several warmlet nodes never race to create the same Job (the deterministic name
makes a second create fail with 409 anyway).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from common.clock import SYSTEM, Clock
from provider.config import LeaderElectionConfig, PunctualConfig
from provider.cron_prewarm import targets_node
from provider.events import EventRecorder
from provider.kubeclient import JSON_PATCH, ApiError, KubeClient
from provider.leader_election import LeaderElector
from provider.node_object import node_ready
from provider.pods.queue import WorkQueue
from provider.punctual.decide import (
    NORMAL,
    REPLACED,
    WARNING,
    Action,
    Create,
    Delete,
    Note,
    Plan,
    SetOwner,
    SetStatus,
    Settings,
    decide,
    orphans,
)
from provider.punctual.job import HOLDS_START, is_held, owner_patch, owner_uid
from provider.punctual.metrics import HELD_DELETED, INSTANTS, LEAD, LEADER, PRECREATE_FAILURES, PRECREATED
from provider.punctual.schedule import parse_timestamp
from provider.reflector import DELETED, Reflector

log = logging.getLogger(__name__)
JSON = dict[str, Any]
# While this process's start wave runs, recording an instant (lastScheduleTime) waits, up to this
# long after the instant: 200 status writes and their watch events would take the event loop and
# the API server from the starts in the wave's first seconds.
RECORD_DEFER_SECONDS = 30.0
PASSES_PER_RUN = 4  # decide again at once after a pass (its results are known): create, adopt
CONFLICT_RETRY_SECONDS = 0.5  # a write lost a race: decide again (the watch usually comes first)


def settings_from(cfg: PunctualConfig) -> Settings:
    return Settings(cfg.lead_seconds, cfg.min_lead_seconds, cfg.max_lead_seconds)


def with_kind(cronjob: Mapping[str, Any]) -> JSON:
    """List items come without apiVersion/kind; writes and events need them."""
    return {**cronjob, "apiVersion": "batch/v1", "kind": "CronJob"}


class PunctualController:
    """``await run()`` inside the node's TaskGroup (see module doc)."""

    def __init__(
        self,
        cfg: PunctualConfig,
        client: KubeClient,
        recorder: EventRecorder,
        node_labels: Mapping[str, str],
        taints: Sequence[Mapping[str, Any]],
        clock: Clock = SYSTEM,
        election: LeaderElectionConfig | None = None,
        identity: str = "",
        wave_idle: asyncio.Event | None = None,
    ) -> None:
        self.cfg = cfg
        self.settings = settings_from(cfg)
        self.client = client
        self.recorder = recorder
        self.node_labels = dict(node_labels)
        self.taints = list(taints)
        self.clock = clock
        self.election = election or LeaderElectionConfig()
        self.identity = identity
        self.wave_idle = wave_idle  # set while this node's start wave is not running
        self._deferred: set[str] = set()  # CronJobs whose recording waits for the wave's end
        self._has_deferred = asyncio.Event()
        self._wave_seen: float | None = None  # when a sync first saw the running wave
        self.cronjobs = Reflector(
            client,
            "/apis/batch/v1/cronjobs",
            self._on_cronjob,
            clock=clock,
            name="punctual-cronjobs",
        )
        self.jobs = Reflector(
            client,
            "/apis/batch/v1/jobs",
            self._on_job,
            clock=clock,
            name="punctual-jobs",
        )
        # The warmlet nodes that honour the hold (labelled by themselves): a CronJob is pre-created
        # when its pods may land on any of them, not only on this one (several nodes, one leader).
        self.nodes = Reflector(
            client,
            "/api/v1/nodes",
            self._on_node,
            params={"labelSelector": f"{HOLDS_START}=true"},
            clock=clock,
            name="punctual-nodes",
        )
        self.holding_nodes: dict[str, tuple[dict[str, str], list[JSON]]] = {}  # name -> (labels, taints)
        self.children: dict[str, dict[str, JSON]] = {}  # cronjob uid -> job uid -> Job
        self.queue = WorkQueue(self._sync, workers=cfg.workers, clock=clock)
        self.leading = asyncio.Event()
        self._noted: dict[str, set[tuple[str, str, str]]] = {}  # cronjob uid -> notes already recorded

    # ------------------------------------------------------------------ watches -> queue

    def _on_cronjob(self, etype: str, cj: JSON) -> None:
        uid = str((cj.get("metadata") or {}).get("uid", ""))
        if etype == DELETED:
            self._noted.pop(uid, None)
        if uid:
            self.queue.add(uid)

    def _on_node(self, etype: str, node: JSON) -> None:
        """Only labels and taints of a Ready node are kept; a change of them decides every CronJob
        again. A node whose Ready condition is not True (its warmlet down long enough for the node
        lifecycle controller to say so) holds nothing: its CronJobs fire the normal way."""
        meta = node.get("metadata") or {}
        name = str(meta.get("name", ""))
        view = (dict(meta.get("labels") or {}), list((node.get("spec") or {}).get("taints") or []))
        if etype == DELETED or not node_ready(node):
            changed = self.holding_nodes.pop(name, None) is not None
        else:
            changed = self.holding_nodes.get(name) != view
            self.holding_nodes[name] = view
        if changed and self.leading.is_set():
            for uid in list(self.cronjobs.objects):
                self.queue.add(uid)

    def _on_job(self, etype: str, job: JSON) -> None:
        owner = owner_uid(job)  # "": a held Job that lost its owner reference (indexed under "")
        if not owner and not is_held(job):
            return
        uid = str((job.get("metadata") or {}).get("uid", ""))
        kids = self.children.setdefault(owner, {})
        if etype == DELETED:
            kids.pop(uid, None)
            if not kids:
                self.children.pop(owner, None)
        else:
            kids[uid] = job
        self.queue.add(owner)

    # ------------------------------------------------------------------ one CronJob

    def lands_here(self, cj: Mapping[str, Any]) -> bool:
        """Whether the CronJob's pods may run on this node or another warmlet node that holds."""
        template = (((cj.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
        spec = template.get("spec") or {}
        views: list[tuple[Mapping[str, str], Sequence[Mapping[str, Any]]]] = [(self.node_labels, self.taints)]
        views.extend(self.holding_nodes.values())
        return any(targets_node(spec, labels, taints) for labels, taints in views)

    def plan_for(self, uid: str) -> tuple[JSON | None, Plan]:
        cj = self.cronjobs.objects.get(uid)
        jobs = list(self.children.get(uid, {}).values())
        if cj is None:
            return None, Plan(actions=list(orphans(jobs, set(), self.clock.time())))
        cj = with_kind(cj)
        return cj, decide(cj, jobs, self.clock.time(), self.settings, self.lands_here(cj))

    async def _sync(self, uid: str) -> float | None:
        if not self.leading.is_set() or not (self.cronjobs.synced.is_set() and self.jobs.synced.is_set()):
            return None  # queued again by the watches once leading and synced
        if self._wave_running():
            self._deferred.add(uid)  # queued again when the wave ends (_after_waves)
            self._has_deferred.set()
            return RECORD_DEFER_SECONDS  # or at the bound, whatever the wave
        plan = Plan()
        for _ in range(PASSES_PER_RUN):
            cj, plan = self.plan_for(uid)
            if cj is not None:
                self._note(cj, plan.notes)
            if not plan.actions:
                break
            for action in plan.actions:
                if not await self._do(cj, action):
                    return CONFLICT_RETRY_SECONDS
        if plan.wake_at is None:
            return None
        return max(0.01, plan.wake_at - self.clock.time())  # never a hot loop

    def _wave_running(self) -> bool:
        """Whether this node's start wave runs (for at most RECORD_DEFER_SECONDS since a sync first
        saw it): then nothing is decided, not even what to do. At an instant every CronJob of it
        wakes to record it; 2,000 decisions (~0.4 ms each) at once took the event loop from the
        wave for a second. Nothing else is urgent meanwhile: the wave has started that instant's
        pods, and the next instant is a minute away at least (cron's step), beyond the bound and
        the take-backs' last seconds before it."""
        if self.wave_idle is None or self.wave_idle.is_set():
            self._wave_seen = None
            return False
        now = self.clock.time()
        if self._wave_seen is None:
            self._wave_seen = now
        return now < self._wave_seen + RECORD_DEFER_SECONDS

    def _note(self, cj: JSON, notes: list[Note]) -> None:
        """Record each distinct note once per CronJob (a pass runs often; an Event once is enough)."""
        uid = str(cj["metadata"].get("uid", ""))
        seen = self._noted.setdefault(uid, set())
        for n in notes:
            key = (n.type, n.reason, n.message)
            if key in seen and n.reason != "SuccessfulDelete":
                continue
            seen.add(key)
            self.recorder.record(cj, n.type, n.reason, n.message)

    # ------------------------------------------------------------------ actions

    async def _do(self, cj: JSON | None, action: Action) -> bool:
        """Carry out one action; False if it did not happen (the pass stops there)."""
        try:
            if isinstance(action, Create):
                return await self._create(cj, action)
            if isinstance(action, Delete):
                return await self._delete(cj, action)
            if isinstance(action, SetOwner):
                return await self._set_owner(action)
            if cj is not None:
                return await self._set_status(cj, action)
        except ApiError as e:
            if e.conflict or e.not_found:
                log.info("punctual: lost a race action=%s err=%s", type(action).__name__, e.message)
                return False
            raise
        return False

    async def _create(self, cj: JSON | None, a: Create) -> bool:
        meta = a.job["metadata"]
        ns, name = meta["namespace"], meta["name"]
        try:
            job = await self.client.post(f"/apis/batch/v1/namespaces/{ns}/jobs", a.job)
        except ApiError as e:
            if e.status == 409:
                return True  # exists: ours (the watch brings it) or someone else's (left alone)
            PRECREATE_FAILURES.labels(code=str(e.status)).inc()
            if cj is not None:
                self._note(
                    cj,
                    [
                        Note(
                            WARNING,
                            "PunctualPrecreateFailed",
                            f"could not pre-create job {name}: {e.message}",
                        )
                    ],
                )
            log.warning("punctual: create failed job=%s/%s status=%s err=%s", ns, name, e.status, e.message)
            raise
        lead = a.instant - self.clock.time()
        PRECREATED.inc()
        LEAD.observe(max(0.0, lead))
        self._remember(job)
        if cj is not None:
            when = (a.job["metadata"]["annotations"] or {}).get(
                "batch.kubernetes.io/cronjob-scheduled-timestamp", ""
            )
            self.recorder.record(
                cj, NORMAL, "PunctualPrecreated", f"Pre-created job {name} for {when}, held until then"
            )
        log.info("punctual: pre-created job=%s/%s lead=%.1fs", ns, name, lead)
        return True

    async def _delete(self, cj: JSON | None, a: Delete) -> bool:
        body = {"propagationPolicy": "Background", "preconditions": {"uid": a.uid}}
        try:
            await self.client.delete(f"/apis/batch/v1/namespaces/{a.namespace}/jobs/{a.name}", body)
        except ApiError as e:
            if not (e.not_found or e.conflict):
                raise
        HELD_DELETED.labels(reason=a.reason).inc()
        self._forget(a.uid)
        if cj is not None and a.reason != REPLACED:
            self.recorder.record(
                cj, NORMAL, "PunctualDeleted", f"Deleted pre-created job {a.name}: {a.reason}"
            )
        log.info("punctual: deleted job=%s/%s reason=%s", a.namespace, a.name, a.reason)
        return True

    async def _set_owner(self, a: SetOwner) -> bool:
        job = self._job(a.uid)
        if job is None:
            return False  # gone from the cache since the plan: the watch brings what happened
        path = f"/apis/batch/v1/namespaces/{a.namespace}/jobs/{a.name}"
        try:
            out = await self.client.patch(
                path, owner_patch(a.uid, a.refs, a.annotations, job), content_type=JSON_PATCH
            )
        except ApiError as e:
            if e.status != 422:
                raise
            # a failed test: its owners changed since the cache saw them (the watch brings it)
            log.info("punctual: lost a race action=SetOwner job=%s/%s err=%s", a.namespace, a.name, e.message)
            return False
        out.get("metadata", {}).pop("managedFields", None)
        self._remember(out)
        return True

    async def _set_status(self, cj: JSON, a: Action) -> bool:
        assert isinstance(a, SetStatus)
        meta = cj["metadata"]
        status = dict(cj.get("status") or {})
        before = parse_timestamp(status.get("lastScheduleTime"))
        status["active"] = a.active
        if a.last_schedule_time is not None:
            status["lastScheduleTime"] = a.last_schedule_time
        if not a.active:
            status.pop("active")
        body = {**cj, "status": status}
        out = await self.client.put(
            f"/apis/batch/v1/namespaces/{meta['namespace']}/cronjobs/{meta['name']}/status", body
        )
        if parse_timestamp(a.last_schedule_time) != before:
            INSTANTS.inc()
        out.get("metadata", {}).pop("managedFields", None)
        self.cronjobs.objects[str(meta.get("uid", ""))] = out  # ahead of its watch event
        return True

    def _job(self, uid: str) -> JSON | None:
        for kids in self.children.values():
            if uid in kids:
                return kids[uid]
        return None

    def _remember(self, job: JSON) -> None:
        owner = owner_uid(job)
        uid = str((job.get("metadata") or {}).get("uid", ""))
        if uid and (owner or is_held(job)):
            self.children.setdefault(owner, {})[uid] = job

    def _forget(self, uid: str) -> None:
        for kids in self.children.values():
            kids.pop(uid, None)

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        """Watch and act until cancelled (acting only while holding the Lease, if elected)."""
        if not self.cfg.enabled:
            return
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.cronjobs.run(), name="punctual-cronjobs")
                tg.create_task(self.jobs.run(), name="punctual-jobs")
                tg.create_task(self.nodes.run(), name="punctual-nodes")
                tg.create_task(self._after_waves(), name="punctual-after-waves")
                tg.create_task(self.queue.run(), name="punctual-queue")
                tg.create_task(self._lead(), name="punctual-lead")
        finally:
            self.queue.close()  # its timers' pump task

    async def _after_waves(self) -> None:
        """Queue the CronJobs whose recording waited, once this node's start wave is over."""
        if self.wave_idle is None:
            return
        while True:
            await self._has_deferred.wait()
            await self.wave_idle.wait()
            self._has_deferred.clear()
            deferred, self._deferred = self._deferred, set()
            for uid in deferred:
                self.queue.add(uid)

    async def _lead(self) -> None:
        await self.cronjobs.synced.wait()
        await self.jobs.synced.wait()
        if not self.cfg.leader_election:
            await self._start_leading()
            await asyncio.Event().wait()
        le = self.election
        elector = LeaderElector(
            self.client,
            self.cfg.lease_name,
            self.cfg.lease_namespace,
            self.identity,
            le.lease_duration_seconds,
            le.renew_deadline_seconds,
            le.retry_period_seconds,
            clock=self.clock,
            gauge=LEADER,
        )
        try:
            while True:
                await elector.acquire()
                await self._start_leading()
                await elector.hold()  # returns when leadership is lost
                self.leading.clear()
                log.warning("punctual: lost the lease; not acting until it is held again")
        finally:
            self.leading.clear()
            await asyncio.shield(elector.release())

    async def _start_leading(self) -> None:
        self.leading.set()
        for uid in list(self.cronjobs.objects):
            self.queue.add(uid)
        for owner in list(self.children):
            self.queue.add(owner)  # held Jobs of CronJobs that are gone
        log.info("punctual: acting cronjobs=%d", len(self.cronjobs.objects))
