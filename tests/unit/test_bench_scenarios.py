"""Pure parts of the midnight-burst, scale and kubelet-baseline scenarios."""

from __future__ import annotations

import math
import time

from hypothesis import given
from hypothesis import strategies as st

from bench.kubelet_baseline import compare, kubelet_config, kubelet_error
from bench.midnight_figures import daily_schedule, level_counts, next_boundary, variant_figures, within
from bench.midnight_variants import PodTimeline, cronjob, prewarmed_from_log
from bench.podwatch import START_LEVEL_ANNOTATION as LEVEL
from bench.podwatch import PodTimes
from bench.procstat import parse_stat_cpu_seconds, parse_status_kb
from bench.scale import lags, warmlet_wrote_status

# ------------------------------------------------------------------ schedule boundary


def test_next_boundary_leaves_the_lead() -> None:
    assert next_boundary(1000.0, 10) == 1020.0  # 1020 is 20 s away
    assert next_boundary(1015.0, 10) == 1080.0  # 1020 is only 5 s away: next minute
    assert next_boundary(1020.0, 0) == 1020.0  # exactly on a boundary with no lead needed
    assert next_boundary(1020.0, 0.5) == 1080.0


@given(st.floats(min_value=1e9, max_value=2e9), st.floats(min_value=0, max_value=600))
def test_next_boundary_is_the_first_minute_with_enough_lead(now: float, lead: float) -> None:
    t = next_boundary(now, lead)
    assert t % 60 == 0
    assert t - now >= lead
    assert t - 60 - now < lead  # the boundary before it would not have left enough time


def test_daily_schedule_names_the_boundary_in_utc() -> None:
    instant = time.mktime((2026, 11, 23, 23, 59, 0, 0, 0, 0)) - time.timezone
    sched, tz = daily_schedule(instant)
    assert (sched, tz) == ("59 23 * * *", "Etc/UTC")


def test_cronjob_runs_parallelism_pods_once() -> None:
    cj = cronjob("a", "0 0 * * *", "Etc/UTC", {"spec": {}}, parallelism=3)
    job = cj["spec"]["jobTemplate"]["spec"]
    assert job["parallelism"] == job["completions"] == 3 and job["backoffLimit"] == 0
    assert cj["spec"]["timeZone"] == "Etc/UTC"


# ------------------------------------------------------------------ within 3 s, levels


def test_within_counts_inclusive_limit() -> None:
    assert within([0.5, 2.99, 3.0, 3.01, 10.0]) == 3
    assert within([], 3.0) == 0
    assert within([1.0, 2.0], 1.5) == 1


def test_level_counts_marks_missing_annotations() -> None:
    assert level_counts(["warm", "warm", None, "image_cached"]) == {
        "image_cached": 1,
        "unknown": 1,
        "warm": 2,
    }


def test_variant_figures_split_control_plane_and_warmlet() -> None:
    instant = 1000.0
    times = {
        "a": PodTimes(created=1000.5, bound=1001.0, running=1001.5, annotations={LEVEL: "warm"}),
        "b": PodTimes(created=1001.0, bound=1002.0, running=1004.0, annotations={LEVEL: "image_cached"}),
        "c": PodTimes(created=1001.0, bound=1002.0, running=None),
    }
    fig = variant_figures(times, instant, expect=3, prewarmed=2, meta={"x": 1})
    assert fig["running"] == 2 and fig["expected"] == 3
    assert fig["within_3s"] == 1
    assert fig["seconds_to_all_running"] is None  # one never ran
    assert fig["seconds_to_all_bound"] == 2.0
    assert fig["split"]["warmlet_bound_to_running"]["n"] == 2
    assert fig["split"]["warmlet_bound_to_running"]["p99_ms"] == 2000.0
    assert fig["split"]["control_plane_instant_to_bound"]["p50_ms"] == 2000.0
    assert fig["start_levels"] == {"image_cached": 1, "unknown": 1, "warm": 1}
    assert fig["prewarmed_at_instant"] == 2 and fig["x"] == 1


