"""Pure decisions for one punctual CronJob: given it, its held Jobs and the time, what to do.

No I/O here: :func:`decide` returns a :class:`Plan` (actions in the order they must be done, and
when to decide again), :mod:`provider.punctual.controller` carries it out. Why each step is as it
is (status.active, lastScheduleTime, the ownerReference flip, Forbid/Replace at the instant) is
in docs/design.md, "Punctual CronJobs"; the rules against the real controller are proved by
tests/integration/test_punctual.py.

A held Job moves through: created (owner reference not controller) -> in ``status.active`` ->
controller ownerReference (adopted) -> at the instant ``lastScheduleTime`` = instant (processed:
from then on it is an ordinary Job of the CronJob and the controller owns it). A held Job that
must go is taken back in the reverse order: ownerReference released -> out of ``status.active``
-> deleted, so the controller never sees a child Job missing from ``status.active`` nor an
active entry without its Job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from provider.punctual.job import (
    LEAD,
    OPT_IN,
    RELEASED_AT,
    SCHEDULED_TIMESTAMP,
    SPEC_HASH,
    controller_refs,
    held_job,
    is_controlled,
    is_held,
    job_name,
    job_ref,
    owner_uid,
)
from provider.punctual.schedule import (
    Unsupported,
    check_schedule,
    is_instant,
    latest_at_or_before,
    near_offset_change,
    next_after,
    parse_timestamp,
    zone,
)
from provider.timefmt import rfc3339

JSON = dict[str, Any]
NORMAL, WARNING = "Normal", "Warning"

# why a held Job is deleted (the metric's label)
SUSPENDED = "suspended"
SCHEDULE_CHANGED = "schedule-changed"
TEMPLATE_CHANGED = "template-changed"
CRONJOB_DELETED = "cronjob-deleted"
FORBID = "forbid"
DEADLINE = "deadline"
OPTED_OUT = "opted-out"
INVALID = "invalid"
REPLACED = "replaced"  # a previous run deleted at the instant (concurrencyPolicy Replace)

# A held Job taken back is deleted only this long after it left the controller's view (released,
# out of status.active): the controller's CronJob informer must have seen that before the Job's
# deletion reaches its Job informer, or it reports the Job missing (MissingJob). Closer to the
# instant than SETTLE_SECONDS + NEAR_SECONDS it is deleted at once (its pods must never start).
SETTLE_SECONDS = 1.0
NEAR_SECONDS = 2.0


@dataclass(frozen=True)
class Settings:
    lead_seconds: float = 60.0
    min_lead_seconds: float = 5.0  # closer to the instant than this: the controller fires it
    max_lead_seconds: float = 600.0  # the largest lead an annotation may ask for


@dataclass(frozen=True)
class Create:
    job: JSON
    instant: float


@dataclass(frozen=True)
class Delete:
    namespace: str
    name: str
    uid: str
    reason: str
    held: bool = True  # False: a previous run (Replace)


@dataclass(frozen=True)
class SetOwner:
    """Replace the Job's ownerReferences (adopt: controller true; release: controller false)."""

    namespace: str
    name: str
    uid: str
    refs: list[JSON]
    adopt: bool
    annotations: Mapping[str, str] = field(default_factory=dict)  # set in the same write


@dataclass(frozen=True)
class SetStatus:
    """The CronJob's new ``status.active`` and ``status.lastScheduleTime``."""

    active: list[JSON]
    last_schedule_time: str | None


@dataclass(frozen=True)
class Note:
    """An Event on the CronJob."""

    type: str
    reason: str
    message: str


Action = Create | Delete | SetOwner | SetStatus


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    wake_at: float | None = None  # wall time to decide again (None: on the next change only)
    skipped: str = ""  # why the next instant is not pre-created ("" if it is, or nothing is due)

    def wake(self, t: float) -> None:
        self.wake_at = t if self.wake_at is None else min(self.wake_at, t)


def _meta(obj: Mapping[str, Any]) -> JSON:
    return obj.get("metadata") or {}


