"""Cron prewarming per node: a CronJob pinned to one virtual node by required node affinity is
prewarmed on that node only (several warmlet nodes in one cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from provider.cron_prewarm import targets_node
from provider.scheduling import required_affinity_matches


def affinity_matches(pod_spec: dict[str, Any], labels: dict[str, str]) -> bool:
    return required_affinity_matches(pod_spec, labels, labels["kubernetes.io/hostname"])


pytestmark = pytest.mark.unit

A = {"kubernetes.io/hostname": "wl-a", "type": "virtual-kubelet", "pool": "a", "gen": "3"}
B = {"kubernetes.io/hostname": "wl-b", "type": "virtual-kubelet", "pool": "b", "gen": "1"}
TAINT = {"key": "virtual-kubelet.io/provider", "value": "warmlet", "effect": "NoSchedule"}
TOL = [{"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}]


def spec(*terms: dict[str, Any]) -> dict[str, Any]:
    return {
        "tolerations": TOL,
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}
            }
        },
    }


def expr(key: str, op: str, *values: str) -> dict[str, Any]:
    return {"matchExpressions": [{"key": key, "operator": op, "values": list(values)}]}


@pytest.mark.parametrize(
    ("term", "on_a", "on_b"),
    [
        (expr("kubernetes.io/hostname", "In", "wl-a"), True, False),
        (expr("pool", "NotIn", "a"), False, True),
        (expr("pool", "Exists"), True, True),
        (expr("zone", "DoesNotExist"), True, True),
        (expr("gen", "Gt", "2"), True, False),
        (expr("gen", "Lt", "2"), False, True),
        (expr("gen", "Gt", "x"), False, False),
        ({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["wl-b"]}]}, False, True),
        ({}, False, False),  # an empty term matches no node
    ],
)
def test_required_node_affinity_decides_which_node_prewarms(
    term: dict[str, Any], on_a: bool, on_b: bool
) -> None:
    assert targets_node(spec(term), A, [TAINT]) is on_a
    assert targets_node(spec(term), B, [TAINT]) is on_b


def test_terms_are_ored_and_requirements_anded() -> None:
    both = {"matchExpressions": [{"key": "type", "operator": "In", "values": ["virtual-kubelet"]},
                                 {"key": "pool", "operator": "In", "values": ["b"]}]}  # fmt: skip
    assert not affinity_matches(spec(both), A) and affinity_matches(spec(both), B)
    either = spec(expr("pool", "In", "a"), expr("pool", "In", "b"))
    assert affinity_matches(either, A) and affinity_matches(either, B)
    assert affinity_matches({"affinity": {"nodeAffinity": {}}}, A)  # only preferred or none: any node
