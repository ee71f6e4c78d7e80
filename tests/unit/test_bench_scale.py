"""Pure parts of ``warmlet bench scale``: API call accounting, cases, KWOK's command line, the bare
loop's status, the side-by-side ratios and the issue's goals."""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.apimetrics import RequestKey, account, counter_delta, kind_of, parse_request_totals, sum_calls
from bench.bare_loop import BareLoop, pod_ip, running_status, wants_running
from bench.kwok import ANNOTATION, KwokInstall, cache_dir, fake_node, kwok_args
from bench.procstat import PeakTracker
from bench.scale_contenders import Case, multinode_section, parse_case
from bench.scale_figures import case_ratios, failed, goals, skipped, summary
from provider.kubeclient import KubeClient
from provider.node_object import node_ready


def _series(
    verb: str, resource: str, sub: str, code: str, value: str, group: str = "", version: str = "v1"
) -> str:
    """One line as kube-apiserver exposes it (every label it sets, in its order)."""
    labels = (
        f'code="{code}",component="apiserver",dry_run="",group="{group}",resource="{resource}",'
        f'scope="{"resource" if resource else ""}",subresource="{sub}",verb="{verb}",version="{version}"'
    )
    return f"apiserver_request_total{{{labels}}} {value}\n"


METRICS = (
    "# HELP apiserver_request_total [STABLE] Counter of apiserver requests broken out for each verb.\n"
    "# TYPE apiserver_request_total counter\n"
    + _series("POST", "pods", "", "201", "1000")
    + _series("PATCH", "pods", "status", "200", "1.2e+03")
    + _series("PATCH", "pods", "status", "409", "3")
    + _series("PUT", "leases", "", "200", "7", group="coordination.k8s.io")
    + _series("LIST", "pods", "", "200", "2")
    + _series("GET", "", "/metrics", "200", "4", version="")
    + _series("LIST", "pods", "", "200", "1", version="v2")
    + 'apiserver_request_duration_seconds_count{verb="GET",resource="pods"} 99\n'
    + 'apiserver_request_total_other{verb="GET",resource="pods"} 5\n'
)


def key(verb: str, resource: str, sub: str = "", code: str = "200", group: str = "") -> RequestKey:
    return RequestKey(verb, group, resource, sub, code)


# ------------------------------------------------------------------ apiserver_request_total


def test_parse_request_totals_keeps_the_counter_only_and_sums_versions() -> None:
    got = parse_request_totals(METRICS)
    assert got[key("POST", "pods", code="201")] == 1000
    assert got[key("PATCH", "pods", "status")] == 1200  # exponent notation
    assert got[key("PATCH", "pods", "status", "409")] == 3
    assert got[key("PUT", "leases", group="coordination.k8s.io")] == 7
    assert got[key("LIST", "pods")] == 3  # v1 + v2 summed: version is not kept
    assert got[key("GET", "", "/metrics")] == 4
    assert len(got) == 6  # neither the duration histogram nor a metric that only shares the prefix


def test_parse_request_totals_unescapes_label_values() -> None:
    text = 'apiserver_request_total{verb="GET",resource="x\\"y",subresource="",group="",code="200"} 2\n'
    assert parse_request_totals(text) == {key("GET", 'x"y'): 2.0}


def test_request_key_call_names_subresource_and_group() -> None:
    assert key("PATCH", "pods", "status").call == "PATCH pods/status"
    assert key("PUT", "leases", group="coordination.k8s.io").call == "PUT leases.coordination.k8s.io"
    assert key("POST", "serviceaccounts", "token").call == "POST serviceaccounts/token"


def test_counter_delta_keeps_growth_and_survives_a_restart() -> None:
    a, b = key("GET", "pods"), key("PATCH", "pods", "status")
    before = {a: 10.0, b: 100.0}
    assert counter_delta(before, {a: 15.0, b: 100.0}) == {a: 5.0}  # unchanged series left out
    assert counter_delta(before, {a: 3.0}) == {a: 3.0}  # went down: counted from zero
    assert counter_delta({}, {b: 2.0}) == {b: 2.0}  # new series


def test_kind_of_verbs() -> None:
    assert [kind_of(v) for v in ("GET", "LIST", "WATCH")] == ["read"] * 3
    assert [kind_of(v) for v in ("POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY")] == [
        "write"
    ] * 6
    assert kind_of("CONNECT") == "other"