def opted_in(cronjob: Mapping[str, Any]) -> bool:
    return (_meta(cronjob).get("annotations") or {}).get(OPT_IN) == "true"


def lead_seconds(cronjob: Mapping[str, Any], s: Settings) -> tuple[float, Note | None]:
    """The CronJob's lead (its annotation, else the node's default) and a Warning if it is invalid."""
    raw = (_meta(cronjob).get("annotations") or {}).get(LEAD)
    if raw is None:
        return s.lead_seconds, None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not s.min_lead_seconds <= value <= s.max_lead_seconds:
        return s.lead_seconds, Note(
            WARNING,
            "PunctualInvalidLead",
            f"{LEAD}={raw!r} is not a number of seconds in [{s.min_lead_seconds:g}, "
            f"{s.max_lead_seconds:g}]; using {s.lead_seconds:g}",
        )
    return value, None


def instant_of(job: Mapping[str, Any]) -> float | None:
    return parse_timestamp((_meta(job).get("annotations") or {}).get(SCHEDULED_TIMESTAMP))


def ran(job: Mapping[str, Any]) -> bool:
    """Whether a pod of the Job got to run (ready, succeeded or failed)."""
    st = job.get("status") or {}
    return any(int(st.get(k) or 0) > 0 for k in ("ready", "succeeded", "failed"))


def _released_at(job: Mapping[str, Any]) -> float | None:
    value = (_meta(job).get("annotations") or {}).get(RELEASED_AT)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def orphans(jobs: Iterable[Mapping[str, Any]], cronjob_uids: set[str], now: float) -> list[Delete]:
    """Held Jobs whose instant has not come and whose CronJob is gone or that lost their owner
    reference (a CronJob deleted with orphan propagation): they must never run (the garbage
    collector deletes them too, later, unless orphaned). After the instant they are ordinary Jobs."""
    out = []
    for j in jobs:
        m = _meta(j)
        if not is_held(j) or m.get("deletionTimestamp") or owner_uid(j) in cronjob_uids:
            continue
        instant = instant_of(j)
        if instant is not None and instant <= now:
            continue
        out.append(Delete(m.get("namespace", ""), m.get("name", ""), m.get("uid", ""), CRONJOB_DELETED))
    return out


class _Status:
    """The CronJob's status as the plan changes it (one write per pass, like the controller)."""

    def __init__(self, status: Mapping[str, Any]) -> None:
        self.active: list[JSON] = [dict(r) for r in status.get("active") or []]
        self.last: str | None = status.get("lastScheduleTime")
        self.changed = False

    def has(self, uid: str) -> bool:
        return any(r.get("uid") == uid for r in self.active)

    def add(self, job: Mapping[str, Any]) -> None:
        if not self.has(_meta(job).get("uid", "")):
            self.active.append(job_ref(job))
            self.changed = True

    def remove(self, uid: str) -> None:
        if self.has(uid):
            self.active = [r for r in self.active if r.get("uid") != uid]
            self.changed = True

    def set_last(self, instant: float) -> None:
        value = rfc3339(instant)
        if parse_timestamp(self.last) != instant:
            self.last = value
            self.changed = True


