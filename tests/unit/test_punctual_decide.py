"""provider.punctual.decide: what warmlet does for a punctual CronJob, step by step and as a whole."""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from provider.punctual.decide import (
    CRONJOB_DELETED,
    DEADLINE,
    FORBID,
    NEAR_SECONDS,
    OPTED_OUT,
    REPLACED,
    SCHEDULE_CHANGED,
    SETTLE_SECONDS,
    SUSPENDED,
    TEMPLATE_CHANGED,
    Create,
    Delete,
    Plan,
    SetOwner,
    SetStatus,
    Settings,
    decide,
    instant_of,
    orphans,
)
from provider.punctual.job import RELEASED_AT, held_job, is_controlled, job_name, job_ref

JSON = dict[str, Any]
T = datetime(2026, 11, 28, 18, 0, tzinfo=UTC).timestamp()  # an instant of "0 * * * *"
S = Settings(lead_seconds=60.0, min_lead_seconds=5.0, max_lead_seconds=600.0)
_uids = itertools.count(1)


def cronjob(**spec: Any) -> JSON:
    ann = spec.pop("annotations", {"warmlet.io/punctual": "true"})
    status = spec.pop("status", {"lastScheduleTime": "2026-11-28T17:00:00Z"})
    base: JSON = {
        "schedule": "0 * * * *",
        "jobTemplate": {
            "metadata": {"labels": {"team": "a"}, "annotations": {"note": "x"}},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
        },
    }
    base.update(spec)
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": "nightly",
            "namespace": "ns",
            "uid": "cj-uid",
            "creationTimestamp": "2026-11-01T00:00:00Z",
            "annotations": ann,
        },
        "spec": base,
        "status": status,
    }


def stored(job: JSON, controlled: bool = False) -> JSON:
    """The Job as the apiserver stores it (a uid; optionally already adopted)."""
    j = copy.deepcopy(job)
    j["metadata"]["uid"] = f"job-{next(_uids)}"
    j["metadata"]["resourceVersion"] = "1"
    if controlled:
        j["metadata"]["ownerReferences"][0]["controller"] = True
    return j


def with_active(cj: JSON, *jobs: JSON, last: str | None = None) -> JSON:
    cj = copy.deepcopy(cj)
    cj["status"]["active"] = [
        {"kind": "Job", "namespace": "ns", "name": j["metadata"]["name"], "uid": j["metadata"]["uid"]}
        for j in jobs
    ]
    if last is not None:
        cj["status"]["lastScheduleTime"] = last
    return cj


def kinds(plan: Plan) -> list[str]:
    return [type(a).__name__ for a in plan.actions]


# ------------------------------------------------------------------------------ pre-creation


def test_not_opted_in_does_nothing() -> None:
    plan = decide(cronjob(annotations={}), [], T - 30, S, True)
    assert plan.actions == [] and plan.notes == []


def test_before_the_lead_only_a_wake_up() -> None:
    plan = decide(cronjob(), [], T - 600, S, True)
    assert plan.actions == []
    assert plan.wake_at == T - 60


def test_within_the_lead_creates_exactly_the_controllers_job() -> None:
    plan = decide(cronjob(), [], T - 59, S, True)
    assert kinds(plan) == ["Create"]
    create = plan.actions[0]
    assert isinstance(create, Create) and create.instant == T
    job = create.job
    meta = job["metadata"]
    assert meta["name"] == f"nightly-{int(T // 60)}"
    assert meta["namespace"] == "ns"
    assert meta["labels"] == {"team": "a"}
    assert meta["annotations"]["note"] == "x"
    assert meta["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"] == "2026-11-28T18:00:00Z"
    assert meta["annotations"]["warmlet.io/punctual-precreated"] == "true"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "name": "nightly",
            "uid": "cj-uid",
            "controller": False,
            "blockOwnerDeletion": True,
        }
    ]
    pod = job["spec"]["template"]
    assert pod["metadata"]["annotations"]["warmlet.io/start-at"] == "2026-11-28T18:00:00.000Z"
    assert pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "warmlet.io/holds-start", "operator": "In", "values": ["true"]}]}
        ]
    }


