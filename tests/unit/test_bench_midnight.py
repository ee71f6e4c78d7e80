"""Pure parts of the midnight burst's punctual variant, its start times, the floor's figures, the goals."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.midnight_burst import add_arguments, plots, ratios_for, summary_rows, variants
from bench.midnight_figures import (
    SOURCE_ANNOTATION,
    SOURCE_KUBELET,
    best_concurrency,
    better_start,
    cronjob_of,
    duplicate_jobs,
    punctual_goals,
    punctual_lead,
    started_at,
    started_figures,
    sweep_points,
    variant_figures,
    wave_rate,
)
from bench.midnight_variants import PodTimeline, Variant, VariantRun, cronjob, variant_pool, variant_sections
from bench.podwatch import START_LEVEL_ANNOTATION as LEVEL
from bench.podwatch import PodTimes
from bench.rbac_node import PUNCTUAL_RBAC_FILE, RBAC_FILE, warmlet_cluster_role
from provider.pods.hold import STARTED_AT_ANNOTATION

JSON = dict[str, Any]
T0 = 1_790_000_000.0  # 2026-09-21T...Z, a whole second


def pod(ann: str | None = None, *starts: str, terminated: str | None = None) -> JSON:
    cs: list[JSON] = [{"name": f"c{i}", "state": {"running": {"startedAt": s}}} for i, s in enumerate(starts)]
    if terminated:
        cs.append({"name": "t", "state": {"terminated": {"startedAt": terminated, "exitCode": 0}}})
    meta: JSON = {"name": "p", "annotations": {STARTED_AT_ANNOTATION: ann} if ann else {}}
    return {"metadata": meta, "status": {"phase": "Running", "containerStatuses": cs}}


# ------------------------------------------------------------------ the real start of a pod


def test_started_at_prefers_warmlets_millisecond_annotation() -> None:
    got = started_at(pod("2026-11-28T00:00:00.123Z", "2026-11-28T00:00:00Z"))
    assert got is not None
    t, source = got
    assert source == SOURCE_ANNOTATION
    assert round(t % 60, 3) == 0.123


def test_started_at_falls_back_to_kubelets_seconds_earliest_container() -> None:
    got = started_at(pod(None, "2026-11-28T00:00:02Z", "2026-11-28T00:00:01Z"))
    assert got is not None and got[1] == SOURCE_KUBELET and got[0] % 60 == 1.0
    t = started_at(pod(None, terminated="2026-11-28T00:00:00Z"))
    assert t is not None and t[0] % 60 == 0.0  # a container that already finished started too


def test_started_at_ignores_an_unreadable_annotation_and_none_without_a_start() -> None:
    got = started_at(pod("soon", "2026-11-28T00:00:03Z"))
    assert got is not None and got[1] == SOURCE_KUBELET
    assert started_at(pod()) is None
    assert started_at({"metadata": {"name": "p"}}) is None


def test_better_start_upgrades_to_the_annotation_only() -> None:
    k, a = (T0 + 1, SOURCE_KUBELET), (T0 + 0.5, SOURCE_ANNOTATION)
    assert better_start(None, k) == k
    assert better_start(k, a) == a
    assert better_start(a, k) == a
    assert better_start(a, None) == a
    assert better_start(k, (T0 + 2, SOURCE_KUBELET)) == k  # the first kubelet value stays


def test_started_figures_counts_before_within_and_sources() -> None:
    starts = [
        (T0 - 0.01, SOURCE_ANNOTATION),
        (T0 + 0.5, SOURCE_ANNOTATION),
        (T0 + 2.9, SOURCE_ANNOTATION),
        (T0 + 4.0, SOURCE_KUBELET),
    ]
    f = started_figures(starts, T0, expect=5)
    assert f["started"] == 4 and f["expected"] == 5
    assert f["before_instant"] == 1
    assert f["within_3s"] == 3 and f["within_1s"] == 2
    assert f["max_ms"] == 4000.0
    assert f["sources"] == {SOURCE_ANNOTATION: 3, SOURCE_KUBELET: 1}
    empty = started_figures([], T0, 3)
    assert empty["started"] == 0 and math.isnan(empty["max_ms"])


@given(st.lists(st.integers(min_value=-5000, max_value=60000), max_size=50))
def test_started_figures_partition(ms: list[int]) -> None:
    deltas = [m / 1000 for m in ms]  # millisecond starts, as the annotation has them
    f = started_figures([(T0 + d, SOURCE_ANNOTATION) for d in deltas], T0, len(deltas))
    assert f["before_instant"] == sum(1 for d in deltas if d < 0)
    assert f["within_1s"] <= f["within_3s"] <= f["started"] == len(deltas)


# ------------------------------------------------------------------ duplicates


def job(name: str, owner: str | None = None) -> JSON:
    refs = [{"kind": "CronJob", "name": owner, "apiVersion": "batch/v1"}] if owner else []
    return {"metadata": {"name": name, "ownerReferences": refs}}


def test_duplicate_jobs_counts_cronjobs_with_more_than_one_job() -> None:
    assert cronjob_of(job("cj-00001-29833920", "cj-00001")) == "cj-00001"
    assert cronjob_of(job("cj-00002-29833920")) == "cj-00002"  # no owner (yet): the name says it
    jobs = [job("cj-00001-29833920", "cj-00001"), job("cj-00002-29833920", "cj-00002")]
    assert duplicate_jobs(jobs) == 0
    jobs.append(job("cj-00001-x9k2", "cj-00001"))  # a second Job of cj-00001 for the instant
    assert duplicate_jobs(jobs) == 1
    assert duplicate_jobs([]) == 0


def test_variant_figures_report_the_real_start_and_duplicates() -> None:
    times = {
        "cj-a": PodTimes(created=T0 - 50, bound=T0 - 49, running=T0 + 1.5, annotations={LEVEL: "precreated"}),
        "cj-b": PodTimes(created=T0 - 50, bound=T0 - 49, running=T0 + 2.5, annotations={LEVEL: "precreated"}),
    }
    starts = {"cj-a": (T0 + 0.2, SOURCE_ANNOTATION), "cj-b": (T0 + 0.4, SOURCE_ANNOTATION), "x": (T0, "a")}
    fig = variant_figures(times, T0, 2, 0, {}, starts, duplicates=0)
    s = fig["started_minus_instant"]
    assert s["started"] == 2 and s["p99_ms"] == 400.0 and s["before_instant"] == 0
    assert fig["bound_before_instant"] == 2 and fig["duplicates"] == 0 and fig["extra_pods"] == 0
    assert fig["p50_ms"] == 1500.0  # observed Running - instant stays the top-level figure


# ------------------------------------------------------------------ the floor


def test_wave_rate() -> None:
    assert wave_rate(100, 10.0, 13.2) == 31.25
    assert math.isnan(wave_rate(0, 10.0, 11.0)) and math.isnan(wave_rate(5, 10.0, 10.0))


def test_sweep_points_never_exceed_the_pods_per_point() -> None:
    assert sweep_points((1, 2, 4, 6, 8, 16, 32), 60) == [1, 2, 4, 6, 8, 16, 32]
    assert sweep_points((1, 2, 4, 6, 8, 16, 32), 20) == [1, 2, 4, 6, 8, 16, 20]
    assert sweep_points((32, 4, 4), 16) == [4, 16]
    assert sweep_points((1, 2), 0) == []


@given(st.lists(st.integers(1, 64), max_size=10), st.integers(0, 64))
def test_sweep_points_are_distinct_and_bounded(sweep: list[int], pods: int) -> None:
    pts = sweep_points(sweep, pods)
    assert len(set(pts)) == len(pts) and all(1 <= c <= pods for c in pts)
    assert all(c in pts for c in sweep if c <= pods)


def test_best_concurrency_ties_go_to_fewer_calls_in_flight() -> None:
    assert best_concurrency({1: 10.0, 4: 30.0, 8: 30.0, 32: 17.0}) == 4
    assert best_concurrency({6: math.nan, 2: 5.0}) == 2
    assert best_concurrency({}) is None and best_concurrency({3: math.nan}) is None


@given(st.dictionaries(st.integers(1, 64), st.floats(0, 1000), min_size=1))
def test_best_concurrency_has_the_best_rate(rates: dict[int, float]) -> None:
    best = best_concurrency(rates)
    assert best is not None and rates[best] == max(rates.values())
    assert all(c >= best for c, r in rates.items() if r == rates[best])


# ------------------------------------------------------------------ goals


def variant(p99: float, within_3s: int, before: int = 0, expected: int = 100, within_1s: int = 0) -> JSON:
    s = {"p99_ms": p99, "within_3s": within_3s, "within_1s": within_1s, "before_instant": before}
    return {"started_minus_instant": {**s, "started": expected, "expected": expected}, "duplicates": 0}


def test_punctual_goals_against_the_floor() -> None:
    floor = {"p99_ms": 3200.0, "within_3s": 90}
    g = punctual_goals(variant(3600.0, 85), floor)
    assert g["p99_over_floor_p99"] == 1.12 and g["p99_goal_met"]
    assert g["within_3s_over_floor"] == 0.94 and g["within_3s_goal_met"]
    assert g["none_before_instant"] and g["no_duplicates"]
    bad = punctual_goals({**variant(4000.0, 70, before=1), "duplicates": 2}, floor)
    assert not bad["p99_goal_met"] and not bad["within_3s_goal_met"]
    assert not bad["none_before_instant"] and not bad["no_duplicates"]


def test_punctual_goals_simulated_all_within_one_second() -> None:
    assert punctual_goals(variant(800.0, 2000, expected=2000, within_1s=2000), None)["all_within_1s"]
    assert not punctual_goals(variant(1100.0, 2000, expected=2000, within_1s=1999), None)["all_within_1s"]


def test_ratios_for_names_a_missing_floor() -> None:
    results = {
        "cri/punctual": variant(1.0, 1),
        "simulated/punctual": variant(1.0, 1, expected=1, within_1s=1),
    }
    r = ratios_for(results, {})
    assert r["cri"]["punctual"] == {"floor": "not measured (--no-floor)"}
    assert r["simulated"]["punctual"]["all_within_1s"]


# ------------------------------------------------------------------ the punctual variant's setup


def test_punctual_cronjob_opts_in() -> None:
    assert cronjob("a", "0 0 * * *", "Etc/UTC", {}, punctual=True)["metadata"]["annotations"] == {
        "warmlet.io/punctual": "true"
    }
    assert "annotations" not in cronjob("a", "0 0 * * *", "Etc/UTC", {})["metadata"]


def test_punctual_lead_grows_with_the_burst() -> None:
    assert punctual_lead(20) == punctual_lead(200) == 60.0
    assert punctual_lead(2000) == 200.0
    assert punctual_lead(6000) <= 600.0  # punctual.max_lead_seconds' default


def test_punctual_variant_config_prewarms_before_the_jobs_arrive() -> None:
    v = Variant("cri", "punctual", 200, 1, 30.0, 60.0, 6)
    assert variant_pool(v)["cron_prewarm"] and variant_pool(v)["cron_lead_seconds"] == 90.0
    assert variant_sections(v) == {
        "punctual": {"enabled": True, "lead_seconds": 60.0},
        "pods": {"start_wave_concurrency": 6},
    }
    off = Variant("cri", "no-prewarm", 200, 1, 30.0)
    assert not variant_pool(off)["cron_prewarm"] and variant_sections(off) == {}
    assert variant_pool(Variant("cri", "prewarm", 200, 1, 30.0))["cron_lead_seconds"] == 30.0


def test_timeline_keeps_the_millisecond_start_and_waits_for_it() -> None:
    tl = PodTimeline(client=None, ns="ns", expect=1)  # type: ignore[arg-type]
    tl.observe(pod(None, "2026-11-28T00:00:00Z"), 5.0)
    assert tl.started["p"][1] == SOURCE_KUBELET and not tl.settled()
    running_with_level = pod("2026-11-28T00:00:00.250Z", "2026-11-28T00:00:00Z")
    running_with_level["metadata"]["annotations"][LEVEL] = "precreated"
    tl.observe(running_with_level, 6.0)
    assert tl.started["p"][1] == SOURCE_ANNOTATION and tl.settled()


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_variants_three_modes_side_by_side_per_backend() -> None:
    labels = [v.label for v in variants(parse(), quick=False)]
    assert labels == [
        "cri/no-prewarm",
        "cri/prewarm",
        "cri/punctual",
        "simulated/no-prewarm",
        "simulated/prewarm",
        "simulated/punctual",
    ]
    vs = variants(parse("--backend", "cri", "--pods-cri", "20"), quick=False)
    assert [v.pods for v in vs] == [20, 20, 20]
    full = {v.backend: v.punctual_lead for v in variants(parse(), quick=False)}
    assert full == {"cri": 60.0, "simulated": 200.0}  # 2,000 pods need a longer lead to all be held
    vs = variants(parse("--punctual-lead-seconds", "30"), quick=False)
    assert {v.punctual_lead for v in vs} == {30.0}
    quick = variants(parse(), quick=True)
    assert {v.backend for v in quick} == {"simulated"} and [v.mode for v in quick][-1] == "punctual"
    with pytest.raises(ValueError):
        variants(parse("--modes", "prewarm,eager"), quick=False)


def test_summary_rows_old_and_new_results() -> None:
    old = {
        "variants": {
            "cri/prewarm": {
                "running": 1,
                "expected": 1,
                "p50_ms": 1.0,
                "p99_ms": 2.0,
                "seconds_to_all_running": 1.0,
                "within_3s": 1,
                "split": {"control_plane_instant_to_bound": {"p50_ms": 1.0}},
                "start_levels": {},
            }
        },
        "ratios": {"cri": {"p50_no_prewarm_over_prewarm": 1.5, "p99_no_prewarm_over_prewarm": 1.4}},
    }
    assert [k for k, _ in summary_rows(old)] == ["cri/prewarm", "cri ratios"]
    new = json.loads(json.dumps(old))
    new["variants"]["cri/prewarm"]["started_minus_instant"] = variant(5.0, 1)["started_minus_instant"]
    new["floor"] = {"cri": {"concurrency": 6, "sweep": {"rate_per_s_by_concurrency": {"4": 30.0}}}}
    new["ratios"]["cri"]["punctual"] = {"p99_goal_met": True}
    keys = [k for k, _ in summary_rows(new)]
    assert "cri/prewarm startedAt-instant" in keys and "cri punctual goals" in keys
    assert "cri floor (bare CRI, 6 in flight)" in keys


def test_punctual_rbac_role_is_the_files() -> None:
    role = warmlet_cluster_role(PUNCTUAL_RBAC_FILE, "x")
    assert role["metadata"]["name"] == "x"
    assert any("jobs" in r["resources"] and "create" in r["verbs"] for r in role["rules"])
    assert warmlet_cluster_role(RBAC_FILE)["metadata"]["name"] == "warmlet-bench"
    lease = warmlet_cluster_role(RBAC_FILE, "y", "Role")  # the node heartbeat Lease's Role
    assert lease["metadata"] == {"name": "y", "namespace": "kube-node-lease"}
    assert any("leases" in r["resources"] and "update" in r["verbs"] for r in lease["rules"])


def test_plots_started_per_backend_with_the_floor(tmp_path: Path) -> None:
    vs = [Variant("cri", m, 3, 1, 10.0) for m in ("no-prewarm", "prewarm", "punctual")]
    vs.append(Variant("simulated", "punctual", 3, 1, 10.0))
    runs = [VariantRun({}, [900.0, 1000.0], [-0.5, 0.0, 800.0]) for _ in vs]
    floors = {"cri": {"concurrency": 6, "started_ms": [100.0, 200.0]}}
    got = {Path(p).name for p in plots(tmp_path, vs, runs, floors)}
    assert got == {
        "midnight-burst-started-cri.png",
        "midnight-burst-started-simulated.png",
        "midnight-burst.png",  # the CRI started plot, the one bench/RESULTS.md shows
        "midnight-burst-running.png",
    }
    assert (tmp_path / "midnight-burst.png").read_bytes() == (
        tmp_path / "midnight-burst-started-cri.png"
    ).read_bytes()
