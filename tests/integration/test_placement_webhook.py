"""The placement webhook against the real apiserver: overflow steering, fallback when the virtual
node is NotReady or full, failing open, and the Job/CronJob policy.

Each test registers its own MutatingWebhookConfiguration limited to namespaces labelled with the
test's tag, and its virtual node carries that tag, so no other test's pods are touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from placement_helpers import (
    SwitchableBackend,
    deployment,
    labelled_namespace,
    placement_config,
    regular_node,
    running_placement,
    tolerates_virtual,
)

from provider.kubeclient import ApiError, KubeClient
from provider.placement.metrics import WEBHOOK_ERRORS
from provider.placement.policy import (
    DECISION_ANNOTATION,
    DELETION_COST_ANNOTATION,
    PLACEMENT_ANNOTATION,
    REASON_ANNOTATION,
    THRESHOLD_ANNOTATION,
)
from provider.placement.webhook import MWC_PATH, unregister
from testbed.testing import list_pods, node_config, running_node, wait_for

pytestmark = pytest.mark.integration
JSON = dict[str, Any]


def decision(p: JSON) -> str | None:
    return (p["metadata"].get("annotations") or {}).get(DECISION_ANNOTATION)


def reason(p: JSON) -> str | None:
    return (p["metadata"].get("annotations") or {}).get(REASON_ANNOTATION)


async def pods_of(client: KubeClient, ns: str, app: str, n: int, bound: bool = True) -> list[JSON]:
    async def ready() -> list[JSON] | None:
        pods = [
            p for p in await list_pods(client, ns, f"app={app}") if not p["metadata"].get("deletionTimestamp")
        ]
        if len(pods) != n or (bound and not all(p["spec"].get("nodeName") for p in pods)):
            return None
        return pods

    return await wait_for(ready, 120, 0.5, f"{n} pods of {app}{' bound' if bound else ''}")


async def virtual_healthy(svc: Any, name: str, want: bool = True) -> bool:
    grace = svc.policy.lease_grace_seconds
    return any(v.name == name and v.healthy(grace) == want for v in svc.view.views())


async def test_overflow_steers_pods_beyond_the_threshold(
    kubeconfig: Path, tmp_path: Path, unique: str
) -> None:
    cfg = node_config(kubeconfig, tmp_path)
    cfg.node.labels = {"placement-test": unique}
    sel = {"placement-test": unique}
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    try:
        async with (
            running_node(cfg),
            running_placement(placement_config(unique, tmp_path), kubeconfig) as svc,
            regular_node(client, f"reg-{unique}", sel) as reg,
        ):
            ns = await labelled_namespace(client, unique)
            await wait_for(
                lambda: virtual_healthy(svc, cfg.node.name), 60, 0.5, "virtual node healthy in view"
            )
            base = f"/apis/apps/v1/namespaces/{ns}/deployments"
            await client.post(
                base, deployment("fixed", 5, {"app": "fixed"}, {THRESHOLD_ANNOTATION: "2"}, sel)
            )
            await client.post(
                base, deployment("auto", 5, {"app": "auto"}, {THRESHOLD_ANNOTATION: "auto"}, sel)
            )

            pods = await pods_of(client, ns, "fixed", 5)
            regular = [p for p in pods if not tolerates_virtual(p)]
            steered = [p for p in pods if tolerates_virtual(p)]
            assert len(regular) == 2 and len(steered) == 3, [(decision(p), reason(p)) for p in pods]
            for p in regular:
                assert p["spec"]["nodeName"] == reg
                assert decision(p) == "regular" and reason(p) == "below-threshold"
            for p in steered:
                assert p["spec"]["nodeName"] == cfg.node.name
                assert decision(p) == "virtual" and reason(p) == "overflow-annotation"
                assert p["metadata"]["annotations"][DELETION_COST_ANNOTATION] == "-1000"
                terms = p["spec"]["affinity"]["nodeAffinity"][
                    "requiredDuringSchedulingIgnoredDuringExecution"
                ]
                exprs = terms["nodeSelectorTerms"][0]["matchExpressions"]
                assert {"key": "type", "operator": "In", "values": ["virtual-kubelet"]} in exprs

            # recommendation from the observed peak: floor(0.8 * 5) = 4 stay regular
            pods = await pods_of(client, ns, "auto", 5)
            assert sorted(decision(p) or "" for p in pods) == ["regular"] * 4 + ["virtual"]
            assert {reason(p) for p in pods if decision(p) == "virtual"} == {"overflow-recommendation"}

            # scaling up counts the pods that exist (listed), not only in-flight admissions
            await client.patch(f"{base}/fixed", {"spec": {"replicas": 7}})
            pods = await pods_of(client, ns, "fixed", 7)
            assert sum(1 for p in pods if not tolerates_virtual(p)) == 2
            assert all(p["spec"]["nodeName"] == cfg.node.name for p in pods if tolerates_virtual(p))
            await client.delete(f"/api/v1/namespaces/{ns}")
    finally:
        await client.close()


async def test_nothing_steered_when_virtual_node_not_ready_or_full(
    kubeconfig: Path, tmp_path: Path, unique: str
) -> None:
    cfg = node_config(kubeconfig, tmp_path)
    cfg.node.labels = {"placement-test": unique}
    cfg.node.pods = "3"
    sel = {"placement-test": unique}
    backend = SwitchableBackend.from_config(cfg.simulated, cfg.log_dir)
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    zero = {THRESHOLD_ANNOTATION: "0"}  # every pod of these Deployments overflows when it can
    try:
        async with (
            running_node(cfg, backend=backend),
            running_placement(placement_config(unique, tmp_path), kubeconfig) as svc,
        ):
            ns = await labelled_namespace(client, unique)
            base = f"/apis/apps/v1/namespaces/{ns}/deployments"
            await wait_for(lambda: virtual_healthy(svc, cfg.node.name), 60, 0.5, "virtual node healthy")

            backend.healthy = False  # warmlet reports its node NotReady
            await wait_for(
                lambda: virtual_healthy(svc, cfg.node.name, False), 60, 0.5, "virtual node NotReady"
            )
            await client.post(base, deployment("down", 2, {"app": "down"}, zero, sel))
            pods = await pods_of(client, ns, "down", 2, bound=False)
            assert not any(tolerates_virtual(p) for p in pods)
            assert {(decision(p), reason(p)) for p in pods} == {("regular", "virtual-unavailable")}

            backend.healthy = True
            await wait_for(lambda: virtual_healthy(svc, cfg.node.name), 60, 0.5, "virtual node Ready again")
            await client.post(base, deployment("fill", 3, {"app": "fill"}, zero, sel))
            pods = await pods_of(client, ns, "fill", 3)
            assert all(tolerates_virtual(p) and p["spec"]["nodeName"] == cfg.node.name for p in pods)

            # the node's 3 pod slots are taken: the next pod stays on regular nodes
            await client.post(base, deployment("full", 1, {"app": "full"}, zero, sel))
            pods = await pods_of(client, ns, "full", 1, bound=False)
            assert not tolerates_virtual(pods[0])
            assert (decision(pods[0]), reason(pods[0])) == ("regular", "virtual-full")
            await client.delete(f"/api/v1/namespaces/{ns}")
    finally:
        await client.close()


async def test_fails_open_on_internal_error_and_when_down(
    kubeconfig: Path, tmp_path: Path, unique: str
) -> None:
    cfg = node_config(kubeconfig, tmp_path)
    cfg.node.labels = {"placement-test": unique}
    sel = {"placement-test": unique}
    pcfg = placement_config(unique, tmp_path)
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    zero = {THRESHOLD_ANNOTATION: "0"}
    try:
        async with running_node(cfg), running_placement(pcfg, kubeconfig) as svc:
            ns = await labelled_namespace(client, unique)
            base = f"/apis/apps/v1/namespaces/{ns}/deployments"
            await wait_for(lambda: virtual_healthy(svc, cfg.node.name), 60, 0.5, "virtual node healthy")
            mwc = await client.get(f"{MWC_PATH}/{pcfg.webhook.configuration_name}")
            hook = mwc["webhooks"][0]
            assert hook["failurePolicy"] == "Ignore" and hook["clientConfig"]["url"] == svc.url
            assert hook["clientConfig"]["caBundle"]

            # an internal error answers allowed without a patch
            assert svc.webhook is not None

            async def broken(*_: Any, **__: Any) -> Any:
                raise RuntimeError("injected by the test")

            errors_before = WEBHOOK_ERRORS.labels(kind="internal")._value.get()
            svc.webhook.owners.resolve = broken  # type: ignore[method-assign]
            await client.post(base, deployment("err", 2, {"app": "err"}, zero, sel))
            pods = await pods_of(client, ns, "err", 2, bound=False)
            assert not any(tolerates_virtual(p) or decision(p) for p in pods)
            assert WEBHOOK_ERRORS.labels(kind="internal")._value.get() >= errors_before + 2

            # webhook stopped, its configuration still registered: pods are still created, unpatched
            await svc.stop()
            assert (await client.get(f"{MWC_PATH}/{pcfg.webhook.configuration_name}"))["metadata"]["name"]
            await client.post(base, deployment("down", 3, {"app": "down"}, zero, sel))
            pods = await pods_of(client, ns, "down", 3, bound=False)
            assert not any(tolerates_virtual(p) or decision(p) for p in pods)
            await client.delete(f"/api/v1/namespaces/{ns}")
    finally:
        await unregister(client, pcfg.webhook.configuration_name)
        await client.close()


def job(name: str, sel: dict[str, str], pod_annotations: dict[str, str], owner: JSON | None = None) -> JSON:
    meta: JSON = {"name": name}
    if owner is not None:
        meta["ownerReferences"] = [
            {
                "apiVersion": "batch/v1",
                "kind": "CronJob",
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": True,
            }
        ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "template": {
                "metadata": {
                    "labels": {"app": name},
                    "annotations": {"warmlet.io/sim-run-seconds": "1", **pod_annotations},
                },
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": sel,
                    "containers": [{"name": "job", "image": "127.0.0.1:5000/sim/job:1"}],
                },
            }
        },
    }


async def test_job_and_cronjob_policy(kubeconfig: Path, tmp_path: Path, unique: str) -> None:
    cfg = node_config(kubeconfig, tmp_path)
    cfg.node.labels = {"placement-test": unique}
    sel = {"placement-test": unique}
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    try:
        async with (
            running_node(cfg),
            running_placement(placement_config(unique, tmp_path), kubeconfig) as svc,
        ):
            ns = await labelled_namespace(client, unique)
            await wait_for(lambda: virtual_healthy(svc, cfg.node.name), 60, 0.5, "virtual node healthy")
            jobs = f"/apis/batch/v1/namespaces/{ns}/jobs"
            cron = await client.post(
                f"/apis/batch/v1/namespaces/{ns}/cronjobs",
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "metadata": {"name": "nightly", "annotations": {PLACEMENT_ANNOTATION: "virtual"}},
                    "spec": {
                        "schedule": "0 0 1 1 *",
                        "suspend": True,
                        "jobTemplate": {"spec": job("t", sel, {})["spec"]},
                    },
                },
            )
            # policy "annotation": the pod template's or the CronJob's annotation decides
            await client.post(jobs, job("marked", sel, {PLACEMENT_ANNOTATION: "virtual"}))
            await client.post(jobs, job("plain", sel, {}))
            await client.post(jobs, job("from-cron", sel, {}, owner=cron))
            marked = (await pods_of(client, ns, "marked", 1))[0]
            from_cron = (await pods_of(client, ns, "from-cron", 1))[0]
            plain = (await pods_of(client, ns, "plain", 1, bound=False))[0]
            assert tolerates_virtual(marked) and marked["spec"]["nodeName"] == cfg.node.name
            assert reason(marked) == "jobs-annotation"
            assert tolerates_virtual(from_cron) and from_cron["spec"]["nodeName"] == cfg.node.name
            assert not tolerates_virtual(plain) and decision(plain) is None

            assert svc.webhook is not None
            svc.webhook.policy = dataclasses.replace(svc.webhook.policy, jobs="always")
            await client.post(jobs, job("always", sel, {}))
            always = (await pods_of(client, ns, "always", 1))[0]
            assert tolerates_virtual(always) and reason(always) == "jobs-always"

            svc.webhook.policy = dataclasses.replace(svc.webhook.policy, jobs="never")
            await client.post(jobs, job("never", sel, {PLACEMENT_ANNOTATION: "virtual"}))
            never = (await pods_of(client, ns, "never", 1, bound=False))[0]
            assert not tolerates_virtual(never) and decision(never) is None
            await client.delete(f"/api/v1/namespaces/{ns}")
    finally:
        await client.close()


async def test_embedded_in_warmlet_run_steers_an_annotated_bare_pod(
    kubeconfig: Path, tmp_path: Path, unique: str
) -> None:
    """``placement:`` in the node's own config runs the webhook in warmlet's TaskGroup."""
    cfg = node_config(kubeconfig, tmp_path)
    cfg.node.labels = {"placement-test": unique}
    cfg.placement = placement_config(unique, tmp_path)
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    name = cfg.placement.webhook.configuration_name
    try:
        async with running_node(cfg):

            async def registered() -> bool:
                try:
                    await client.get(f"{MWC_PATH}/{name}")
                    return True
                except ApiError:
                    return False

            await wait_for(registered, 60, 0.5, "webhook configuration registered")
            ns = await labelled_namespace(client, unique)
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "adhoc",
                    "labels": {"app": "adhoc"},
                    "annotations": {PLACEMENT_ANNOTATION: "virtual"},
                },
                "spec": {
                    "nodeSelector": {"placement-test": unique},
                    "containers": [{"name": "c", "image": "x/y:1"}],
                },
            }

            async def admitted() -> JSON | None:
                # the node's view may still be syncing: a pod admitted before it is kept regular
                with contextlib.suppress(ApiError):
                    await client.delete(f"/api/v1/namespaces/{ns}/pods/adhoc", gracePeriodSeconds=0)
                await wait_for(lambda: _gone(client, ns, "adhoc"), 30, 0.2, "old pod gone")
                p = await client.post(f"/api/v1/namespaces/{ns}/pods", pod)
                return p if decision(p) == "virtual" else None

            created = await wait_for(admitted, 60, 2.0, "pod admitted as virtual")
            assert tolerates_virtual(created) and reason(created) == "pod-annotation"
            bound = (await pods_of(client, ns, "adhoc", 1))[0]
            assert bound["spec"]["nodeName"] == cfg.node.name
            await client.delete(f"/api/v1/namespaces/{ns}")
    finally:
        await unregister(client, name)
        await client.close()


async def _gone(client: KubeClient, ns: str, name: str) -> bool:
    try:
        await client.get(f"/api/v1/namespaces/{ns}/pods/{name}")
        return False
    except ApiError as e:
        return e.not_found
