"""QoS class and quantity parsing used by status and workload keys."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provider.qos import qos_class
from provider.quantity import cpu_milli, parse_quantity, to_int


def pod(*resources: dict[str, Any], init: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": f"c{i}", "resources": r} for i, r in enumerate(resources)]
    }
    if init is not None:
        spec["initContainers"] = [{"name": "i", "resources": init}]
    return {"spec": spec}


G = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1000m", "memory": "1Gi"}}


@pytest.mark.parametrize(
    ("p", "qos"),
    [
        (pod({}), "BestEffort"),
        (pod({"requests": {"ephemeral-storage": "1Gi"}}), "BestEffort"),
        (pod(G), "Guaranteed"),
        (pod({"limits": {"cpu": "1", "memory": "1Gi"}}), "Guaranteed"),  # requests default to limits
        (pod(G, G), "Guaranteed"),
        (pod(G, {}), "Burstable"),
        (pod({"requests": {"cpu": "100m"}}), "Burstable"),
        (pod({"limits": {"cpu": "1"}}), "Burstable"),
        (
            pod({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}),
            "Burstable",
        ),
        (pod(G, init={"requests": {"cpu": "1"}}), "Burstable"),
    ],
)
def test_qos(p: dict[str, Any], qos: str) -> None:
    assert qos_class(p) == qos


@pytest.mark.parametrize(
    ("q", "milli"), [("1", 1000), ("250m", 250), ("0.5", 500), ("1.0001", 1001), ("2k", 2_000_000), (3, 3000)]
)
def test_cpu_milli(q: str | int, milli: int) -> None:
    assert cpu_milli(q) == milli


@pytest.mark.parametrize(
    ("q", "n"),
    [
        ("1Ki", 1024),
        ("1Gi", 2**30),
        ("1G", 10**9),
        ("1e3", 1000),
        ("128974848", 128974848),
        ("129e6", 129_000_000),
        ("123Mi", 123 * 2**20),
        ("1E", 10**18),
        ("1.5Gi", 3 * 2**29),
    ],
)
def test_to_int(q: str, n: int) -> None:
    assert to_int(q) == n


@pytest.mark.parametrize("bad", ["", "abc", "1Qi", "--1", "inf"])
def test_invalid(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(bad)


@given(st.integers(min_value=0, max_value=10**6))
def test_milli_round_trip(m: int) -> None:
    assert cpu_milli(f"{m}m") == m
    assert to_int(f"{m}Mi") == m * 2**20