def test_lead_annotation_and_invalid_lead() -> None:
    cj = cronjob(annotations={"warmlet.io/punctual": "true", "warmlet.io/punctual-lead-seconds": "120"})
    assert kinds(decide(cj, [], T - 110, S, True)) == ["Create"]
    cj = cronjob(annotations={"warmlet.io/punctual": "true", "warmlet.io/punctual-lead-seconds": "soon"})
    plan = decide(cj, [], T - 110, S, True)
    assert plan.actions == [] and plan.wake_at == T - 60
    assert [n.reason for n in plan.notes] == ["PunctualInvalidLead"]
    cj = cronjob(annotations={"warmlet.io/punctual": "true", "warmlet.io/punctual-lead-seconds": "3600"})
    assert [n.reason for n in decide(cj, [], T - 50, S, True).notes] == ["PunctualInvalidLead"]


def test_too_close_to_the_instant_leaves_it_to_the_controller() -> None:
    plan = decide(cronjob(), [], T - 4, S, True)
    assert plan.actions == [] and plan.skipped == "too-late"


def test_suspended_unsupported_or_not_on_warmlet_is_not_precreated() -> None:
    assert decide(cronjob(suspend=True), [], T - 30, S, True).skipped == SUSPENDED
    plan = decide(cronjob(schedule="@every 1h"), [], T - 30, S, True)
    assert plan.actions == [] and [n.reason for n in plan.notes] == ["PunctualUnsupported"]
    plan = decide(cronjob(timeZone="Nowhere/Land"), [], T - 30, S, True)
    assert plan.actions == [] and [n.reason for n in plan.notes] == ["PunctualUnsupported"]
    plan = decide(cronjob(), [], T - 30, S, False)
    assert plan.actions == [] and [n.reason for n in plan.notes] == ["PunctualNotOnWarmlet"]


def test_near_a_dst_change_is_not_precreated() -> None:
    spring = datetime(2026, 3, 29, 1, 0, tzinfo=UTC).timestamp()  # 03:00 Berlin summer time
    cj = cronjob(schedule="0 3 * * *", timeZone="Europe/Berlin", status={})
    plan = decide(cj, [], spring - 30, S, True)
    assert plan.actions == [] and plan.skipped == "dst"


def test_time_zone_names_the_instant_in_the_zone() -> None:
    cj = cronjob(
        schedule="0 19 * * *", timeZone="Europe/Berlin", status={"lastScheduleTime": "2026-11-27T18:00:00Z"}
    )
    plan = decide(cj, [], T - 30, S, True)
    job = plan.actions[0].job  # type: ignore[union-attr]
    assert job["metadata"]["name"] == f"nightly-{int(T // 60)}"
    assert (
        job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        == "2026-11-28T19:00:00+01:00"
    )


def test_forbid_with_a_previous_run_active_is_not_precreated() -> None:
    prev = stored(held_job(cronjob(), T - 3600, UTC), controlled=True)
    cj = with_active(cronjob(concurrencyPolicy="Forbid"), prev)
    plan = decide(cj, [], T - 30, S, True)
    assert plan.actions == [] and plan.skipped == FORBID
    # Allow and Replace pre-create beside it
    assert kinds(decide(with_active(cronjob(concurrencyPolicy="Replace"), prev), [], T - 30, S, True)) == [
        "Create"
    ]
    assert kinds(decide(with_active(cronjob(), prev), [], T - 30, S, True)) == ["Create"]


def test_previous_instant_not_yet_processed_waits() -> None:
    cj = cronjob(status={"lastScheduleTime": "2026-11-28T16:00:00Z"})  # 17:00 not processed yet
    plan = decide(cj, [], T - 30, S, True)
    assert plan.actions == [] and plan.skipped == "previous-pending"
    cj = cronjob(startingDeadlineSeconds=100, status={"lastScheduleTime": "2026-11-28T16:00:00Z"})
    assert kinds(decide(cj, [], T - 30, S, True)) == ["Create"]  # 17:00 is past its deadline
    plan = decide(cronjob(status={}), [], T - 30, S, True)  # never fired, created long ago
    assert plan.skipped == "previous-pending"
    fresh = cronjob(status={})
    fresh["metadata"]["creationTimestamp"] = "2026-11-28T17:30:00Z"
    assert kinds(decide(fresh, [], T - 30, S, True)) == ["Create"]


# ------------------------------------------------------------------------------ adoption


