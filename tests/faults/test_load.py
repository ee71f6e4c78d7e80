"""Lease and node status under load: a burst of 2,000 pods (simulated backend, real control plane
and scheduler) while an observer samples the Lease and the Node every second, as the real
node-lifecycle controller sees them. It replaces the former 5-minute integration soak
(tests/integration/test_node_soak.py, 1,000 pods); the long version is ``warmlet bench
soak-node-ready`` (5,000 pods, 10 minutes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.soak_node import details, node_soak

BURST = 2000


@pytest.mark.reliability(
    fault=f"API load: a burst of {BURST:,} pods (simulated backend) through the real scheduler and "
    "controller-manager",
    checked="Lease renewTime and Node Ready sampled every second before, during and after: never "
    "NotReady/Unknown, no unreachable/not-ready taint, no renewal missed, 0 failed renewals",
)
async def test_lease_and_ready_through_a_2000_pod_burst(
    kubeconfig: Path, tmp_path: Path, reliability: Any
) -> None:
    # (the burst itself lasts several renewal intervals; 25 s more after it: 2 more renewals)
    res = await node_soak(kubeconfig, tmp_path, BURST, idle_seconds=5.0, after_seconds=25.0)
    for line in details(res):
        reliability.detail(line)
    assert res.samples >= 30, res
    assert res.not_ready == [], f"node not Ready at {res.not_ready[:5]}"
    assert res.tainted == [], f"node tainted by the lifecycle controller at {res.tainted[:5]}"
    # the lease is renewed every 10 s; a gap of two intervals would be a missed renewal
    assert res.max_renew_gap < 2 * res.renew_interval, res.max_renew_gap
    assert res.renewals >= 4, res.renewals
    assert res.lease_errors == 0, res.lease_errors