def decide(
    cronjob: Mapping[str, Any],
    jobs: Sequence[Mapping[str, Any]],
    now: float,
    s: Settings,
    lands_here: bool,
) -> Plan:
    """What to do for one CronJob now.

    ``jobs``: the Jobs owned by it (held ones carry PRECREATED; the others matter for Replace);
    ``lands_here``: whether its pods may run on a warmlet node that holds starts (this one or
    another). The actions are to be carried out in order, each one only after the previous one
    succeeded (a failure ends the pass)."""
    plan = Plan()
    meta, spec = _meta(cronjob), cronjob.get("spec") or {}
    cj_uid = str(meta.get("uid", ""))
    committed = _Status(cronjob.get("status") or {})
    status = _Status(cronjob.get("status") or {})
    last = parse_timestamp(status.last)
    opted = opted_in(cronjob)
    deleting = bool(meta.get("deletionTimestamp"))
    policy = spec.get("concurrencyPolicy") or "Allow"
    sds = spec.get("startingDeadlineSeconds")
    schedule = str(spec.get("schedule", ""))
    tz: tzinfo | None = None
    unsupported = ""
    try:
        tz = zone(spec)
        check_schedule(schedule)
    except Unsupported as e:
        unsupported = str(e)
    nxt = next_after(schedule, tz, now) if tz is not None and not unsupported else None
    held = [j for j in jobs if is_held(j)]
    by_uid = {str(_meta(j).get("uid", "")): j for j in jobs}
    unprocessed = {
        str(_meta(j).get("uid", ""))
        for j in held
        if (i := instant_of(j)) is not None and (last is None or i > last)
    }
    others = [r for r in committed.active if r.get("uid") not in unprocessed]  # earlier runs

    def reason_against(job: Mapping[str, Any], instant: float) -> str:
        if deleting:
            return CRONJOB_DELETED
        if not opted:
            return OPTED_OUT
        if spec.get("suspend"):
            return SUSPENDED
        if tz is None or unsupported or not is_instant(schedule, tz, instant):
            return SCHEDULE_CHANGED
        want = held_job(cronjob, instant, tz)
        if (_meta(job).get("annotations") or {}).get(SPEC_HASH) != want["metadata"]["annotations"][SPEC_HASH]:
            return TEMPLATE_CHANGED
        if policy == "Forbid" and others:
            return FORBID
        return ""

    take_back: list[tuple[Mapping[str, Any] | None, JSON | None, str]] = []  # (job, active ref, why)
    adopt: list[Mapping[str, Any]] = []
    pending = []
    for j in held:
        instant = instant_of(j)
        if instant is None:
            take_back.append((j, None, INVALID))
        elif last is not None and instant <= last:
            if committed.has(_meta(j).get("uid", "")) and not is_controlled(j, cj_uid):
                adopt.append(j)  # processed, its adoption interrupted (a restart): finish it
        elif not _meta(j).get("deletionTimestamp"):
            pending.append((instant, j))
    pending.sort(key=lambda p: p[0])

    for instant, j in pending:
        due = instant <= now
        reason = reason_against(j, instant)
        if due and reason == OPTED_OUT:
            reason = ""  # the controller would have fired it as well
        if not due and not reason and instant != nxt:
            reason = SCHEDULE_CHANGED
        if due and not reason and sds is not None and instant + float(sds) < now and not ran(j):
            reason = DEADLINE
        if reason:
            take_back.append((j, None, reason))
            continue
        if due:
            if policy == "Replace":  # what the controller does at the instant, which it skips now
                for r in others:
                    take_back.append((by_uid.get(str(r.get("uid", ""))), r, REPLACED))
                    plan.notes.append(Note(NORMAL, "SuccessfulDelete", f"Deleted job {r.get('name', '')}"))
            status.set_last(instant)
            if is_controlled(j, cj_uid) and not committed.has(str(_meta(j).get("uid", ""))):
                # adopted during the lead and no longer active: the controller removed it (it
                # finished). A Job cache lagging the CronJob's must not put it back (MissingJob).
                continue
        else:
            plan.wake(instant)
        status.add(j)  # in status.active before it is made the controller's (adoption below)
        if not is_controlled(j, cj_uid):
            adopt.append(j)

    releases: list[Action] = []
    deletes: list[Action] = []
    for job, ref, reason in take_back:
        m = _meta(job) if job is not None else {}
        ns = str(m.get("namespace") or (ref or {}).get("namespace", ""))
        name = str(m.get("name") or (ref or {}).get("name", ""))
        uid = str(m.get("uid") or (ref or {}).get("uid", ""))
        held_one = reason != REPLACED
        if reason == CRONJOB_DELETED:
            if job is not None:
                deletes.append(Delete(ns, name, uid, reason))
            continue
        released = _released_at(job) if job is not None and held_one else None
        wrote = committed.has(uid)
        if job is not None and (is_controlled(job, cj_uid) or (held_one and released is None)):
            refs = [
                dict(r, controller=False) if r.get("uid") == cj_uid else r
                for r in m.get("ownerReferences") or []
            ]
            marks = {RELEASED_AT: f"{now:.3f}"} if held_one else {}
            releases.append(SetOwner(ns, name, uid, refs, adopt=False, annotations=marks))
            wrote = True
        status.remove(uid)
        if job is None:
            continue
        instant = instant_of(job)
        if held_one and instant is not None and instant - now > SETTLE_SECONDS + NEAR_SECONDS:
            ready = now + SETTLE_SECONDS if wrote or released is None else released + SETTLE_SECONDS
            if now < ready:
                plan.wake(ready)  # deleted once the controller has surely seen it leave
                continue
        deletes.append(Delete(ns, name, uid, reason, held=held_one))

    # release -> one status write -> adopt; delete only once out of status.active; create last
    plan.actions.extend(releases)
    if status.changed:
        plan.actions.append(SetStatus(status.active, status.last))
    for j in adopt:
        m = _meta(j)
        refs = controller_refs(j, cj_uid)
        plan.actions.append(
            SetOwner(m.get("namespace", ""), m.get("name", ""), m.get("uid", ""), refs, adopt=True)
        )
    plan.actions.extend(deletes)
    _precreate(plan, cronjob, jobs, now, s, lands_here, nxt, tz, unsupported, last, others)
    if nxt is not None:
        plan.wake(nxt + 1.0)  # the next cycle is looked at even if nothing changes meanwhile
    return plan