def test_account_removes_the_bench_pod_posts_and_splits_reads_writes() -> None:
    delta = counter_delta({}, parse_request_totals(METRICS))
    acc = account(delta, 1000, {"POST pods": 1000})
    assert acc.writes == 1200 + 3 + 7  # status patches (ok + conflicts) + leases; POSTs were the bench's
    assert acc.reads == 3  # the LISTs; /metrics is a non-resource request
    assert acc.non_resource == 4
    assert acc.errors == 3
    assert acc.bench_own == {"POST pods": 1000}
    j = acc.as_json()
    assert j["writes_per_pod"] == 1.21
    assert j["per_pod_by_call"]["PATCH pods/status"] == 1.203
    assert "POST pods" not in j["per_pod_by_call"]
    assert j["by_verb"] == {"LIST": 3, "PATCH": 1203, "PUT": 7}


def test_account_never_removes_more_than_was_counted() -> None:
    acc = account({key("POST", "pods", code="201"): 10.0}, 20, {"POST pods": 20})
    assert acc.writes == 0
    assert acc.bench_own == {"POST pods": 10.0}


_VERBS = st.sampled_from(["GET", "LIST", "WATCH", "POST", "PUT", "PATCH", "DELETE", "CONNECT"])
_KEYS = st.builds(
    key, _VERBS, st.sampled_from(["pods", "events", "", "leases"]), st.sampled_from(["", "status"])
)


@given(st.dictionaries(_KEYS, st.integers(min_value=1, max_value=10_000).map(float)), st.integers(0, 20_000))
def test_account_conserves_calls(delta: dict[RequestKey, float], own: int) -> None:
    acc = account(delta, 100, {"POST pods": own})
    resource_calls = sum(v for k, v in delta.items() if k.resource)
    removed = sum(acc.bench_own.values())
    assert math.isclose(acc.reads + acc.writes + acc.other + removed, resource_calls)
    assert math.isclose(acc.non_resource, sum(v for k, v in delta.items() if not k.resource))
    assert removed <= own
    assert all(v > 0 for v in acc.by_call.values())
    assert math.isclose(sum_calls(delta, ["POST pods"]) - removed, acc.by_call.get("POST pods", 0.0))


# ------------------------------------------------------------------ cases and contenders


def test_parse_case() -> None:
    assert parse_case("10000") == Case(1, 10000)
    assert parse_case(" 100x100 ") == Case(100, 100)
    assert parse_case("10x20").pods == 200
    assert parse_case("10000").label == "10000" and parse_case("100x100").label == "100x100"
    for bad in ("", "x100", "100x", "0", "0x5", "ten"):
        with pytest.raises(ValueError):
            parse_case(bad)


@given(st.integers(1, 50), st.integers(1, 50))
def test_case_binds_blocks_of_pods_per_node(nodes: int, per: int) -> None:
    case = Case(nodes, per)
    names = [f"n{i}" for i in range(nodes)]
    assigned = [case.node_of(i, names) for i in range(case.pods)]
    assert all(assigned.count(n) == per for n in names)


def test_multinode_section() -> None:
    assert multinode_section(Case(100, 100)) == {"count": 100}


# ------------------------------------------------------------------ KWOK


def _install(tmp_path: Path) -> Path:
    root = tmp_path / "kwok-v0.8.0"
    (root / "bin").mkdir(parents=True)
    (root / "stages").mkdir()
    binary = root / "bin" / "kwok"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    for name in ("02-node-heartbeat-with-lease.yaml", "01-node-initialize.yaml", "03-pod-ready.yaml"):
        (root / "stages" / name).write_text("kind: Stage\n")
    (root / "stages" / "SOURCE").write_text("# module: sigs.k8s.io/kwok@v0.8.0\n")
    return root


def test_kwok_install_found_in_kustomization_order(tmp_path: Path) -> None:
    inst = KwokInstall.find(_install(tmp_path))
    assert inst is not None
    assert inst.stage_names() == [
        "01-node-initialize.yaml",
        "02-node-heartbeat-with-lease.yaml",
        "03-pod-ready.yaml",
    ]
    assert "sigs.k8s.io/kwok@v0.8.0" in inst.source


def test_kwok_install_incomplete_is_none(tmp_path: Path) -> None:
    root = _install(tmp_path)
    (root / "stages" / "SOURCE").unlink()
    assert KwokInstall.find(root) is None
    assert KwokInstall.find(tmp_path / "absent") is None


def test_kwok_cache_dir_follows_warmlet_cache() -> None:
    assert cache_dir({"WARMLET_CACHE": "/c"}, "v0.8.0") == Path("/c/kwok-v0.8.0")
    assert cache_dir({"HOME": "/h"}, "v0.8.0") == Path("/h/.cache/warmlet/kwok-v0.8.0")