def test_created_job_goes_into_status_active_then_becomes_controlled() -> None:
    cj = cronjob()
    job = stored(held_job(cj, T, UTC))
    plan = decide(cj, [job], T - 50, S, True)
    # first into status.active, only then the controller's: it never sees it outside the list
    assert kinds(plan) == ["SetStatus", "SetOwner"]
    st_ = plan.actions[0]
    assert isinstance(st_, SetStatus)
    assert [r["uid"] for r in st_.active] == [job["metadata"]["uid"]]
    assert st_.last_schedule_time == "2026-11-28T17:00:00Z"  # unchanged before the instant
    assert plan.wake_at == T
    cj2 = with_active(cj, job)
    plan = decide(cj2, [job], T - 49, S, True)
    assert kinds(plan) == ["SetOwner"]
    own = plan.actions[0]
    assert isinstance(own, SetOwner) and own.adopt and own.refs[0]["controller"] is True
    done = stored(held_job(cj, T, UTC), controlled=True)
    assert decide(with_active(cj, done), [done], T - 40, S, True).actions == []


def test_at_the_instant_lastScheduleTime_is_set() -> None:
    cj = cronjob()
    job = stored(held_job(cj, T, UTC), controlled=True)
    plan = decide(with_active(cj, job), [job], T + 0.001, S, True)
    assert kinds(plan) == ["SetStatus"]
    st_ = plan.actions[0]
    assert isinstance(st_, SetStatus) and st_.last_schedule_time == "2026-11-28T18:00:00Z"
    after = with_active(cj, job, last="2026-11-28T18:00:00Z")
    assert decide(after, [job], T + 1, S, True).actions == []  # processed: the controller's now


def test_a_held_job_the_controller_removed_from_active_is_not_put_back() -> None:
    """Past the instant, an adopted held Job missing from status.active was removed by the
    controller (it finished; a history limit may have deleted it). warmlet's Job cache can lag
    its CronJob cache: the status write must not add it again (the controller then warns
    MissingJob), but still records the instant."""
    cj = cronjob()
    job = stored(held_job(cj, T, UTC), controlled=True)
    plan = decide(with_active(cj), [job], T + 4, S, True)
    assert kinds(plan) == ["SetStatus"]
    st_ = plan.actions[0]
    assert isinstance(st_, SetStatus)
    assert st_.active == [] and st_.last_schedule_time == "2026-11-28T18:00:00Z"
    # not yet adopted (created late, the instant already due): it does go into status.active
    fresh = stored(held_job(cj, T, UTC))
    plan = decide(cj, [fresh], T + 4, S, True)
    sets = [a for a in plan.actions if isinstance(a, SetStatus)]
    assert sets and [r["uid"] for r in sets[0].active] == [fresh["metadata"]["uid"]]


def test_replace_deletes_the_previous_run_at_the_instant_not_before() -> None:
    cj = cronjob(concurrencyPolicy="Replace")
    prev = stored(held_job(cj, T - 3600, UTC), controlled=True)
    job = stored(held_job(cj, T, UTC), controlled=True)
    state = with_active(cj, prev, job)
    assert decide(state, [job], T - 10, S, True).actions == []
    plan = decide(state, [job, prev], T, S, True)
    assert kinds(plan) == ["SetOwner", "SetStatus", "Delete"]
    rel, st_, d = plan.actions
    assert isinstance(rel, SetOwner) and not rel.adopt and rel.uid == prev["metadata"]["uid"]
    assert isinstance(d, Delete) and d.uid == prev["metadata"]["uid"] and d.reason == REPLACED and not d.held
    assert isinstance(st_, SetStatus) and [r["uid"] for r in st_.active] == [job["metadata"]["uid"]]
    assert st_.last_schedule_time == "2026-11-28T18:00:00Z"
    assert [n.reason for n in plan.notes] == ["SuccessfulDelete"]


def test_forbid_with_a_run_active_at_the_instant_takes_the_held_job_back() -> None:
    cj = cronjob(concurrencyPolicy="Forbid")
    prev = stored(held_job(cj, T - 3600, UTC), controlled=True)
    job = stored(held_job(cj, T, UTC), controlled=True)
    plan = decide(with_active(cj, prev, job), [job], T, S, True)
    assert kinds(plan) == ["SetOwner", "SetStatus", "Delete"]
    assert plan.actions[2].reason == FORBID  # type: ignore[union-attr]
    assert "lastScheduleTime" not in str(plan.actions[1])  # the controller then says JobAlreadyActive
    assert plan.actions[1].last_schedule_time == "2026-11-28T17:00:00Z"  # type: ignore[union-attr]


# ------------------------------------------------------------------------------ taking back


