"""Two warmlet nodes and a node of another provider in one cluster: each touches only its own.

Node A and node B differ in name, provider taint, labels and capacity; a third Node ("another
virtual-kubelet provider") is created by the test, with pods bound to it that nobody runs. Pods
land by taint and selector on the right node, each warmlet writes only its own Node, Lease, pods
and events, and the other provider's pods keep their exact resourceVersion.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from provider.app import WarmletNode
from provider.config import WarmletConfig
from provider.cron_prewarm import next_fire
from provider.dirclaim import DirectoryInUse
from provider.kubeclient import ApiError, KubeClient
from provider.node import NodeNameTaken
from provider.pods.worker import START_LEVEL_ANNOTATION
from testbed.bed import TestBed
from testbed.testing import create_namespace, list_pods, node_config, phase, running_node, wait_for

pytestmark = pytest.mark.integration

JSON = dict[str, Any]
TAINT_KEY = "virtual-kubelet.io/provider"
MANAGER = "warmlet"  # field manager the apiserver derives from warmlet's User-Agent


def warmlet_cfg(
    kubeconfig: Path, workdir: Path, name: str, provider: str, pool: str, cpu: str, pods: str
) -> WarmletConfig:
    cfg = node_config(kubeconfig, workdir, node_name=name)
    cfg.node.provider = provider
    cfg.node.labels = {"pool": pool}
    cfg.node.cpu, cfg.node.memory, cfg.node.pods = cpu, "16Gi", pods
    cfg.node.lease_renew_interval_seconds = 2.0
    cfg.pods.pod_events = "all"  # kubelet's Normal pod events (off by default on a simulated node)
    return cfg


def deployment(name: str, replicas: int, provider: str, selector: dict[str, str]) -> JSON:
    """Pods that tolerate exactly one provider's taint (Equal, with its value)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": selector,
                    "tolerations": [
                        {"key": TAINT_KEY, "operator": "Equal", "value": provider, "effect": "NoSchedule"}
                    ],
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{"name": "app", "image": "127.0.0.1:5000/sim/app:1"}],
                },
            },
        },
    }


def managers(obj: JSON) -> set[str]:
    return {m.get("manager", "") for m in obj["metadata"].get("managedFields") or []}