def test_kwok_args_load_every_stage_and_manage_the_run_nodes(tmp_path: Path) -> None:
    inst = KwokInstall.find(_install(tmp_path))
    assert inst is not None
    args = kwok_args(inst, "/k/admin.kubeconfig", "bench-abc")
    assert args[0] == str(inst.binary)
    assert "--kubeconfig=/k/admin.kubeconfig" in args
    assert f"--manage-nodes-with-annotation-selector={ANNOTATION}=bench-abc" in args
    config = next(a for a in args if a.startswith("--config="))
    assert config.removeprefix("--config=").split(",") == [str(p) for p in inst.stages]
    assert "--cidr=10.0.0.0/16" in args  # 10,000 pods on one node fit


def test_fake_node_carries_the_selector_and_readiness() -> None:
    n = fake_node("kwok-1", "bench-abc")
    assert n["metadata"]["annotations"][ANNOTATION] == "bench-abc"
    assert not node_ready(n)
    n["status"] = {
        "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}]
    }
    assert node_ready(n)


# ------------------------------------------------------------------ bare loop


def _pod(phase: str = "Pending", node: str = "n1", deleting: bool = False) -> dict[str, object]:
    meta: dict[str, object] = {"name": "p", "namespace": "ns", "uid": "u-1"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-28T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "i:1"}, {"name": "side", "image": "j"}],
        },
        "status": {"phase": phase},
    }


def test_wants_running() -> None:
    nodes = {"n1", "n2"}
    assert wants_running("ADDED", _pod(), nodes)
    assert wants_running("MODIFIED", _pod(node="n2"), nodes)
    assert not wants_running("DELETED", _pod(), nodes)
    assert not wants_running("ADDED", _pod(node="other"), nodes)
    assert not wants_running("ADDED", _pod(phase="Running"), nodes)
    assert not wants_running("ADDED", _pod(deleting=True), nodes)


def test_running_status_is_complete_in_one_write() -> None:
    st_ = running_status(_pod(), 1_700_000_000.0, "10.128.0.7")
    assert st_["phase"] == "Running"
    assert st_["podIP"] == "10.128.0.7"
    assert {c["name"] for c in st_["containerStatuses"]} == {"app", "side"}
    assert all("running" in c["state"] for c in st_["containerStatuses"])
    ready = {c["type"]: c["status"] for c in st_["conditions"]}
    assert ready["Ready"] == "True" and ready["ContainersReady"] == "True"


@given(st.integers(0, 100_000), st.integers(0, 100_000))
def test_pod_ips_are_distinct(a: int, b: int) -> None:
    assert (pod_ip(a) == pod_ip(b)) == (a == b)


# ------------------------------------------------------------------ figures, ratios, goals


def _row(secs: float, peak: float, writes: float) -> dict[str, object]:
    return {
        "seconds_to_all_running": secs,
        "rss_mb_peak": peak,
        "cpu_seconds": 1.0,
        "api": {"writes_per_pod": writes},
    }


def test_case_ratios_side_by_side() -> None:
    r = case_ratios(
        {"warmlet": _row(39.0, 300.0, 1.0), "kwok": _row(60.0, 150.0, 1.0), "bare": _row(30.0, 60.0, 1.0)}
    )
    assert r["warmlet_over_bare_seconds"] == 1.3
    assert r["warmlet_over_kwok_seconds"] == 0.65
    assert r["kwok_over_bare_seconds"] == 2.0
    assert r["warmlet_over_kwok_rss_peak"] == 2.0
    assert r["api_writes_per_pod"] == {"warmlet": 1.0, "kwok": 1.0, "bare": 1.0}


def test_case_ratios_with_a_skipped_or_missing_contender_are_nan() -> None:
    r = case_ratios({"warmlet": skipped("no multi-node"), "kwok": _row(60.0, 150.0, 1.0)})
    assert math.isnan(r["warmlet_over_kwok_seconds"])
    assert math.isnan(r["warmlet_over_bare_seconds"])
    assert math.isnan(r["api_writes_per_pod"]["warmlet"])


