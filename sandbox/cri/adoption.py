"""Adoption after a restart: rebuild the pool's ownership from the runtime (labels) and the state
file; never restart anything.

:func:`plan_adoption` decides, purely, from what the runtime lists and what the state file saved:
which sandboxes become pool records (in use by which pod, or idle), which are destroyed (no
workload key; dead and idle) and which containers are removed (an earlier pod's, left in a reused
sandbox by a scrub that crashed). :func:`adopt` lists, plans and carries the plan out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from proto import cri_pb2 as pb
from sandbox.cri import mapping as m
from sandbox.cri.client import CriCallError
from sandbox.cri.context import CriContext
from sandbox.cri.facts import SandboxFacts
from sandbox.cri.finished import FinishedPods
from sandbox.cri.pleg import Pleg
from sandbox.cri.sandboxes import ANNOTATION_CGROUP_PARENT, CriSandboxes
from sandbox.cri.scrub import ContainerReaper
from sandbox.pool import SandboxRecord, WarmPool

log = logging.getLogger("warmlet.cri")

NO_WORKLOAD_KEY = "no workload key"
DEAD_IDLE = "dead idle"


@dataclass
class AdoptionPlan:
    # New pool records, in the runtime's order; pod_ip is read from the runtime when adopting.
    adopt: list[SandboxRecord] = field(default_factory=list)
    cgroup_parents: dict[str, str] = field(default_factory=dict)  # sandbox id -> pod cgroup parent
    destroy: list[tuple[str, str]] = field(default_factory=list)  # (sandbox id, why)
    remove_containers: list[str] = field(default_factory=list)


def _current_pod(
    sb: pb.PodSandbox, mine: list[pb.Container], saved: SandboxRecord | None
) -> tuple[str, list[str]]:
    """The pod a sandbox belongs to ("" if idle) and the containers of other pods in it."""
    uids = {m.pod_uid_of(c.labels) for c in mine} - {""}
    if uids:
        if saved is not None and saved.pod_uid in uids:
            current = saved.pod_uid
        else:
            newest = max((c for c in mine if m.pod_uid_of(c.labels)), key=lambda c: c.created_at)
            current = m.pod_uid_of(newest.labels)
        return current, [c.id for c in mine if m.pod_uid_of(c.labels) != current]
    if saved is not None and saved.state in ("in_use", "releasing") and saved.pod_uid:
        return saved.pod_uid, []
    if saved is None and sb.labels.get(m.LABEL_PREWARMED) != "true" and m.pod_uid_of(sb.labels):
        # Created for a pod by a warmlet killed before it saved the record: it is that pod's
        # (same name: a second RunPodSandbox for the pod would be refused), not an idle pool
        # member. If the pod is gone, reconcile releases it.
        return m.pod_uid_of(sb.labels), []
    return "", []


def plan_adoption(
    sandboxes: list[pb.PodSandbox],
    containers: list[pb.Container],
    saved: list[SandboxRecord],
    now: float,
) -> AdoptionPlan:
    """What to adopt, destroy and remove (see module doc); ``now`` starts idle time of sandboxes
    the state file did not know as idle."""
    saved_by_id = {r.sandbox_id: r for r in saved}
    by_sb: dict[str, list[pb.Container]] = {}
    for c in containers:
        by_sb.setdefault(c.pod_sandbox_id, []).append(c)
    plan = AdoptionPlan()
    for sb in sandboxes:
        rec = saved_by_id.get(sb.id)
        key = sb.annotations.get(m.ANNOTATION_WORKLOAD_KEY) or (rec.key if rec else "")
        mine = by_sb.get(sb.id, [])
        if not key:
            plan.destroy.append((sb.id, NO_WORKLOAD_KEY))
            continue
        new = SandboxRecord(
            sandbox_id=sb.id,
            key=key,
            namespace=sb.metadata.namespace,
            state="idle",
            created_at=sb.created_at / 1e9,
        )
        if rec is not None:
            new.uses, new.from_pool, new.scratch_dirs = rec.uses, rec.from_pool, rec.scratch_dirs
        current, stale = _current_pod(sb, mine, rec)
        plan.remove_containers += stale
        if current:
            new.state = "in_use"
            new.pod_uid = current
            named = [c for c in mine if m.pod_uid_of(c.labels) == current]
            new.pod_name = named[0].labels.get(m.K8S_POD_NAME, "") if named else (rec.pod_name if rec else "")
        elif sb.state != pb.SANDBOX_READY:
            plan.destroy.append((sb.id, DEAD_IDLE))
            continue
        else:
            new.idle_since = rec.idle_since if rec is not None and rec.state == "idle" else now
        plan.adopt.append(new)
        plan.cgroup_parents[sb.id] = sb.annotations.get(ANNOTATION_CGROUP_PARENT, "")
    return plan


async def execute_plan(
    plan: AdoptionPlan, sandboxes: CriSandboxes, facts: SandboxFacts, reaper: ContainerReaper
) -> list[SandboxRecord]:
    """Carry the plan out; returns the records to adopt (those whose sandbox still exists)."""
    for sid, why in plan.destroy:
        if why == NO_WORKLOAD_KEY:
            log.warning("adopt: sandbox without workload key, destroying sandbox=%s", sid[:12])
        else:
            log.info("adopt: removing dead idle sandbox=%s", sid[:12])
        await sandboxes.destroy_sandbox(sid)
    for cid in plan.remove_containers:  # an earlier pod's containers a crashed scrub left behind
        await reaper.kill_and_remove(cid)
    records: list[SandboxRecord] = []
    for rec in plan.adopt:
        try:
            rec.pod_ip = await facts.read(rec.sandbox_id)
        except CriCallError as e:
            if e.not_found:
                continue
            raise
        facts.set_cgroup_parent(rec.sandbox_id, plan.cgroup_parents.get(rec.sandbox_id, ""))
        records.append(rec)
    return records


async def adopt(
    ctx: CriContext,
    pool: WarmPool,
    finished: FinishedPods,
    sandboxes: CriSandboxes,
    reaper: ContainerReaper,
    pleg: Pleg,
) -> None:
    """Rebuild ownership from the runtime (labels) and the state file; never restart anything."""
    saved, templates = pool.load()
    finished.restore()
    listed = await ctx.client.list_pod_sandbox(labels=ctx.selector)
    conts = await ctx.client.list_containers(labels=ctx.selector)
    plan = plan_adoption(listed, conts, saved, ctx.clock.time())
    records = await execute_plan(plan, sandboxes, sandboxes.facts, reaper)
    pool.adopt(records, templates)
    pleg.seed(conts)
    log.info(
        "cri adopted sandboxes=%d in_use=%d idle=%d containers=%d",
        len(records),
        sum(r.state == "in_use" for r in records),
        sum(r.state == "idle" for r in records),
        len(conts),
    )