def _precreate(
    plan: Plan,
    cronjob: Mapping[str, Any],
    jobs: Sequence[Mapping[str, Any]],
    now: float,
    s: Settings,
    lands_here: bool,
    nxt: float | None,
    tz: tzinfo | None,
    unsupported: str,
    last: float | None,
    others: list[JSON],
) -> None:
    """Whether to create the held Job of the next instant now (else why not, and when to look again)."""
    meta, spec = _meta(cronjob), cronjob.get("spec") or {}
    if not opted_in(cronjob) or meta.get("deletionTimestamp"):
        return
    if spec.get("suspend"):
        plan.skipped = SUSPENDED
        return
    if unsupported or nxt is None or tz is None:
        plan.skipped = "unsupported"
        plan.notes.append(Note(WARNING, "PunctualUnsupported", f"not pre-created: {unsupported}"))
        return
    if not lands_here:
        plan.skipped = "not-on-warmlet"
        plan.notes.append(
            Note(
                WARNING,
                "PunctualNotOnWarmlet",
                "not pre-created: the job's pods cannot run on a Ready warmlet node that holds starts",
            )
        )
        return
    lead, bad = lead_seconds(cronjob, s)
    if bad is not None:
        plan.notes.append(bad)
    if nxt - now > lead:
        plan.wake(nxt - lead)
        return
    if nxt - now < s.min_lead_seconds:
        plan.skipped = "too-late"
        return
    name = job_name(str(meta.get("name", "")), nxt)
    if any(_meta(j).get("name") == name for j in jobs):
        return  # ours, or the controller's own (it fired without us)
    if near_offset_change(tz, nxt):
        plan.skipped = "dst"
        plan.notes.append(
            Note(
                NORMAL,
                "PunctualSkipped",
                "not pre-created: the run is near a change of the time zone's offset",
            )
        )
        return
    sds = spec.get("startingDeadlineSeconds")
    created = parse_timestamp(meta.get("creationTimestamp")) or 0.0
    earliest = max(created, last if last is not None else created)
    prev = latest_at_or_before(str(spec.get("schedule", "")), tz, now)
    if prev > earliest and (sds is None or prev + float(sds) >= now):
        plan.skipped = "previous-pending"  # the controller has not processed the previous instant
        if sds is not None:
            plan.wake(prev + float(sds) + 0.001)
        return
    if spec.get("concurrencyPolicy") == "Forbid" and others:
        plan.skipped = FORBID  # decided again when status.active changes
        return
    plan.actions.append(Create(held_job(cronjob, nxt, tz, created_at=now), nxt))