def _take_back_steps(cj: JSON, job: JSON, now: float) -> list[str]:
    """The take-back: release the ownerReference (stamping when), out of status.active, and the
    delete SETTLE_SECONDS later (at once near the instant), applied one after the other without
    the controller ever seeing a half state; returns the reasons of the Delete."""
    w = World(with_active(cj, job))
    w.jobs[job["metadata"]["uid"]] = copy.deepcopy(job)
    plan = decide(w.cj, w.held(), now, S, True)
    uid = job["metadata"]["uid"]
    mine = [a for a in plan.actions if getattr(a, "uid", None) == uid or isinstance(a, SetStatus)]
    instant = instant_of(job)
    near = instant is None or instant - now <= SETTLE_SECONDS + NEAR_SECONDS
    assert [type(a).__name__ for a in mine] == ["SetOwner", "SetStatus"] + (["Delete"] if near else [])
    for a in plan.actions:
        w.apply(a)
    if not near:
        assert uid in w.jobs and plan.wake_at == now + SETTLE_SECONDS
        assert w.jobs[uid]["metadata"]["annotations"][RELEASED_AT] == f"{now:.3f}"
        later = decide(w.cj, w.held(), now + SETTLE_SECONDS / 2, S, True).actions
        assert [a for a in later if getattr(a, "uid", None) == uid] == []  # not yet
        plan = decide(w.cj, w.held(), now + SETTLE_SECONDS, S, True)
        mine = [a for a in plan.actions if getattr(a, "uid", None) == uid]
        assert [type(a).__name__ for a in mine] == ["Delete"]
        for a in plan.actions:
            w.apply(a)
    assert uid not in w.jobs
    return [a.reason for a in mine if isinstance(a, Delete)]


def test_suspend_during_the_lead_takes_the_held_job_back_in_order() -> None:
    job = stored(held_job(cronjob(), T, UTC), controlled=True)
    assert _take_back_steps(cronjob(suspend=True), job, T - 20) == [SUSPENDED]


def test_schedule_changed_during_the_lead() -> None:
    job = stored(held_job(cronjob(), T, UTC), controlled=True)
    assert _take_back_steps(cronjob(schedule="30 * * * *"), job, T - 20) == [SCHEDULE_CHANGED]
    # an instant that stays in the schedule but is no longer the next one
    assert _take_back_steps(cronjob(schedule="0,59 * * * *"), job, T - 90) == [SCHEDULE_CHANGED]


