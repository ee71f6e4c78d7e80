"""Pool isolation: a reused sandbox shows the next pod nothing of the previous one, and a sandbox
never crosses a namespace, service account or security-context boundary.

One ReplicaSet is scaled 1 → 0 → 1 so its next pod reuses the sandbox its previous pod left in
the pool. Every pod runs the same script: first it LOOKS for what an earlier pod could have left
(emptyDir file, /tmp file, /dev/shm file, lines in /etc/hosts, /etc/hostname and
/etc/resolv.conf, a background process, an exported env var, in /proc of every visible process)
and prints what it found, then it PLANTS all of these itself and sleeps. Between the planting
pod A and the reusing pod B, the ReplicaSet's template is switched to another service account
and another runAsUser, and a ReplicaSet of the same name runs in another namespace: none of
these pods may get A's sandbox.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from e2e_helpers import E2E, LEVEL, wait_for

from provider.app import WarmletNode

pytestmark = pytest.mark.faults

JSON = dict[str, Any]
MARK = "warmlet-leak-marker"
# The script never contains MARK literally (its own /proc/<pid>/cmdline would match): greps use
# the pattern "marke[r]" (which does not match itself) and the plants build MARK at run time.
PAT = "warmlet-leak-marke[r]"

# Look, report, plant, sleep. Every check prints a token when something of an earlier pod is seen.
SCRIPT = f"""
P=warmlet-leak-marke; P="${{P}}r"
found=""
[ -e /scratch/marker ] && found="$found emptydir:$(cat /scratch/marker)"
[ -e /tmp/marker ] && found="$found tmp"
[ -e /dev/shm/marker ] && found="$found devshm"
grep -q '{PAT}' /etc/hosts && found="$found etc-hosts"
grep -q '{PAT}' /etc/resolv.conf && found="$found resolv-conf"
grep -q '{PAT}' /etc/hostname && found="$found etc-hostname"
ps -o args 2>/dev/null | grep -q '{PAT}-proc' && found="$found process"
for f in /proc/[0-9]*/environ; do
  tr '\\0' '\\n' < "$f" 2>/dev/null | grep -q '{PAT}-env' && found="$found env:$f"
done
for f in /proc/[0-9]*/cmdline; do
  tr '\\0' ' ' < "$f" 2>/dev/null | grep -q '{PAT}-proc' && found="$found proc:$f"
done
env | grep -q '{PAT}' && found="$found own-env"
echo "POD=$POD_NAME UID=$(id -u) FOUND=[$found]"
echo "$POD_NAME" > /scratch/marker 2>/dev/null
echo x > /tmp/marker
echo x > /dev/shm/marker 2>/dev/null
echo "10.9.9.9 $P" >> /etc/hosts 2>/dev/null
echo "# $P" >> /etc/resolv.conf 2>/dev/null
export WARMLET_LEAK="$P-env"
sh -c 'sleep 100000' "$P-proc" &
echo PLANTED
exec sleep 100000
"""


def rs_body(name: str, node: str, image: str, sa: str = "default", run_as: int | None = None) -> JSON:
    pod_sc: JSON = {"runAsUser": run_as} if run_as is not None else {}
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}],
                    "terminationGracePeriodSeconds": 1,
                    "automountServiceAccountToken": False,
                    "serviceAccountName": sa,
                    "securityContext": pod_sc,
                    "volumes": [{"name": "scratch", "emptyDir": {}}],
                    "containers": [
                        {
                            "name": "main",
                            "image": image,
                            "command": ["sh", "-c", SCRIPT],
                            "env": [
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                }
                            ],
                            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                        }
                    ],
                },
            },
        },
    }


async def _scale(e2e: E2E, ns: str, name: str, replicas: int) -> None:
    await e2e.client.patch(
        f"/apis/apps/v1/namespaces/{ns}/replicasets/{name}", {"spec": {"replicas": replicas}}
    )


async def _set_template(e2e: E2E, rs_path: str, template: JSON) -> None:
    """Replace the template (a merge patch could not drop a securityContext field)."""
    obj = await e2e.client.get(rs_path)
    obj["spec"]["template"] = template
    await e2e.client.put(rs_path, obj)


async def _running_pod(e2e: E2E, ns: str, name: str) -> JSON:
    """The RS's one pod once it runs and printed its report; returns it with its log."""

    async def one() -> JSON | None:
        pods = [p for p in await e2e.pods(ns, f"app={name}") if not p["metadata"].get("deletionTimestamp")]
        if len(pods) != 1 or (pods[0].get("status") or {}).get("phase") != "Running":
            return None
        code, text = await e2e.pod_log(ns, pods[0]["metadata"]["name"])
        if code != 200 or "PLANTED" not in text:
            return None
        return dict(pods[0], _log=text)

    return await wait_for(one, 180, 0.5, f"a running, planted pod of {ns}/{name}")


