"""Five simulated nodes in one warmlet process (``nodes:``) against the real API server.

Four nodes from ``nodes.count`` and one custom node with more CPU and its own label: each is a
Ready Node of its own (name, labels, capacity), renews its own Lease, runs the pods bound to it
and reports their status; a pod bound to a node of another provider is left alone; ``kubectl
logs`` of a pod on any of them goes through that Node's advertised endpoint to the process's one
kubelet API; a deleted Node is registered again while the others stay as they were; a graceful
stop marks every Node stopped with its own count of pods left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path
from typing import Any

import pytest

from provider.app import WarmletNode
from provider.config import NodeOverride
from provider.kubeclient import ApiError, KubeClient
from testbed.bed import TestBed
from testbed.testing import create_namespace, list_pods, node_config, phase, wait_for

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"


def ready(node: JSON) -> JSON:
    return next(c for c in node["status"]["conditions"] if c["type"] == "Ready")


def bound_pod(name: str, node: str) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"app": "fleet"},
            "annotations": {"warmlet.io/sim-log": f"on {node}"},
        },
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": False,
            "tolerations": [{"operator": "Exists"}],
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "app", "image": "127.0.0.1:5000/sim/app:1"}],
        },
    }


async def test_five_nodes_in_one_process(testbed: TestBed, kubeconfig: Path, tmp_path: Path) -> None:
    s = uuid.uuid4().hex[:6]
    cfg = node_config(kubeconfig, tmp_path, node_name=f"mn-{s}")
    cfg.server.address = "127.0.0.1"
    cfg.server.client_ca_file = Path(testbed.client_ca_cert)  # the apiserver's client cert (kubectl logs)
    cfg.node.labels = {"fleet": s}
    cfg.node.lease_renew_interval_seconds = 2.0
    cfg.nodes.count = 4
    cfg.nodes.custom = [
        NodeOverride.model_validate({"name": f"mn-{s}-big", "cpu": "64", "labels": {"size": "big"}})
    ]
    names = [f"mn-{s}-{i}" for i in range(4)] + [f"mn-{s}-big"]
    other = f"other-{s}"
    admin = await KubeClient.from_kubeconfig(str(kubeconfig))
    ns = await create_namespace(admin, "fleet")
    wn = WarmletNode(cfg, serve_kubelet_api=True)
    try:
        await admin.post(
            "/api/v1/nodes",
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": other, "labels": {"fleet": s}}},
        )
        await wn.start(within=120)
        assert wn.fleet is not None and wn.pods is not None
        port = wn.fleet.primary.kubelet_port
        assert port > 0

        # one Ready Node per name, each with its own labels and capacity, all at the process's API
        nodes = {n: await admin.get(f"/api/v1/nodes/{n}") for n in names}
        with pytest.raises(ApiError):  # the node: section is the template, not a node
            await admin.get(f"/api/v1/nodes/mn-{s}")
        for n, node in nodes.items():
            assert ready(node)["status"] == "True", n
            labels = node["metadata"]["labels"]
            assert labels["kubernetes.io/hostname"] == n and labels["fleet"] == s
            assert {"type": "Hostname", "address": n} in node["status"]["addresses"]
            assert {"type": "InternalIP", "address": "127.0.0.1"} in node["status"]["addresses"]
            assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == port
        assert [nodes[n]["status"]["capacity"]["cpu"] for n in names] == ["16", "16", "16", "16", "64"]
        assert nodes[names[4]]["metadata"]["labels"]["size"] == "big"
        assert all("size" not in nodes[n]["metadata"]["labels"] for n in names[:4])

        # each its own Lease, owned by its Node, renewed every 2 s
        leases = {n: await admin.get(f"{LEASES}/{n}") for n in names}
        for n, lease in leases.items():
            assert lease["spec"]["holderIdentity"] == n
            assert lease["metadata"]["ownerReferences"][0]["uid"] == nodes[n]["metadata"]["uid"]

        async def all_renewed() -> bool:
            now = {n: (await admin.get(f"{LEASES}/{n}"))["spec"]["renewTime"] for n in names}
            return all(now[n] != leases[n]["spec"]["renewTime"] for n in names)

        await wait_for(all_renewed, 20, 0.5, "every node's lease renewed")

        # two pods bound to each node run and report status; one bound to another node is not ours
        for n in names:
            for i in range(2):
                await admin.post(f"/api/v1/namespaces/{ns}/pods", bound_pod(f"{n}-p{i}", n))
        await admin.post(f"/api/v1/namespaces/{ns}/pods", bound_pod("foreign", other))

        async def running() -> list[JSON] | None:
            pods = [p for p in await list_pods(admin, ns, "app=fleet") if p["spec"]["nodeName"] != other]
            return pods if len(pods) == 10 and all(phase(p) == "Running" for p in pods) else None

        pods = await wait_for(running, 60, 0.5, "10 pods Running on the 5 nodes")
        assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(names * 2)
        for p in pods:
            st = p["status"]
            assert st["hostIP"] == "127.0.0.1" and st["containerStatuses"][0]["ready"] is True, p["metadata"][
                "name"
            ]
            assert any(c["type"] == "Ready" and c["status"] == "True" for c in st["conditions"])
        assert len({p["status"]["podIP"] for p in pods}) == 10  # one backend: pod IPs unique across nodes
        assert set(wn.pods.informer.pods) == {p["metadata"]["uid"] for p in pods}
        foreign = await admin.get(f"/api/v1/namespaces/{ns}/pods/foreign")
        assert phase(foreign) == "Pending" and not foreign["status"].get("containerStatuses")

        # kubectl logs of a pod on the custom node: its Node's endpoint is the process's API
        logs = await asyncio.to_thread(testbed.kubectl, "logs", "-n", ns, f"{names[4]}-p0")
        assert f"on {names[4]}" in logs

        # a deleted Node comes back (a new uid); the other Nodes are not written meanwhile
        gone = names[2]
        uids_others = {
            n: (await admin.get(f"/api/v1/nodes/{n}"))["metadata"]["uid"] for n in names if n != gone
        }
        await admin.delete(f"/api/v1/nodes/{gone}")

        async def back() -> JSON | None:
            with contextlib.suppress(ApiError):
                node = await admin.get(f"/api/v1/nodes/{gone}")
                if (
                    node["metadata"]["uid"] != nodes[gone]["metadata"]["uid"]
                    and ready(node)["status"] == "True"
                ):
                    return node
            return None

        await wait_for(back, 20, 0.3, f"node {gone} registered again")
        assert {
            n: (await admin.get(f"/api/v1/nodes/{n}"))["metadata"]["uid"] for n in uids_others
        } == uids_others

        # SIGTERM: every Node says it stopped, each with its own pods left running
        left = await wn.shutdown(grace=10)
        assert left == 10
        for n in names:
            r = ready(await admin.get(f"/api/v1/nodes/{n}"))
            assert (r["status"], r["reason"]) == ("False", "WarmletStopped"), n
            assert "2 pods left running" in r["message"], (n, r["message"])
    finally:
        await wn.stop()
        for path in [f"/api/v1/namespaces/{ns}", f"/api/v1/nodes/{other}"] + [
            f"/api/v1/nodes/{n}" for n in names
        ]:
            with contextlib.suppress(ApiError):
                await admin.delete(path)
        await admin.close()