def test_template_changed_during_the_lead_replaces_it() -> None:
    job = stored(held_job(cronjob(), T, UTC), controlled=True)
    changed = cronjob()
    changed["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] = "busybox:2"
    assert _take_back_steps(changed, job, T - 20) == [TEMPLATE_CHANGED]
    # the new one is created only once the old one is gone (same name)
    state = with_active(changed, job)
    assert not any(isinstance(a, Create) for a in decide(state, [job], T - 20, S, True).actions)
    assert kinds(decide(changed, [], T - 20, S, True)) == ["Create"]


def test_opt_out_during_the_lead_but_not_at_the_instant() -> None:
    job = stored(held_job(cronjob(), T, UTC), controlled=True)
    assert _take_back_steps(cronjob(annotations={}), job, T - 20) == [OPTED_OUT]
    plan = decide(with_active(cronjob(annotations={}), job), [job], T, S, True)
    assert kinds(plan) == ["SetStatus"]  # the controller would have run it too


def test_cronjob_being_deleted_deletes_at_once() -> None:
    cj = cronjob()
    cj["metadata"]["deletionTimestamp"] = "2026-11-28T17:59:30Z"
    job = stored(held_job(cronjob(), T, UTC), controlled=True)
    plan = decide(with_active(cj, job), [job], T - 20, S, True)
    assert [(type(a).__name__, getattr(a, "reason", "")) for a in plan.actions] == [
        ("Delete", CRONJOB_DELETED)
    ]


def test_starting_deadline_passed_unless_it_ran() -> None:
    cj = cronjob(startingDeadlineSeconds=10)
    job = stored(held_job(cj, T, UTC), controlled=True)
    assert _take_back_steps(cj, job, T + 11) == [DEADLINE]
    job["status"] = {"ready": 1}
    plan = decide(with_active(cj, job), [job], T + 11, S, True)
    assert kinds(plan) == ["SetStatus"]


def test_processed_job_whose_adoption_was_interrupted_is_adopted() -> None:
    cj = cronjob()
    job = stored(held_job(cj, T, UTC))
    plan = decide(with_active(cj, job, last="2026-11-28T18:00:00Z"), [job], T + 30, S, True)
    assert kinds(plan) == ["SetOwner"] and plan.actions[0].adopt  # type: ignore[union-attr]


def test_orphans() -> None:
    job = stored(held_job(cronjob(), T, UTC))
    assert orphans([job], {"cj-uid"}, T - 30) == []
    (d,) = orphans([job], set(), T - 30)
    assert d.reason == CRONJOB_DELETED and d.uid == job["metadata"]["uid"]
    job["metadata"]["ownerReferences"] = []  # deleted with orphan propagation
    assert [o.uid for o in orphans([job], {"cj-uid"}, T - 30)] == [job["metadata"]["uid"]]
    assert orphans([job], set(), T) == []  # after its instant: an ordinary Job
    ordinary = stored(held_job(cronjob(), T, UTC))
    del ordinary["metadata"]["annotations"]["warmlet.io/punctual-precreated"]
    assert orphans([ordinary], set(), T - 30) == []
    job["metadata"]["deletionTimestamp"] = "x"
    assert orphans([job], set(), T - 30) == []


def test_a_held_job_name_already_taken_is_not_created_again() -> None:
    cj = cronjob()
    gone = stored(held_job(cj, T, UTC))
    gone["metadata"]["deletionTimestamp"] = "2026-11-28T17:59:00Z"
    assert not any(isinstance(a, Create) for a in decide(cj, [gone], T - 30, S, True).actions)


# ------------------------------------------------------------------------------ the whole lead


class World:
    """A fake apiserver for one CronJob: applies actions atomically, checks after each one what
    the real controller would complain about (an unfinished controlled child missing from
    status.active: UnexpectedJob; an active entry whose Job is gone: MissingJob)."""

    def __init__(self, cj: JSON) -> None:
        self.cj = cj
        self.jobs: dict[str, JSON] = {}
        self.created: list[str] = []

    def held(self) -> list[JSON]:
        return list(self.jobs.values())

    def apply(self, action: object) -> None:
        if isinstance(action, Create):
            if any(j["metadata"]["name"] == action.job["metadata"]["name"] for j in self.jobs.values()):
                return  # 409
            j = stored(action.job)
            self.jobs[j["metadata"]["uid"]] = j
            self.created.append(j["metadata"]["name"])
        elif isinstance(action, Delete):
            self.jobs.pop(action.uid, None)
        elif isinstance(action, SetOwner):
            if action.uid in self.jobs:
                self.jobs[action.uid]["metadata"]["ownerReferences"] = action.refs
                self.jobs[action.uid]["metadata"].setdefault("annotations", {}).update(action.annotations)
        elif isinstance(action, SetStatus):
            self.cj["status"] = {"active": action.active, "lastScheduleTime": action.last_schedule_time}
        self.check()

    def check(self) -> None:
        active = {r["uid"] for r in self.cj["status"].get("active") or []}
        for uid, j in self.jobs.items():
            assert not is_controlled(j, "cj-uid") or uid in active, "UnexpectedJob"
        if not self.cj["metadata"].get("deletionTimestamp"):  # the garbage collector's case
            assert active <= set(self.jobs), "MissingJob"

    def settle(self, now: float, lands_here: bool = True) -> Plan:
        for _ in range(10):
            plan = decide(self.cj, self.held(), now, S, lands_here)
            if not plan.actions:
                return plan
            for action in plan.actions:  # in order, the controller may look between any two
                self.apply(action)
        raise AssertionError("did not settle")


EDITS = st.sampled_from(["none", "suspend", "schedule", "template", "optout", "forbid-active", "delete"])


@settings(max_examples=400, deadline=None)
@given(
    steps=st.lists(st.floats(min_value=0.2, max_value=15.0), min_size=3, max_size=30),
    edit=EDITS,
    edit_at=st.floats(min_value=-70.0, max_value=5.0),
    policy=st.sampled_from(["Allow", "Forbid", "Replace"]),
)
def test_the_lead_never_leaves_the_controller_anything_to_complain_about(
    steps: list[float], edit: str, edit_at: float, policy: str
) -> None:
    w = World(cronjob(concurrencyPolicy=policy))
    now = T - 75.0
    edited = before_instant = False
    for dt in steps:
        now += dt
        if not edited and now >= T + edit_at:
            edited = True
            before_instant = w.cj["status"].get("lastScheduleTime") != "2026-11-28T18:00:00Z"
            spec = w.cj["spec"]
            if edit == "suspend":
                spec["suspend"] = True
            elif edit == "schedule":
                spec["schedule"] = "30 * * * *"
            elif edit == "template":
                spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] = "other"
            elif edit == "optout":
                w.cj["metadata"]["annotations"] = {}
            elif edit == "delete":
                w.cj["metadata"]["deletionTimestamp"] = "2026-11-28T17:59:00Z"
            elif (
                edit == "forbid-active"
            ):  # a run of 17:00 still active (e.g. a status the controller restored)
                prev = stored(held_job(cronjob(), T - 3600, UTC), controlled=True)
                w.jobs[prev["metadata"]["uid"]] = prev
                w.cj["status"]["active"] = [*(w.cj["status"].get("active") or []), job_ref(prev)]
        w.settle(now)
        if now > T + 5:
            break
    names = [j["metadata"]["name"] for j in w.held()]
    assert len(names) == len(set(names))  # never two Jobs for one instant
    mine = [j for j in w.held() if j["metadata"]["name"] == job_name("nightly", T)]
    if now < T:
        return
    processed = w.cj["status"].get("lastScheduleTime") == "2026-11-28T18:00:00Z"
    if mine and processed:
        assert is_controlled(mine[0], "cj-uid")
        assert mine[0]["metadata"]["uid"] in {r["uid"] for r in w.cj["status"]["active"]}
    if edit in ("suspend", "schedule", "delete") and edited and T + edit_at < T - 5:
        assert not mine  # taken back before the instant
    if edit == "forbid-active" and before_instant and policy == "Forbid":
        assert not mine or not processed
    if edit == "forbid-active" and before_instant and policy == "Replace" and processed:
        assert len(w.cj["status"]["active"]) == 1  # the previous run was replaced


