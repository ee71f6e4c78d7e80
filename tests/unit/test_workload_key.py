"""Workload keys: same controller + same sandbox attributes share a key; nothing else does."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.clock import FakeClock
from provider.workload import (
    OwnerResolver,
    cronjob_key,
    direct_owner,
    make_key,
    pod_key,
    resource_shape,
    sandbox_attributes,
)


def pod(
    ns: str = "ns", owner: tuple[str, str] | None = ("ReplicaSet", "web-abc"), uid: str = "u1", **spec: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p", "namespace": ns, "uid": uid}
    if owner:
        meta["ownerReferences"] = [
            {"kind": "Other", "name": "not-controller", "uid": "x"},
            {"kind": owner[0], "name": owner[1], "uid": "o", "controller": True},
        ]
    spec.setdefault("containers", [{"name": "app", "image": "x"}])
    return {"metadata": meta, "spec": spec}


def test_direct_owner() -> None:
    assert direct_owner(pod()) == ("ReplicaSet", "web-abc")
    assert direct_owner(pod(owner=None, uid="abc")) == ("Pod", "abc")
    assert direct_owner(pod(owner=("StatefulSet", "db"))) == ("StatefulSet", "db")


def test_key_format() -> None:
    k = pod_key(pod(), ("Deployment", "web"))
    prefix, digest = k.split("#")
    assert prefix == "ns/Deployment/web"
    assert len(digest) == 16


def test_bare_pods_never_share() -> None:
    a, b = pod(owner=None, uid="u1"), pod(owner=None, uid="u2")
    assert pod_key(a, direct_owner(a)) != pod_key(b, direct_owner(b))


def test_defaults_are_normalized() -> None:
    base = pod()
    explicit = pod(
        serviceAccountName="default",
        dnsPolicy="ClusterFirst",
        securityContext={},
        hostNetwork=False,
        runtimeClassName=None,
    )
    assert pod_key(base, ("Deployment", "w")) == pod_key(explicit, ("Deployment", "w"))


def test_quantities_normalized() -> None:
    a = pod(containers=[{"name": "a", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}])
    b = pod(containers=[{"name": "a", "resources": {"requests": {"cpu": "1000m", "memory": "1073741824"}}}])
    assert pod_key(a, ("Deployment", "w")) == pod_key(b, ("Deployment", "w"))


def test_images_and_env_do_not_change_key() -> None:
    a = pod(containers=[{"name": "a", "image": "x:1", "env": [{"name": "A", "value": "1"}]}])
    b = pod(containers=[{"name": "a", "image": "x:2"}])
    assert pod_key(a, ("Deployment", "w")) == pod_key(b, ("Deployment", "w"))


DIFFERENCES: list[dict[str, Any]] = [
    {"serviceAccountName": "other"},
    {"runtimeClassName": "gvisor"},
    {"securityContext": {"runAsUser": 1000}},
    {"securityContext": {"fsGroup": 2000}},
    {"hostNetwork": True},
    {"hostPID": True},
    {"hostIPC": True},
    {"dnsPolicy": "Default"},
    {"dnsConfig": {"nameservers": ["1.1.1.1"]}},
    {"containers": [{"name": "a", "resources": {"requests": {"cpu": "100m"}}}]},
    {"containers": [{"name": "a", "resources": {"limits": {"memory": "1Gi"}}}]},
    {"containers": [{"name": "a", "securityContext": {"privileged": True}}]},
]


@pytest.mark.parametrize("diff", DIFFERENCES)
def test_each_sandbox_attribute_changes_key(diff: dict[str, Any]) -> None:
    assert pod_key(pod(), ("Deployment", "w")) != pod_key(pod(**diff), ("Deployment", "w"))


def test_owner_changes_key() -> None:
    p = pod()
    keys = {
        pod_key(p, o)
        for o in [
            ("Deployment", "w"),
            ("Deployment", "x"),
            ("StatefulSet", "w"),
            ("DaemonSet", "w"),
            ("CronJob", "w"),
            ("Job", "w"),
        ]
    }
    assert len(keys) == 6


@given(
    st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
)
def test_never_equal_across_namespaces(ns1: str, ns2: str) -> None:
    if ns1 == ns2:
        return
    for kind in ("Deployment", "CronJob", "Pod"):
        assert make_key(ns1, kind, "w", {}) != make_key(ns2, kind, "w", {})


@given(
    st.dictionaries(
        st.sampled_from(["serviceAccountName", "runtimeClassName", "dnsPolicy"]),
        st.text(min_size=1, max_size=5),
    )
)
def test_key_is_deterministic(spec: dict[str, Any]) -> None:
    assert make_key("ns", "Deployment", "w", spec) == make_key("ns", "Deployment", "w", copy.deepcopy(spec))


def test_resource_shape_init_max_vs_sum() -> None:
    spec = {
        "containers": [
            {"resources": {"requests": {"cpu": "100m"}}},
            {"resources": {"requests": {"cpu": "200m"}}},
        ],
        "initContainers": [{"resources": {"requests": {"cpu": "1", "memory": "64Mi"}}}],
    }
    assert resource_shape(spec) == {"requests.cpu": 1000, "requests.memory": 64 * 2**20}


def test_sandbox_attributes_contains_namespace() -> None:
    assert sandbox_attributes("a", {})["namespace"] == "a"


def test_cronjob_key_equals_key_of_its_job_pods() -> None:
    template_spec = {
        "restartPolicy": "OnFailure",
        "containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "100m"}}}],
    }
    cj = {
        "metadata": {"name": "tick", "namespace": "ns"},
        "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": template_spec}}}},
    }
    # the pod as the apiserver stores it: defaults filled in, controller labels added
    job_pod = pod(
        owner=("Job", "tick-123"),
        **copy.deepcopy(template_spec),
        serviceAccountName="default",
        dnsPolicy="ClusterFirst",
        securityContext={},
    )
    assert cronjob_key(cj) == pod_key(job_pod, ("CronJob", "tick"))


class FakeApi:
    def __init__(self, objects: dict[str, dict[str, Any] | None]) -> None:
        self.objects = objects
        self.calls: list[str] = []

    async def fetch(self, path: str) -> dict[str, Any] | None:
        self.calls.append(path)
        if path not in self.objects:
            raise RuntimeError("boom")
        return self.objects[path]


def labelled(p: dict[str, Any], **labels: str) -> dict[str, Any]:
    p["metadata"]["labels"] = labels
    return p


def cronjob(*active: tuple[str, str]) -> dict[str, Any]:
    return {"status": {"active": [{"kind": "Job", "name": n, "uid": u} for n, u in active]}}


CJ = "/apis/batch/v1/namespaces/ns/cronjobs/tick"


async def test_resolver_deployment_from_pod_template_hash_without_api_calls() -> None:
    api = FakeApi({})
    r = OwnerResolver(api.fetch)
    web = labelled(pod(owner=("ReplicaSet", "web-5d4f8c")), **{"pod-template-hash": "5d4f8c"})
    assert await r.owner(web) == ("Deployment", "web")
    assert (await r.key(web)).startswith("ns/Deployment/web#")
    # a ReplicaSet of its own (no hash, or a hash that is not its name's suffix) is the owner
    assert await r.owner(pod(owner=("ReplicaSet", "web-abc"))) == ("ReplicaSet", "web-abc")
    other = labelled(pod(owner=("ReplicaSet", "web-abc")), **{"pod-template-hash": "zzz"})
    assert await r.owner(other) == ("ReplicaSet", "web-abc")
    assert api.calls == []  # ReplicaSets are never read (not granted by the ClusterRole)


async def test_resolver_job_to_cronjob_when_listed_active_and_caches() -> None:
    api = FakeApi({CJ: cronjob(("tick-29000000", "o"))})
    r = OwnerResolver(api.fetch, relooks=0)
    assert await r.owner(pod(owner=("Job", "tick-29000000"))) == ("CronJob", "tick")
    assert await r.owner(pod(owner=("Job", "tick-29000000"))) == ("CronJob", "tick")
    assert api.calls == [CJ]


async def test_resolver_job_not_listed_by_its_cronjob_stays_a_job() -> None:
    # same name pattern, but another Job (uid) or no CronJob: never keyed as the CronJob
    api = FakeApi({CJ: cronjob(("tick-29000000", "someone-else"))})
    clock = FakeClock(start=0.0)
    r = OwnerResolver(api.fetch, clock=clock)
    owner = asyncio.create_task(r.owner(pod(owner=("Job", "tick-29000000"))))
    await clock.advance(0.0)
    assert api.calls == [CJ]
    await clock.advance(0.25)  # looked up again: status.active may lag the Job's creation
    assert api.calls == [CJ, CJ]
    await clock.advance(0.5 + 1.0 + 1.9)
    assert api.calls == [CJ] * 4 and not owner.done()
    await clock.advance(0.1)  # after 0.25, 0.5, 1 and 2 s: the last look, then keyed by the Job
    assert await owner == ("Job", "tick-29000000")
    assert api.calls == [CJ] * 5
    api = FakeApi({"/apis/batch/v1/namespaces/ns/cronjobs/gone": None})
    r = OwnerResolver(api.fetch)
    assert await r.owner(pod(owner=("Job", "gone-29000000"))) == ("Job", "gone-29000000")
    assert await r.owner(pod(owner=("Job", "plain"))) == ("Job", "plain")
    assert api.calls == ["/apis/batch/v1/namespaces/ns/cronjobs/gone"]


async def test_resolver_job_listed_after_a_retry() -> None:
    api = FakeApi({CJ: cronjob()})
    original = api.fetch

    async def fetch(path: str) -> dict[str, Any] | None:
        if len(api.calls) == 1:
            api.objects[CJ] = cronjob(("tick-29000000", "o"))
        return await original(path)

    clock = FakeClock(start=0.0)
    r = OwnerResolver(fetch, clock=clock)
    owner = asyncio.create_task(r.owner(pod(owner=("Job", "tick-29000000"))))
    await clock.advance(0.0)  # the first look: not listed yet
    await clock.advance(0.25)
    assert owner.done() and await owner == ("CronJob", "tick")
    assert api.calls == [CJ, CJ]


async def test_resolver_falls_back_on_error_uncached() -> None:
    api = FakeApi({})
    r = OwnerResolver(api.fetch)
    assert await r.owner(pod(owner=("Job", "err-1"))) == ("Job", "err-1")
    assert await r.owner(pod(owner=("Job", "err-1"))) == ("Job", "err-1")
    assert api.calls.count("/apis/batch/v1/namespaces/ns/cronjobs/err") == 2  # errors are not cached


async def test_resolver_no_lookup_for_terminal_kinds() -> None:
    api = FakeApi({})
    r = OwnerResolver(api.fetch)
    assert await r.owner(pod(owner=("StatefulSet", "db"))) == ("StatefulSet", "db")
    assert await r.owner(pod(owner=None, uid="zz")) == ("Pod", "zz")
    assert api.calls == []


def test_sandbox_level_isolation_switches_split_keys() -> None:
    base = {"containers": [{"name": "a", "image": "x"}]}
    plain = make_key("ns", "Job", "j", base)
    assert make_key("ns", "Job", "j", {**base, "shareProcessNamespace": False}) == plain
    assert make_key("ns", "Job", "j", {**base, "hostUsers": True}) == plain
    others = {
        make_key("ns", "Job", "j", {**base, "shareProcessNamespace": True}),
        make_key("ns", "Job", "j", {**base, "hostUsers": False}),
        make_key("ns", "Job", "j", {**base, "os": {"name": "linux"}}),
    }
    assert plain not in others and len(others) == 3


def _shape_reference(spec: dict[str, Any]) -> dict[str, int]:
    """resource_shape as first written (per resource: the sum over app containers against the
    largest init container); the one-pass version must agree with it."""
    from provider.quantity import cpu_milli, to_int

    shape: dict[str, int] = {}
    for part in ("requests", "limits"):
        for res, parse in (("cpu", cpu_milli), ("memory", to_int), ("ephemeral-storage", to_int)):

            def amount(c: dict[str, Any], part: str = part, res: str = res, parse: Any = parse) -> int:
                value = ((c.get("resources") or {}).get(part) or {}).get(res)
                return int(parse(value)) if value is not None else 0

            total = max(
                sum(amount(c) for c in spec.get("containers") or []),
                max((amount(c) for c in spec.get("initContainers") or []), default=0),
            )
            if total:
                shape[f"{part}.{res}"] = total
    return shape


_quantities = st.dictionaries(
    st.sampled_from(["cpu", "memory", "ephemeral-storage", "nvidia.com/gpu"]),
    st.sampled_from(["0", "100m", "1", "2", "64Mi", "1Gi", "500M"]),
    max_size=3,
)
_containers = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "resources": st.fixed_dictionaries({}, optional={"requests": _quantities, "limits": _quantities})
        },
    ),
    max_size=3,
)


@given(apps=_containers, inits=_containers)
def test_resource_shape_sums_apps_against_the_largest_init(apps: list[Any], inits: list[Any]) -> None:
    spec = {"containers": apps, "initContainers": inits}
    assert resource_shape(spec) == _shape_reference(spec)
