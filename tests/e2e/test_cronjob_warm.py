"""CronJobs every minute on real containers: warm from the second firing on, and with cron
prewarming even the first firing after warmlet starts (the schedule is known in advance).

Two nodes run side by side so that two firings prove both properties: node A without
prewarming (the second firing reuses the sandbox the first left in the pool), node B with
prewarming and a short lead time (its first firing already finds a prewarmed sandbox).
Kept in one test: every firing costs up to a minute.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from e2e_helpers import E2E, LEVEL, metric, pod_spec, start_count, wait_for

LEAD_SECONDS = 15.0


def cronjob(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name},
        "spec": {
            "schedule": "* * * * *",
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 5,
            "failedJobsHistoryLimit": 5,
            "jobTemplate": {
                "spec": {
                    "backoffLimit": 0,
                    "template": {"metadata": {"labels": {"cron": name}}, "spec": spec},
                }
            },
        },
    }


async def test_cronjob_pods_start_warm_and_prewarm_covers_first_firing(e2e: E2E) -> None:
    # Leave enough time before the next minute boundary for warmlet to start and learn the
    # schedule (it may prewarm at once: the lead time may already have begun).
    if time.time() % 60 > 35:
        await asyncio.sleep(61 - time.time() % 60)
    ns = await e2e.namespace("e2ecron")
    cfg_a = e2e.config()
    cfg_b = e2e.config(cron_prewarm=True, cron_lead_seconds=LEAD_SECONDS)
    cmd = "echo tick; sleep 1"
    # the CronJobs exist before warmlet starts: "the first firing after warmlet starts"
    await e2e.client.post(
        f"/apis/batch/v1/namespaces/{ns}/cronjobs", cronjob("ca", pod_spec(cfg_a.node.name, cmd, e2e.busybox))
    )
    await e2e.client.post(
        f"/apis/batch/v1/namespaces/{ns}/cronjobs", cronjob("cb", pod_spec(cfg_b.node.name, cmd, e2e.busybox))
    )
    prewarms0, warm0 = metric("warmlet_cron_prewarm_total"), start_count("warm")
    node_a = await e2e.start(cfg_a)
    node_b = await e2e.start(cfg_b)
    backend_a: Any = node_a.backend
    backend_b: Any = node_b.backend

    async def prewarmed() -> bool:
        return bool(backend_b.pool.idle(namespace=ns))

    await wait_for(prewarmed, 90, 0.2, "node B prewarmed a sandbox for the CronJob")
    assert metric("warmlet_cron_prewarm_total") > prewarms0
    assert not backend_a.pool.records, "node A must not prewarm (disabled)"

    async def two_firings() -> list[dict[str, Any]] | None:
        pods = await e2e.pods(ns)
        done = [p for p in pods if p["status"].get("phase") == "Succeeded"]
        per = {c: [p for p in done if p["metadata"]["labels"].get("cron") == c] for c in ("ca", "cb")}
        return pods if all(len(v) >= 2 for v in per.values()) else None

    pods = await wait_for(two_firings, 200, 1.0, "two completed firings of each CronJob")
    by_cron: dict[str, list[dict[str, Any]]] = {}
    for p in sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"]):
        assert p["status"].get("phase") == "Succeeded", (p["metadata"]["name"], p["status"])
        by_cron.setdefault(p["metadata"]["labels"]["cron"], []).append(p)
    levels = {c: [p["metadata"]["annotations"].get(LEVEL) for p in ps] for c, ps in by_cron.items()}
    # without prewarming: the first firing builds a sandbox, later ones reuse it
    assert levels["ca"][0] in ("cold", "image_cached"), levels
    assert all(lvl == "warm" for lvl in levels["ca"][1:]), levels
    ips_a = {p["status"]["podIP"] for p in by_cron["ca"]}
    assert len(ips_a) == 1, ips_a
    # with prewarming: warm from the very first firing after warmlet started
    assert all(lvl == "warm" for lvl in levels["cb"]), levels
    assert all(p["spec"]["nodeName"] == cfg_b.node.name for p in by_cron["cb"])
    assert start_count("warm") - warm0 >= 3
    # the pods really ran: their output is behind kubectl logs
    for p in by_cron["ca"][:1] + by_cron["cb"][:1]:
        status, text = await e2e.pod_log(ns, p["metadata"]["name"])
        assert (status, text) == (200, "tick\n"), (p["metadata"]["name"], status, text)