def test_active_deadline_counts_from_the_instant_not_the_early_creation() -> None:
    cj = cronjob()
    cj["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] = 30
    create = decide(cj, [], T - 42.5, S, True).actions[0]
    assert isinstance(create, Create)
    # the Job controller counts from status.startTime (>= creation, truncated to the second)
    assert create.job["spec"]["activeDeadlineSeconds"] == 30 + 43 + 1
    assert create.job["metadata"]["annotations"]["warmlet.io/punctual-active-deadline-seconds"] == "30"
    # the same Job made at another moment is not a changed template
    job = stored(create.job, controlled=True)
    assert decide(with_active(cj, job), [job], T - 20, S, True).actions == []


def test_a_job_of_that_name_not_made_by_warmlet_is_left_alone() -> None:
    cj = cronjob()
    other = stored(held_job(cj, T, UTC), controlled=True)
    del other["metadata"]["annotations"]["warmlet.io/punctual-precreated"]
    plan = decide(with_active(cj, other), [other], T - 30, S, True)
    assert plan.actions == []


def test_owner_patch_tests_the_owners_not_the_resource_version() -> None:
    """The adoption's write is guarded by the uid and the ownerReferences it replaces, so the Job
    controller's status writes in between never make it fail; annotations are added key by key
    (escaped), keeping the Job's others."""
    from provider.punctual.job import owner_patch

    old = [{"uid": "cj", "controller": False}]
    new = [{"uid": "cj", "controller": True}]
    job = {
        "metadata": {"uid": "j", "ownerReferences": old, "annotations": {"a": "1"}, "resourceVersion": "7"}
    }
    ops = owner_patch("j", new, {"warmlet.io/x~y": "2"}, job)
    assert ops == [
        {"op": "test", "path": "/metadata/uid", "value": "j"},
        {"op": "test", "path": "/metadata/ownerReferences", "value": old},
        {"op": "replace", "path": "/metadata/ownerReferences", "value": new},
        {"op": "add", "path": "/metadata/annotations/warmlet.io~1x~0y", "value": "2"},
    ]
    assert not any("resourceVersion" in op["path"] for op in ops)
    bare = owner_patch("j", new, {"k": "v"}, {"metadata": {"uid": "j"}})
    assert bare[1:] == [
        {"op": "add", "path": "/metadata/ownerReferences", "value": new},
        {"op": "add", "path": "/metadata/annotations", "value": {"k": "v"}},
    ]
