"""The probe benchmark's pure parts: counting probes from a metrics exposition, per-probe CPU,
and the pods it creates."""

from __future__ import annotations

import pytest

from bench.probes import maybe_ratio, per_probe_ms, pin, probe_total, probed_cri_pod, probed_sim_pod

pytestmark = pytest.mark.unit

L = 'container="app",namespace="a",pod="p-0",pod_uid="u0"'
EXPOSITION = f"""\
# HELP prober_probe_total [ALPHA] Cumulative number of a probe for a container by result.
# TYPE prober_probe_total counter
prober_probe_total{{{L},probe_type="Readiness",result="successful"}} 12
prober_probe_total{{{L},probe_type="Liveness",result="failed"}} 3
prober_probe_total{{{L},probe_type="Startup",result="successful"}} 1.5e+01
# HELP prober_probe_duration_seconds [ALPHA] Duration in seconds for a probe response.
prober_probe_duration_seconds_count{{container="app",probe_type="Readiness"}} 99
"""


def test_probe_total_sums_every_series_and_nothing_else() -> None:
    assert probe_total(EXPOSITION) == 30.0
    assert probe_total("") == 0.0


def test_per_probe_ms_and_ratio_handle_nothing_measured() -> None:
    assert per_probe_ms(0.5, 1000) == 0.5
    assert per_probe_ms(0.5, 0) is None
    assert maybe_ratio(2.0, 1.0) == 2.0
    assert maybe_ratio(None, 1.0) is None


def test_probed_pods_carry_readiness_and_liveness_with_the_period() -> None:
    sim = pin(probed_sim_pod("a", "n1", 7), "n1")
    c = sim["spec"]["containers"][0]
    assert c["readinessProbe"]["periodSeconds"] == 7 and c["livenessProbe"]["periodSeconds"] == 7
    assert sim["spec"]["nodeName"] == "n1" and "nodeSelector" not in sim["spec"]
    cri = probed_cri_pod("b", "n2", "img", 10)["spec"]["containers"][0]
    assert cri["readinessProbe"]["httpGet"]["port"] == "http"
    assert cri["ports"] == [{"name": "http", "containerPort": 8080}]
    assert cri["livenessProbe"]["exec"]["command"][0] == "cat"