async def test_two_warmlet_nodes_beside_another_provider(
    testbed: TestBed, kubeconfig: Path, tmp_path: Path
) -> None:
    s = uuid.uuid4().hex[:6]
    a_name, b_name, other = f"wl-a-{s}", f"wl-b-{s}", f"other-vk-{s}"
    cfg_a = warmlet_cfg(kubeconfig, tmp_path / "a", a_name, "warmlet-a", f"a-{s}", cpu="8", pods="20")
    cfg_b = warmlet_cfg(kubeconfig, tmp_path / "b", b_name, "warmlet-b", f"b-{s}", cpu="4", pods="10")
    admin = await KubeClient.from_kubeconfig(str(kubeconfig))
    ns = await create_namespace(admin, "multi")
    try:
        # the other provider's node and its pods (bound directly; that provider is not running),
        # written with kubectl so their field managers are not warmlet's User-Agent
        foreign_node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": other,
                "labels": {"type": "virtual-kubelet", "kubernetes.io/hostname": other, "pool": f"o-{s}"},
            },
            "spec": {"taints": [{"key": TAINT_KEY, "value": "other", "effect": "NoSchedule"}]},
        }
        foreign_pods = {
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": f"foreign-{i}", "namespace": ns, "labels": {"app": "foreign"}},
                    "spec": {
                        "nodeName": other,
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [{"name": "app", "image": "127.0.0.1:5000/sim/app:1"}],
                    },
                }
                for i in range(3)
            ],
        }
        (tmp_path / "other.json").write_text(json.dumps(foreign_node))
        (tmp_path / "foreign.json").write_text(json.dumps(foreign_pods))
        await asyncio.to_thread(testbed.kubectl, "create", "-f", str(tmp_path / "other.json"))
        await asyncio.to_thread(
            testbed.kubectl,
            "patch",
            "node",
            other,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(
                {
                    "status": {
                        "capacity": {"cpu": "2", "memory": "4Gi", "pods": "5"},
                        "nodeInfo": {"osImage": "other-provider 1.0", "kubeletVersion": "v1.36.3-other"},
                    }
                }
            ),
        )
        await asyncio.to_thread(testbed.kubectl, "create", "-f", str(tmp_path / "foreign.json"))
        foreign = {p["metadata"]["uid"]: p for p in await list_pods(admin, ns, "app=foreign")}
        assert len(foreign) == 3

        async with contextlib.AsyncExitStack() as stack:
            wa = await stack.enter_async_context(running_node(cfg_a))
            wb = await stack.enter_async_context(running_node(cfg_b))
            # A by taint alone (any virtual node; only A's taint is tolerated), B by its pool label;
            # B advertises 10 pods, so 2 of 12 stay Pending instead of spilling anywhere else
            await admin.post(
                f"/apis/apps/v1/namespaces/{ns}/deployments",
                deployment("to-a", 4, "warmlet-a", {"type": "virtual-kubelet"}),
            )
            await admin.post(
                f"/apis/apps/v1/namespaces/{ns}/deployments",
                deployment("to-b", 12, "warmlet-b", {"pool": f"b-{s}"}),
            )
            cron_tmpl = deployment("cron", 1, "warmlet-a", {"type": "virtual-kubelet"})["spec"]["template"]
            cron_tmpl["spec"]["restartPolicy"] = "Never"
            await admin.post(
                f"/apis/batch/v1/namespaces/{ns}/cronjobs",
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "metadata": {"name": "only-a"},
                    "spec": {"schedule": "0 0 1 1 *", "jobTemplate": {"spec": {"template": cron_tmpl}}},
                },
            )

            # tolerates every provider, pinned to B by required node affinity
            pinned = deployment("cron", 1, "any", {"type": "virtual-kubelet"})["spec"]["template"]
            pinned["spec"]["restartPolicy"] = "Never"
            pinned["spec"]["tolerations"] = [{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
            pinned["spec"]["affinity"] = {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [b_name]}
                                ]
                            }
                        ]
                    }
                }
            }
            await admin.post(
                f"/apis/batch/v1/namespaces/{ns}/cronjobs",
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "metadata": {"name": "pinned-b"},
                    "spec": {"schedule": "0 0 1 1 *", "jobTemplate": {"spec": {"template": pinned}}},
                },
            )

            async def placed() -> tuple[list[JSON], list[JSON]] | None:
                pa = await list_pods(admin, ns, "app=to-a")
                pb = await list_pods(admin, ns, "app=to-b")
                running_b = [p for p in pb if phase(p) == "Running"]
                if len(pa) == 4 and all(phase(p) == "Running" for p in pa) and len(running_b) == 10:
                    return pa, pb
                return None

            pa, pb = await wait_for(placed, 120, 0.5, "4 to-a pods Running on A and 10 to-b pods on B")
            assert {p["spec"]["nodeName"] for p in pa} == {a_name}
            running_b = [p for p in pb if phase(p) == "Running"]
            assert {p["spec"]["nodeName"] for p in running_b} == {b_name}

            async def unschedulable() -> list[JSON] | None:
                pending = [p for p in await list_pods(admin, ns, "app=to-b") if phase(p) != "Running"]
                cond = [
                    c
                    for p in pending
                    for c in p["status"].get("conditions") or []
                    if c["type"] == "PodScheduled" and c["status"] == "False"
                ]
                return pending if len(pending) == 2 and len(cond) == 2 else None

            pending = await wait_for(unschedulable, 60, 0.5, "2 to-b pods unschedulable (B is full)")
            assert all(not p["spec"].get("nodeName") for p in pending)

            # each warmlet's cache, runtime and workers hold its own pods only
            uids_a = {p["metadata"]["uid"] for p in pa}
            uids_b = {p["metadata"]["uid"] for p in running_b}
            assert wa.pods is not None and wb.pods is not None
            assert set(wa.pods.informer.pods) == uids_a
            assert set(wb.pods.informer.pods) == uids_b
            assert {x.pod_uid for x in await wa.backend.list_sandboxes()} <= uids_a
            assert {x.pod_uid for x in await wb.backend.list_sandboxes()} <= uids_b

            # a third node pointed at A's directories would sweep A's pod logs and volumes at start:
            # it refuses to start instead, and A's pods are untouched
            cfg_c = warmlet_cfg(kubeconfig, tmp_path / "a", f"wl-c-{s}", "warmlet-c", f"c-{s}", "1", "1")
            wc = WarmletNode(cfg_c)
            with pytest.raises(DirectoryInUse, match=a_name):
                await wc.start()
            await wc.stop()
            assert set(wa.pods.informer.pods) == uids_a
            with contextlib.suppress(ApiError):
                await admin.get(f"/api/v1/nodes/wl-c-{s}")
                raise AssertionError("the refused node registered anyway")

            # a warmlet given the other provider's node name does not take that Node over
            cfg_o = warmlet_cfg(kubeconfig, tmp_path / "o", other, "warmlet-o", f"o-{s}", "1", "1")
            other_before = await admin.get(f"/api/v1/nodes/{other}")
            wo = WarmletNode(cfg_o)
            with pytest.raises(BaseException) as refused:  # an ExceptionGroup of the TaskGroup
                await wo.start()
            await wo.stop()
            assert refused.group_contains(NodeNameTaken) or isinstance(refused.value, NodeNameTaken)
            other_now = await admin.get(f"/api/v1/nodes/{other}")
            assert other_now["metadata"]["labels"] == other_before["metadata"]["labels"]
            assert other_now["spec"] == other_before["spec"]
            assert MANAGER not in managers(other_now)

            # Nodes and Leases: each its own name, taint, labels and capacity
            na = await admin.get(f"/api/v1/nodes/{a_name}")
            nb = await admin.get(f"/api/v1/nodes/{b_name}")
            assert [t for t in na["spec"]["taints"] if t["key"] == TAINT_KEY] == [
                {"key": TAINT_KEY, "value": "warmlet-a", "effect": "NoSchedule"}
            ]
            assert [t for t in nb["spec"]["taints"] if t["key"] == TAINT_KEY] == [
                {"key": TAINT_KEY, "value": "warmlet-b", "effect": "NoSchedule"}
            ]
            assert (
                na["metadata"]["labels"]["pool"] == f"a-{s}" and nb["metadata"]["labels"]["pool"] == f"b-{s}"
            )
            assert (na["status"]["capacity"]["cpu"], na["status"]["capacity"]["pods"]) == ("8", "20")
            assert (nb["status"]["capacity"]["cpu"], nb["status"]["capacity"]["pods"]) == ("4", "10")
            for name in (a_name, b_name):
                lease = await admin.get(
                    f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
                )
                assert lease["spec"]["holderIdentity"] == name
                assert lease["metadata"]["ownerReferences"][0]["name"] == name

            # cron prewarming is per node: each prewarmer targets only the CronJobs it could run
            assert wa.prewarmer is not None and wb.prewarmer is not None
            await wa.prewarmer.relist()
            await wb.prewarmer.relist()
            ours = [c for c in wa.prewarmer.cronjobs.values() if c["metadata"]["namespace"] == ns]
            assert len(ours) == 2
            fire = next_fire(ours[0], time.time())
            assert fire is not None
            soon = fire - 5  # both fire at the same instant, within the lead time

            def due(w: WarmletNode) -> list[str]:
                assert w.prewarmer is not None
                return sorted(
                    c["metadata"]["name"]
                    for c, _ in w.prewarmer.due(soon)
                    if c["metadata"]["namespace"] == ns
                )

            assert due(wa) == ["only-a"]  # by its taint (B's is not tolerated)
            assert due(wb) == ["pinned-b"]  # by required node affinity (A is not B)

            # activity on A leaves B's pods alone: once B's own writes settled (status, then the
            # start-level annotation), scale A down (graceful deletions, events, releases)
            async def b_settled() -> list[JSON] | None:
                pods = [p for p in await list_pods(admin, ns, "app=to-b") if phase(p) == "Running"]
                done = all(START_LEVEL_ANNOTATION in (p["metadata"].get("annotations") or {}) for p in pods)
                return pods if done and len(pods) == 10 else None

            running_b = await wait_for(b_settled, 60, 0.5, "B's pods annotated")
            rv_b = {p["metadata"]["uid"]: p["metadata"]["resourceVersion"] for p in running_b}
            await admin.patch(f"/apis/apps/v1/namespaces/{ns}/deployments/to-a", {"spec": {"replicas": 1}})

            async def scaled() -> bool:
                return len(await list_pods(admin, ns, "app=to-a")) == 1

            await wait_for(scaled, 60, 0.5, "to-a scaled down to 1")
            now_b = {p["metadata"]["uid"]: p for p in await list_pods(admin, ns, "app=to-b")}
            assert {u: now_b[u]["metadata"]["resourceVersion"] for u in rv_b} == rv_b

            # events: from the node that runs the pod, none for the other provider's pods
            async def killing() -> list[JSON] | None:
                evs = (await admin.list_all(f"/api/v1/namespaces/{ns}/events"))["items"]
                return evs if sum(e["reason"] == "Killing" for e in evs) >= 3 else None

            evs = await wait_for(killing, 60, 0.5, "Killing events of the 3 removed to-a pods")
            for e in evs:
                uid = e["involvedObject"].get("uid")
                assert uid not in foreign, e
                if e["source"].get("component") != "warmlet":
                    continue
                if uid in uids_a:
                    assert e["source"]["host"] == a_name, e
                elif uid in uids_b:
                    assert e["source"]["host"] == b_name, e

            # the other provider's node and pods: never written by warmlet (the node lifecycle
            # controller may mark them NotReady, as that provider sends no heartbeats: compare
            # everything but what that controller owns)
            for before in foreign.values():
                now = await admin.get(f"/api/v1/namespaces/{ns}/pods/{before['metadata']['name']}")
                assert MANAGER not in managers(now)
                assert managers(now) - managers(before) <= {"kube-controller-manager"}, managers(now)
                assert {
                    k: v for k, v in now["metadata"].items() if k not in ("resourceVersion", "managedFields")
                } == {
                    k: v
                    for k, v in before["metadata"].items()
                    if k not in ("resourceVersion", "managedFields")
                }
                assert now["spec"] == before["spec"]
                assert phase(now) == "Pending" and not now["status"].get("containerStatuses")
            assert MANAGER in managers(na)  # positive control: warmlet's writes do show up as "warmlet"
            assert MANAGER not in managers(await admin.get(f"/api/v1/nodes/{other}"))
            assert not {t["value"] for t in na["spec"]["taints"]} & {"other", "warmlet-b"}
    finally:
        for path in (f"/api/v1/namespaces/{ns}", f"/api/v1/nodes/{other}"):
            with contextlib.suppress(ApiError):
                await admin.delete(path)
        await admin.close()
