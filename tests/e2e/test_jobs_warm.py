"""Jobs on real containers (busybox from the loopback registry) and warm reuse per workload.

Issue 4, end to end: a Job's pods run in containerd via warmlet's CRI backend; their output is in
the CRI log files and behind ``kubectl logs`` (kube-apiserver pods/log → warmlet's kubelet API);
exit codes decide Succeeded/Failed; later pods of the same workload start in the sandbox the
earlier one left in the pool (recorded level ``warm``), never across namespaces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from e2e_helpers import E2E, LEVEL, job, pod_spec, start_count, wait_for


def _job_condition(j: dict[str, Any]) -> str:
    for c in (j.get("status") or {}).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in ("Complete", "Failed"):
            return str(c["type"])
    return ""


async def _wait_job(e2e: E2E, ns: str, name: str, within: float = 180) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        j = await e2e.client.get(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")
        return j if _job_condition(j) else None

    return await wait_for(done, within, 0.5, f"job {ns}/{name} finished")


def _terminated(p: dict[str, Any]) -> dict[str, Any]:
    cs = (p.get("status") or {}).get("containerStatuses") or []
    assert len(cs) == 1, p.get("status")
    term = (cs[0].get("state") or {}).get("terminated")
    assert term is not None, cs[0]
    return dict(cs[0], **{"_term": term})


async def test_job_pods_run_real_containers_logs_and_exit_codes(e2e: E2E) -> None:
    cfg = e2e.config()
    node = cfg.node.name
    await e2e.start(cfg)
    ns = await e2e.namespace()
    before = {lvl: start_count(lvl) for lvl in ("cold", "image_cached", "warm", "precreated")}
    ok_cmd = 'echo "hello from $(hostname)"; echo "to stderr" >&2; echo done'
    await e2e.client.post(
        f"/apis/batch/v1/namespaces/{ns}/jobs", job("ok", pod_spec(node, ok_cmd, e2e.busybox))
    )
    await e2e.client.post(
        f"/apis/batch/v1/namespaces/{ns}/jobs",
        job("bad", pod_spec(node, "echo failing now; exit 3", e2e.busybox)),
    )
    ok = await _wait_job(e2e, ns, "ok")
    bad = await _wait_job(e2e, ns, "bad")
    assert _job_condition(ok) == "Complete", ok.get("status")
    assert ok["status"].get("succeeded") == 1
    assert _job_condition(bad) == "Failed", bad.get("status")
    assert bad["status"].get("failed") == 1

    (okp,) = await e2e.pods(ns, "e2e=ok")
    (badp,) = await e2e.pods(ns, "e2e=bad")
    assert okp["status"]["phase"] == "Succeeded"
    assert badp["status"]["phase"] == "Failed"
    okc, badc = _terminated(okp), _terminated(badp)
    assert okc["_term"]["exitCode"] == 0 and okc["_term"]["reason"] == "Completed"
    assert badc["_term"]["exitCode"] == 3 and badc["_term"]["reason"] == "Error"
    for c in (okc, badc):
        # real containerd containers of the registry's image
        assert c["containerID"].startswith("containerd://"), c
        assert c["image"] == e2e.busybox and c["imageID"], c
        assert c["restartCount"] == 0
    for p in (okp, badp):
        assert p["metadata"]["annotations"].get(LEVEL) in ("cold", "image_cached", "warm"), p["metadata"]

    # the CRI log files, in kubelet's layout under warmlet's log dir
    meta = okp["metadata"]
    log_file = Path(cfg.log_dir) / f"{ns}_{meta['name']}_{meta['uid']}" / "main" / "0.log"
    lines = log_file.read_text().splitlines()
    streams = [(ln.split(" ", 3)[1], ln.split(" ", 3)[3]) for ln in lines]
    assert ("stdout", f"hello from {meta['name']}") in streams, lines
    assert ("stderr", "to stderr") in streams, lines
    assert ("stdout", "done") in streams, lines

    # kubectl logs: kube-apiserver → warmlet's kubelet API → the same files
    status, text = await e2e.pod_log(ns, meta["name"])
    assert status == 200, text
    # stdout and stderr are separate pipes: their relative order is not defined
    assert sorted(text.splitlines()) == sorted([f"hello from {meta['name']}", "to stderr", "done"]), text
    status, text = await e2e.pod_log(ns, badp["metadata"]["name"])
    assert status == 200 and text == "failing now\n", (status, text)

    # both starts were observed by the start latency histogram under their level
    after = {lvl: start_count(lvl) for lvl in before}
    assert sum(after.values()) - sum(before.values()) >= 2, (before, after)


async def test_later_pods_of_a_workload_start_warm_never_across_namespaces(e2e: E2E) -> None:
    cfg = e2e.config()
    node = cfg.node.name
    wl = await e2e.start(cfg)
    ns_a = await e2e.namespace("e2ea")
    ns_b = await e2e.namespace("e2eb")
    warm0 = start_count("warm")
    first0 = {lvl: start_count(lvl) for lvl in ("cold", "image_cached")}
    spec = pod_spec(node, "echo run; sleep 1", e2e.busybox)
    body = job("w", spec, completions=3, parallelism=1)
    await e2e.client.post(f"/apis/batch/v1/namespaces/{ns_a}/jobs", body)
    j = await _wait_job(e2e, ns_a, "w", within=300)
    assert _job_condition(j) == "Complete" and j["status"]["succeeded"] == 3, j["status"]

    pods = sorted(await e2e.pods(ns_a, "e2e=w"), key=lambda p: p["metadata"]["creationTimestamp"])
    assert len(pods) == 3 and all(p["status"]["phase"] == "Succeeded" for p in pods)
    levels = [p["metadata"]["annotations"].get(LEVEL) for p in pods]
    assert levels[0] in ("cold", "image_cached"), levels
    assert levels[1:] == ["warm", "warm"], levels
    # a reused sandbox keeps its network namespace: same pod IP for every pod of the workload
    ips = {p["status"].get("podIP") for p in pods}
    assert len(ips) == 1 and "" not in ips and None not in ips, ips
    assert start_count("warm") - warm0 >= 2
    assert start_count(levels[0]) - first0[levels[0]] >= 1  # the first start, under its own level

    # the pool now holds the workload's sandbox, idle
    backend: Any = wl.backend
    idle_a = {r.sandbox_id for r in backend.pool.idle(namespace=ns_a)}
    assert len(idle_a) == 1, backend.pool.records

    # same Job name and spec in another namespace: never that sandbox
    await e2e.client.post(f"/apis/batch/v1/namespaces/{ns_b}/jobs", job("w", spec))
    jb = await _wait_job(e2e, ns_b, "w")
    assert _job_condition(jb) == "Complete", jb["status"]
    (pb,) = await e2e.pods(ns_b, "e2e=w")
    assert pb["metadata"]["annotations"].get(LEVEL) in ("cold", "image_cached"), pb["metadata"]
    assert pb["status"]["podIP"] not in ips
    idle_b = {r.sandbox_id for r in backend.pool.idle(namespace=ns_b)}
    assert len(idle_b) == 1 and not (idle_b & idle_a), (idle_a, idle_b)
    # the first key's pool is untouched
    assert {r.sandbox_id for r in backend.pool.idle(namespace=ns_a)} == idle_a
    assert all(r.namespace == ns_a for r in backend.pool.records.values() if r.sandbox_id in idle_a)

    # /metrics of the node's kubelet API carries the histogram per level
    status, text = await e2e.kubelet_get(node, "metrics")
    assert status == 200, text[:500]
    assert 'warmlet_pod_start_latency_seconds_count{level="warm"}' in text
    assert 'warmlet_pod_start_latency_seconds_bucket{le="+Inf",level="warm"}' in text