def test_goals_judge_the_10000_case() -> None:
    cases = {
        "1000": {"contenders": {"warmlet": _row(99.0, 999.0, 9.0), "kwok": _row(1.0, 1.0, 1.0)}},
        "10000": {
            "contenders": {
                "warmlet": _row(39.0, 301.0, 1.0),
                "kwok": _row(60.0, 150.0, 1.0),
                "bare": _row(30.0, 60.0, 1.0),
            }
        },
    }
    g = goals(cases)
    assert {v["case"] for v in g.values()} == {"10000"}
    assert g["warmlet_within_1.3x_of_bare"]["met"] is True
    assert g["warmlet_at_least_as_fast_as_kwok"]["met"] is True
    assert g["warmlet_within_2x_kwok_memory"] == {
        "what": "warmlet / KWOK, peak resident memory",
        "case": "10000",
        "value": 2.01,
        "limit": 2.0,
        "met": False,
    }
    assert g["warmlet_at_most_1.2_writes_per_pod"]["met"] is True


def test_goals_fall_back_to_the_largest_one_node_case_and_say_so() -> None:
    cases = {
        "500": {"contenders": {"warmlet": _row(10.0, 100.0, 1.5)}},
        "10x20": {"contenders": {"warmlet": _row(1.0, 1.0, 0.1)}},
    }
    g = goals(cases)
    assert g["warmlet_at_most_1.2_writes_per_pod"] == {
        "what": "warmlet API writes per pod (apiserver_request_total)",
        "case": "500",
        "value": 1.5,
        "limit": 1.2,
        "met": False,
    }
    assert g["warmlet_at_least_as_fast_as_kwok"]["met"] is None  # KWOK did not run


def test_summary_rows_show_skips_ratios_and_goals() -> None:
    cases = {
        "10x20": {
            "contenders": {"warmlet": skipped("skipped: no nodes section"), "kwok": _row(2.0, 50.0, 1.0)}
        }
    }
    result = {"cases": cases, "goals": goals(cases)}
    rows = dict(summary(result))
    assert rows["10x20 warmlet"] == "skipped: no nodes section"
    assert rows["10x20 kwok"].startswith("2.0 s")
    assert "goal: warmlet / KWOK, seconds to all Running <= 1.0" in rows


def test_peak_tracker_reads_this_process() -> None:
    t = PeakTracker.start(os.getpid())
    last = t.poll()
    assert t.first.rss_kb > 0 and last.cpu_seconds >= t.first.cpu_seconds
    assert t.peak_kb(last) >= max(t.first.rss_kb, last.rss_kb)


def test_a_failed_contender_is_reported_and_leaves_the_ratios_nan() -> None:
    rows = {"warmlet": _row(10.0, 100.0, 1.0), "kwok": failed(RuntimeError("kwok exited 1; log: /x"))}
    assert rows["kwok"] == {"failed": "RuntimeError: kwok exited 1; log: /x"}
    assert math.isnan(case_ratios(rows)["warmlet_over_kwok_seconds"])
    table = dict(summary({"cases": {"500": {"contenders": rows}}}))
    assert table["500 kwok"] == "FAILED: RuntimeError: kwok exited 1; log: /x"


class _PatchRecorder:
    def __init__(self) -> None:
        self.patches: list[tuple[str, Any]] = []

    async def patch(self, path: str, body: Any, content_type: str = "") -> dict[str, Any]:
        self.patches.append((path, body))
        return {}


def test_bare_loop_writes_one_running_patch_per_pod() -> None:
    async def scenario() -> list[tuple[str, Any]]:
        rec = _PatchRecorder()
        loop = BareLoop(cast(KubeClient, rec), "ns", frozenset({"n1"}), workers=2)
        a, b = _pod(), _pod()
        b["metadata"] = {"name": "q", "namespace": "ns", "uid": "u-2"}
        for etype, pod in (("ADDED", a), ("MODIFIED", a), ("ADDED", b), ("ADDED", _pod(node="other"))):
            loop.on_event(etype, pod)
        writers = [asyncio.create_task(loop.writer()) for _ in range(loop.workers)]
        await asyncio.wait_for(loop.queue.join(), 5)
        loop.on_event("MODIFIED", a)  # a pod seen again (its own Running write) is not written twice
        await asyncio.wait_for(loop.queue.join(), 5)
        for w in writers:
            w.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        assert loop.patched == 2 and loop.errors == 0
        return rec.patches

    patches = asyncio.run(scenario())
    assert sorted(p for p, _ in patches) == [
        "/api/v1/namespaces/ns/pods/p/status",
        "/api/v1/namespaces/ns/pods/q/status",
    ]
    ips = {body["status"]["podIP"] for _, body in patches}
    assert len(ips) == 2
    assert all(body["status"]["phase"] == "Running" and body["metadata"]["uid"] for _, body in patches)
