"""cold-vs-warm: result shape, ratios and summary rows from measured seconds (pure parts)."""

from __future__ import annotations

import math

from bench.cold_vs_warm import build_result, summary_rows
from bench.harness import owned_pod


def _result() -> dict:  # type: ignore[type-arg]
    samples = {"cold": [1.0, 1.2], "image_cached": [0.2, 0.3], "warm": [0.1, 0.12]}
    floor = {"start_s": [0.05, 0.06], "relayed_start_s": [0.055, 0.066], "stop_remove_s": [0.03]}
    mism = [{"pod": "warm-1", "intended": "warm", "observed": "image_cached"}]
    return build_result(2, "img", samples, floor, mism, {"name": "n"})


def test_build_result_levels_floor_ratios() -> None:
    r = _result()
    assert set(r["levels"]) == {"cold", "image_cached", "warm"}
    assert r["levels"]["warm"]["p50_ms"] == 100.0
    assert r["floor"]["p50_ms"] == 50.0 and r["floor"]["stop_remove"]["n"] == 1
    assert r["ratios"] == {
        "image_cached_over_warm_p50": 2.0,
        "cold_over_warm_p50": 10.0,
        "warm_over_floor_p50": 2.0,
        "relayed_over_direct_floor_p50": 1.1,
    }
    assert r["floor"]["relayed"]["p50_ms"] == 55.0
    assert r["level_mismatches"] == 1
    assert r["samples_ms"]["floor"] == [50.0, 60.0]


def test_ratios_nan_when_a_level_was_not_run() -> None:
    r = build_result(1, "img", {"warm": [0.1]}, {"start_s": [0.05]}, [], {})
    assert math.isnan(r["ratios"]["cold_over_warm_p50"])
    assert r["ratios"]["warm_over_floor_p50"] == 2.0


def test_summary_rows() -> None:
    rows = dict(summary_rows(_result()))
    assert rows["warm (n=2) p50/p95/p99 ms"] == "100 / 120 / 120"
    assert rows["floor: bare CRI create+start ms"] == "50 / 60 / 60"
    assert rows["floor through the CRI relay ms"] == "55 / 66 / 66"
    assert rows["floor through the CRI relay / direct (p50)"] == "1.1x"
    assert rows["cold / warm (p50)"] == "10.0x"
    assert rows["start-level annotation mismatches"] == "1"


def test_owned_pod_has_controller_owner_and_hold_command() -> None:
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u", "controller": True}
    p = owned_pod("p", "node-a", "img", owner)
    assert p["metadata"]["ownerReferences"] == [owner]
    c = p["spec"]["containers"][0]
    assert c["image"] == "img" and "trap" in c["command"][-1]
    assert p["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "node-a"}


def test_configmap_owner_gives_a_stable_workload_key() -> None:
    from provider.workload import direct_owner

    owner = {"kind": "ConfigMap", "name": "o", "controller": True}
    p = owned_pod("p", "n", "img", owner)
    p["metadata"]["uid"] = "uid-1"
    assert direct_owner(p) == ("ConfigMap", "o")
