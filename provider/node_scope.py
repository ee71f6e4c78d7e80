"""Which objects belong to the nodes of this process; how their periodic writes are spread.

Pure functions for :mod:`provider.node_fleet` and the pod informer: a single node watches its own
Node and pods by field selector (like kubelet); several nodes in one process share one watch of
each, filtered here by node name (see provider/node_fleet.py for why).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

JSON = dict[str, Any]
KeyFunc = Callable[[JSON], str | None]


def lease_phases(n: int, interval: float) -> list[float]:
    """Node i's wait between its first and second renewal: i+1 n-ths of the interval, so the n
    nodes' renewals fall evenly over the interval instead of together."""
    return [interval * (i + 1) / n for i in range(n)]


def status_phases(n: int, interval: float) -> list[float]:
    """How much sooner node i's first periodic status write is due: i n-ths of the interval (the
    first node on the interval, like a single node), so the n nodes' writes spread over it."""
    return [interval * i / n for i in range(n)]


def node_name(obj: JSON) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def node_scope(names: Collection[str]) -> tuple[dict[str, str], KeyFunc]:
    """The Node watch's params and key for these node names (key None: not ours, dropped)."""
    wanted = frozenset(names)
    params = {"fieldSelector": f"metadata.name={next(iter(wanted))}"} if len(wanted) == 1 else {}

    def key(node: JSON) -> str | None:
        name = node_name(node)
        return name if name in wanted else None

    return params, key


def pod_scope(names: Collection[str]) -> tuple[dict[str, str], KeyFunc]:
    """The pod watch's params and key (uid) for pods bound to these nodes (see the module doc)."""
    wanted = frozenset(names)
    if len(wanted) == 1:
        params = {"fieldSelector": f"spec.nodeName={next(iter(wanted))}"}
    else:
        params = {"fieldSelector": "spec.nodeName!="}  # bound pods only: no scheduler churn

    def key(pod: JSON) -> str | None:
        if (pod.get("spec") or {}).get("nodeName") not in wanted:
            return None
        return (pod.get("metadata") or {}).get("uid") or None

    return params, key


def pods_per_node(pods: Collection[JSON], names: Collection[str]) -> dict[str, int]:
    """How many of these pods each node runs (every name present, 0 for none)."""
    out = dict.fromkeys(names, 0)
    for p in pods:
        node = (p.get("spec") or {}).get("nodeName")
        if node in out:
            out[node] += 1
    return out
