"""Adoption after a restart (pure plan): which sandboxes become whose, which are destroyed, which
containers are removed, from what the runtime lists and what the state file saved."""

from __future__ import annotations

from proto import cri_pb2 as pb
from sandbox.cri import mapping as m
from sandbox.cri.adoption import DEAD_IDLE, NO_WORKLOAD_KEY, plan_adoption
from sandbox.cri.sandboxes import ANNOTATION_CGROUP_PARENT
from sandbox.pool import SandboxRecord

NOW = 5000.0


def sandbox(
    sid: str,
    key: str = "ns/Deployment/web",
    ready: bool = True,
    pod_uid: str = "",
    prewarmed: bool = False,
    cgroup_parent: str = "",
) -> pb.PodSandbox:
    labels = {m.LABEL_MANAGED: "true"}
    if pod_uid:
        labels[m.LABEL_POD_UID] = pod_uid
    if prewarmed:
        labels[m.LABEL_PREWARMED] = "true"
    annotations = {m.ANNOTATION_WORKLOAD_KEY: key} if key else {}
    if cgroup_parent:
        annotations[ANNOTATION_CGROUP_PARENT] = cgroup_parent
    return pb.PodSandbox(
        id=sid,
        metadata=pb.PodSandboxMetadata(name="n", namespace="ns", uid=pod_uid or "placeholder"),
        state=pb.SANDBOX_READY if ready else pb.SANDBOX_NOTREADY,
        created_at=int(1000 * 1e9),
        labels=labels,
        annotations=annotations,
    )


def container(cid: str, sid: str, pod_uid: str, created: int, pod_name: str = "") -> pb.Container:
    labels = {m.LABEL_POD_UID: pod_uid} if pod_uid else {}
    if pod_name:
        labels[m.K8S_POD_NAME] = pod_name
    return pb.Container(
        id=cid, pod_sandbox_id=sid, labels=labels, created_at=created, state=pb.CONTAINER_RUNNING
    )


def saved(sid: str, state: str = "idle", pod_uid: str = "", **kw: object) -> SandboxRecord:
    return SandboxRecord(
        sandbox_id=sid, key="ns/Deployment/web", namespace="ns", state=state, pod_uid=pod_uid, **kw  # type: ignore[arg-type]
    )


def test_a_sandbox_runs_for_the_pod_of_its_containers() -> None:
    plan = plan_adoption([sandbox("s1")], [container("c1", "s1", "uid-a", 10, "pod-a")], [], NOW)
    [rec] = plan.adopt
    assert (rec.sandbox_id, rec.state, rec.pod_uid, rec.pod_name) == ("s1", "in_use", "uid-a", "pod-a")
    assert rec.key == "ns/Deployment/web" and rec.created_at == 1000.0
    assert plan.destroy == [] and plan.remove_containers == []


def test_the_saved_pod_wins_and_other_pods_containers_are_removed() -> None:
    conts = [
        container("old", "s1", "uid-a", 10),
        container("new", "s1", "uid-b", 20),  # newer, but the state file says the sandbox is a's
    ]
    plan = plan_adoption([sandbox("s1")], conts, [saved("s1", "in_use", "uid-a")], NOW)
    assert plan.adopt[0].pod_uid == "uid-a"
    assert plan.remove_containers == ["new"]


def test_without_a_record_the_newest_pod_wins() -> None:
    conts = [
        container("a1", "s1", "uid-a", 10),
        container("b1", "s1", "uid-b", 30),
        container("a2", "s1", "uid-a", 20),
        container("anon", "s1", "", 99),  # no pod uid: neither counted nor removed
    ]
    plan = plan_adoption([sandbox("s1")], conts, [], NOW)
    assert plan.adopt[0].pod_uid == "uid-b"
    assert sorted(plan.remove_containers) == ["a1", "a2", "anon"]


def test_a_sandbox_without_a_workload_key_is_destroyed() -> None:
    plan = plan_adoption([sandbox("s1", key="")], [container("c", "s1", "u", 1)], [], NOW)
    assert plan.adopt == [] and plan.destroy == [("s1", NO_WORKLOAD_KEY)]
    # ... unless the state file knows its key
    plan = plan_adoption([sandbox("s1", key="")], [], [saved("s1", "in_use", "u")], NOW)
    assert plan.destroy == [] and plan.adopt[0].key == "ns/Deployment/web"


def test_a_saved_pod_keeps_its_sandbox_with_no_container_yet() -> None:
    rec = saved("s1", "in_use", "uid-a", pod_name="pod-a", uses=3, from_pool=True, scratch_dirs=["/x"])
    plan = plan_adoption([sandbox("s1", ready=False)], [], [rec], NOW)
    [new] = plan.adopt
    assert (new.state, new.pod_uid, new.pod_name) == ("in_use", "uid-a", "pod-a")
    assert (new.uses, new.from_pool, new.scratch_dirs) == (3, True, ["/x"])


def test_a_sandbox_made_for_a_pod_before_its_record_was_saved_is_that_pods() -> None:
    plan = plan_adoption([sandbox("s1", pod_uid="uid-a")], [], [], NOW)
    assert (plan.adopt[0].state, plan.adopt[0].pod_uid) == ("in_use", "uid-a")
    # a prewarmed one carries a placeholder: an idle pool member
    plan = plan_adoption([sandbox("s1", pod_uid="tpl", prewarmed=True)], [], [], NOW)
    assert (plan.adopt[0].state, plan.adopt[0].pod_uid, plan.adopt[0].idle_since) == ("idle", "", NOW)


def test_idle_sandboxes_keep_their_idle_time_and_dead_idle_ones_go() -> None:
    plan = plan_adoption(
        [sandbox("s1"), sandbox("s2", ready=False), sandbox("s3")],
        [],
        [saved("s1", idle_since=1234.0)],
        NOW,
    )
    assert [(r.sandbox_id, r.state, r.idle_since) for r in plan.adopt] == [
        ("s1", "idle", 1234.0),
        ("s3", "idle", NOW),
    ]
    assert plan.destroy == [("s2", DEAD_IDLE)]
    # a released sandbox (state "releasing" saved with no pod) that is not ready is dead too
    plan = plan_adoption([sandbox("s1", ready=False)], [], [saved("s1", "releasing")], NOW)
    assert plan.adopt == [] and plan.destroy == [("s1", DEAD_IDLE)]


def test_cgroup_parents_come_from_the_sandbox_annotation() -> None:
    plan = plan_adoption(
        [sandbox("s1", cgroup_parent="/warmlet/poda"), sandbox("s2")],
        [container("c", "s1", "a", 1)],
        [],
        NOW,
    )
    assert plan.cgroup_parents == {"s1": "/warmlet/poda", "s2": ""}
