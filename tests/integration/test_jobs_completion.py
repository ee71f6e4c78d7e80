"""Jobs and CronJobs on the virtual node run to completion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from provider.kubeclient import KubeClient
from testbed.testing import (
    create_namespace,
    list_pods,
    node_config,
    phase,
    pod_template,
    running_node,
    wait_for,
)

pytestmark = pytest.mark.integration

RUN = {"warmlet.io/sim-run-seconds": "1"}


async def test_job_completions_5_parallelism_5(kubeconfig: Any, tmp_path: Path) -> None:
    cfg = node_config(kubeconfig, tmp_path)
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    try:
        async with running_node(cfg):
            ns = await create_namespace(client)
            tmpl = pod_template(cfg.node.name, RUN, restartPolicy="Never")
            job = {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": "five"},
                "spec": {"completions": 5, "parallelism": 5, "backoffLimit": 0, "template": tmpl},
            }
            await client.post(f"/apis/batch/v1/namespaces/{ns}/jobs", job)

            async def complete() -> dict[str, Any] | None:
                j = await client.get(f"/apis/batch/v1/namespaces/{ns}/jobs/five")
                conds = {c["type"]: c["status"] for c in (j.get("status") or {}).get("conditions") or []}
                return j if conds.get("Complete") == "True" else None

            j = await wait_for(complete, 90, 0.5, "Job complete")
            assert j["status"]["succeeded"] == 5
            pods = await list_pods(client, ns, "job-name=five")
            assert len(pods) == 5 and all(phase(p) == "Succeeded" for p in pods)
            for p in pods:
                t = p["status"]["containerStatuses"][0]["state"]["terminated"]
                assert t["reason"] == "Completed" and t["exitCode"] == 0
            await client.delete(f"/api/v1/namespaces/{ns}")
    finally:
        await client.close()


async def test_cronjob_every_minute_produces_completed_jobs(kubeconfig: Any, tmp_path: Path) -> None:
    cfg = node_config(kubeconfig, tmp_path)
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    try:
        async with running_node(cfg):
            ns = await create_namespace(client)
            tmpl = pod_template(cfg.node.name, RUN, restartPolicy="OnFailure")
            cj = {
                "apiVersion": "batch/v1",
                "kind": "CronJob",
                "metadata": {"name": "tick"},
                "spec": {
                    "schedule": "* * * * *",
                    "successfulJobsHistoryLimit": 3,
                    "jobTemplate": {"spec": {"template": tmpl}},
                },
            }
            await client.post(f"/apis/batch/v1/namespaces/{ns}/cronjobs", cj)

            async def completed_jobs() -> list[dict[str, Any]]:
                jobs = (await client.list_all(f"/apis/batch/v1/namespaces/{ns}/jobs"))["items"]
                return [j for j in jobs if (j.get("status") or {}).get("succeeded") == 1]

            jobs = await wait_for(completed_jobs, 150, 2.0, "a completed Job of the CronJob")
            assert jobs[0]["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
            pods = await list_pods(client, ns)
            assert any(phase(p) == "Succeeded" for p in pods)
            await client.delete(f"/api/v1/namespaces/{ns}")
    finally:
        await client.close()