def test_pod_timeline_records_first_events_and_the_start_level() -> None:
    tl = PodTimeline(client=None, ns="ns", expect=1)  # type: ignore[arg-type]

    def pod(phase: str, node: str = "", **ann: str) -> dict:  # type: ignore[type-arg]
        meta = {"name": "p", "annotations": ann}
        return {"metadata": meta, "spec": {"nodeName": node}, "status": {"phase": phase}}

    tl.observe(pod("Pending"), 10.0)
    tl.observe(pod("Pending", "n1"), 11.0)
    assert not tl.all_running.is_set()
    tl.observe(pod("Running", "n1"), 12.0)
    assert tl.pods["p"].level is None and tl.all_running.is_set()
    tl.observe(pod("Running", "n1", **{LEVEL: "warm"}), 13.0)
    tl.observe(pod("Running", "n1"), 14.0)  # an event without the annotation keeps the level seen
    t = tl.pods["p"]
    assert (t.created, t.bound, t.running, t.level) == (10.0, 11.0, 12.0, "warm")


def test_prewarmed_from_log_sums_counts() -> None:
    text = (
        'ts=1 level=info msg="prewarmed cronjob key=ns/CronJob/a#1 count=1 fires_in=29.1s"\n'
        'ts=2 level=info msg="prewarmed cronjob key=ns/CronJob/b#2 count=3 fires_in=28.0s"\n'
        'ts=3 level=warning msg="prewarm failed cronjob=x err=boom"\n'
    )
    assert prewarmed_from_log(text) == 4
    assert prewarmed_from_log("") == 0


# ------------------------------------------------------------------ /proc parsing


STATUS = """Name:\tpython
VmPeak:\t  812344 kB
VmHWM:\t  101200 kB
VmRSS:\t   98765 kB
Threads:\t3
"""


def test_parse_status_kb() -> None:
    assert parse_status_kb(STATUS) == 98765
    assert parse_status_kb(STATUS, "VmHWM") == 101200
    assert parse_status_kb(STATUS, "VmSwap") == 0


def test_parse_stat_cpu_seconds_with_spaces_in_comm() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
    fields = ["S", "1", "1", "1", "0", "-1", "4194560", "10", "0", "0", "0", "250", "50", "0", "0"]
    text = "1234 (warmlet run (x)) " + " ".join(fields) + " 20 0 3\n"
    assert math.isclose(parse_stat_cpu_seconds(text, 100), 3.0)


def test_warmlet_wrote_status_and_lags() -> None:
    assert not warmlet_wrote_status({"status": {"phase": "Pending", "qosClass": "BestEffort"}})
    assert warmlet_wrote_status({"status": {"phase": "Pending", "conditions": [{"type": "Initialized"}]}})
    assert warmlet_wrote_status({"status": {"hostIP": "127.0.0.1"}})
    assert lags({"a": 1.0, "b": 2.0}, {"a": 1.5, "c": 9.0}) == [0.5]


# ------------------------------------------------------------------ kubelet baseline


def test_kubelet_config_allows_this_machine() -> None:
    cfg = kubelet_config("unix:///x.sock", "/ca.crt", 10250, 10248, "/wk")
    assert cfg["failCgroupV1"] is False and cfg["failSwapOn"] is False
    assert cfg["cgroupDriver"] == "cgroupfs" and cfg["containerRuntimeEndpoint"] == "unix:///x.sock"
    assert cfg["authentication"]["x509"]["clientCAFile"] == "/ca.crt"


def test_kubelet_error_picks_klog_errors() -> None:
    text = (
        "I1123 10:00:00.000 1 server.go:1] starting\n"
        'E1123 10:00:01.000 1 run.go:72] "command failed" err="kubelet is configured to not run on a host '
        'using cgroup v1"\n'
    )
    assert "cgroup v1" in kubelet_error(text)
    assert kubelet_error("just text") == "just text"


def test_compare_kubelet_to_warmlet() -> None:
    k = {"cold": {"p50_ms": 3000.0, "p99_ms": 4000.0}, "image_cached": {"p50_ms": 900.0, "p99_ms": 1000.0}}
    w = {
        "cold": {"p50_ms": 1500.0, "p99_ms": 2000.0},
        "image_cached": {"p50_ms": 300.0, "p99_ms": 500.0},
        "warm": {"p50_ms": 180.0, "p99_ms": 200.0},
    }
    r = compare(k, w)
    assert r["cold_kubelet_over_warmlet_p50"] == 2.0
    assert r["image_cached_kubelet_over_warmlet_p99"] == 2.0
    assert r["kubelet_image_cached_over_warmlet_warm_p50"] == 5.0
    assert compare(k, None) == {}