async def _no_pods(e2e: E2E, ns: str, name: str) -> None:
    async def gone() -> bool:
        return not await e2e.pods(ns, f"app={name}")

    await wait_for(gone, 120, 0.5, f"pods of {ns}/{name} gone")


def _report(pod: JSON) -> str:
    line = next(ln for ln in pod["_log"].splitlines() if ln.startswith("POD="))
    return line


async def _run_once(e2e: E2E, node: WarmletNode, ns: str, name: str) -> tuple[JSON, str]:
    """Scale the RS to 1, wait for its pod's report, record its sandbox, scale back to 0."""
    await _scale(e2e, ns, name, 1)
    pod = await _running_pod(e2e, ns, name)
    sandbox = await e2e.sandbox_of(node.cfg.node.name, pod["metadata"]["uid"])
    await _scale(e2e, ns, name, 0)
    await _no_pods(e2e, ns, name)
    return pod, sandbox


@pytest.mark.reliability(
    fault="a pod plants files (emptyDir, /tmp, /dev/shm, /etc/hosts, resolv.conf), a background "
    "process and an env var, then is deleted; the next pods try to find them",
    checked="the reusing pod starts warm in the same sandbox and finds nothing; pods of another "
    "namespace, service account or runAsUser never get that sandbox",
)
async def test_reused_sandbox_shows_nothing_of_the_previous_pod(e2e: E2E, reliability: Any) -> None:
    cfg = e2e.config(max_per_workload=4)
    node = await e2e.start(cfg)
    name = cfg.node.name
    ns, other_ns = await e2e.namespace("iso"), await e2e.namespace("iso2")
    await e2e.client.post(f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "other-sa"}})
    rs = rs_body("work", name, e2e.busybox)
    rs_path = f"/apis/apps/v1/namespaces/{ns}/replicasets/work"
    await e2e.client.post(
        f"/apis/apps/v1/namespaces/{ns}/replicasets", {**rs, "spec": {**rs["spec"], "replicas": 0}}
    )

    # A: plants everything, then goes away; its sandbox is parked in the pool.
    a, sandbox_a = await _run_once(e2e, node, ns, "work")
    assert "FOUND=[]" in _report(a), _report(a)
    backend: Any = node.backend
    await wait_for(
        lambda: asyncio.sleep(0, [r for r in backend.pool.idle() if r.sandbox_id == sandbox_a]),
        60,
        0.5,
        "A's sandbox idle in the pool",
    )

    # Same ReplicaSet, other isolation fields: never A's sandbox (and they find nothing either).
    others: dict[str, tuple[JSON, str]] = {}
    for label, sa, run_as in (("serviceAccount", "other-sa", None), ("runAsUser", "default", 1000)):
        variant = rs_body("work", name, e2e.busybox, sa=sa, run_as=run_as)["spec"]["template"]
        await _set_template(e2e, rs_path, variant)
        others[label] = await _run_once(e2e, node, ns, "work")
    same_name = rs_body("work", name, e2e.busybox)
    same_name["spec"]["replicas"] = 0
    await e2e.client.post(f"/apis/apps/v1/namespaces/{other_ns}/replicasets", same_name)
    others["namespace"] = await _run_once(e2e, node, other_ns, "work")
    for label, (pod, sandbox) in others.items():
        assert sandbox != sandbox_a, f"a pod with another {label} got A's sandbox"
        assert (pod["metadata"].get("annotations") or {}).get(LEVEL) != "warm", (label, pod["metadata"])
        assert "FOUND=[]" in _report(pod), (label, _report(pod))
    assert [r.sandbox_id for r in backend.pool.idle() if r.sandbox_id == sandbox_a], (
        "A's sandbox left the pool"
    )

    # B: the original template again: reuses A's sandbox (warm) and must see nothing of A.
    await _set_template(e2e, rs_path, copy.deepcopy(rs["spec"]["template"]))
    await _scale(e2e, ns, "work", 1)
    b = await _running_pod(e2e, ns, "work")
    sandbox_b = await e2e.sandbox_of(name, b["metadata"]["uid"])
    assert sandbox_b == sandbox_a, "B did not reuse A's sandbox"
    assert b["metadata"]["annotations"].get(LEVEL) == "warm", b["metadata"]
    report = _report(b)
    assert f"POD={b['metadata']['name']} " in report, report  # its own downward-API env
    assert "FOUND=[]" in report, f"B saw what A left: {report}"
    reliability.detail(
        "1 warm reuse (same sandbox id), 0 of 10 leak probes positive; "
        "3 boundary pods (namespace, serviceAccount, runAsUser) got 3 other sandboxes"
    )
    await _scale(e2e, ns, "work", 0)
    await _no_pods(e2e, ns, "work")
