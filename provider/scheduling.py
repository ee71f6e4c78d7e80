"""kube-scheduler's node predicates as pure functions: taints vs tolerations, nodeSelector and
required node affinity. Shared by cron prewarming (which node prewarms a CronJob) and placement
(which virtual node a pod may be steered or bound to), so both answer exactly like the scheduler."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def tolerates(tolerations: Sequence[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    """The tolerations accept the taint (a PreferNoSchedule taint never keeps a pod off)."""
    if taint.get("effect") == "PreferNoSchedule":
        return True
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        op = t.get("operator", "Equal")
        if not t.get("key"):
            if op == "Exists":
                return True
            continue
        if t.get("key") != taint.get("key"):
            continue
        if op == "Exists" or t.get("value", "") == taint.get("value", ""):
            return True
    return False


def requirement_matches(req: Mapping[str, Any], values: Mapping[str, str]) -> bool:
    """One node selector requirement (In, NotIn, Exists, DoesNotExist, Gt, Lt) against ``values``."""
    key, op, want = req.get("key", ""), req.get("operator", ""), list(req.get("values") or [])
    have = values.get(key)
    if op == "In":
        return have is not None and have in want
    if op == "NotIn":
        return have is None or have not in want
    if op == "Exists":
        return have is not None
    if op == "DoesNotExist":
        return have is None
    if op in ("Gt", "Lt") and have is not None and len(want) == 1:
        try:
            a, b = int(have), int(want[0])
        except ValueError:
            return False
        return a > b if op == "Gt" else a < b
    return False


def required_affinity_matches(spec: Mapping[str, Any], labels: Mapping[str, str], name: str) -> bool:
    """The pod spec's required node affinity accepts the node: terms ORed, a term's requirements
    ANDed, matchFields on metadata.name; an empty term matches no node; no terms match any."""
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms")
    if not terms:
        return True
    fields = {"metadata.name": name}
    for term in terms:
        exprs, by_field = term.get("matchExpressions") or [], term.get("matchFields") or []
        if (
            (exprs or by_field)
            and all(requirement_matches(r, labels) for r in exprs)
            and all(requirement_matches(r, fields) for r in by_field)
        ):
            return True
    return False


def selects_node(spec: Mapping[str, Any], labels: Mapping[str, str], name: str) -> bool:
    """The pod spec's nodeSelector and required node affinity both accept the node."""
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    return required_affinity_matches(spec, labels, name)
