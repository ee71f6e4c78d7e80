"""Pod status sequences, normalised and compared field by field (pure; used by bench/differential.py).

A pod status seen in a watch event becomes a flat *view*: ``field path -> value`` for what a
user's tooling reads (phase, pod reason, the kubelet conditions' status/reason, every container's
state kind / reason / exit code / message, restartCount, ready, started, lastState), with
timestamps, container and image IDs and IPs left out: they differ between any two runs.
Consecutive identical views collapse into one step of the pod's *sequence*.

Two sequences are compared per field: the values a field took, in order, consecutive repeats
collapsed (``containers.app.restartCount``: ``[0, 1, 2]``). Per-field comparison is robust to
the two nodes writing their statuses in different batches (one status write changing two fields
at once on one node, two writes on the other) while still catching a field that takes a value on
one node it never takes on the other, or takes them in another order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

JSON = dict[str, Any]
View = dict[str, Any]

# The conditions kubelet owns (others, e.g. DisruptionTarget, belong to the control plane).
KUBELET_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")
ABSENT = None  # a field not present in a view


def _text(value: Any, subs: Mapping[str, str]) -> Any:
    """A message with the run's own names (pod UID, namespace) replaced by placeholders."""
    if not isinstance(value, str):
        return value
    for raw, placeholder in subs.items():
        if raw:
            value = value.replace(raw, placeholder)
    return value


def _state(prefix: str, state: Mapping[str, Any] | None, out: View, subs: Mapping[str, str]) -> None:
    """``<prefix>`` = the state kind; ``.reason``, ``.exitCode``, ``.signal``, ``.message``."""
    if not state:
        return
    kind = next(iter(state))
    body = state.get(kind) or {}
    out[prefix] = kind
    for key in ("reason", "exitCode", "signal", "message"):
        if body.get(key) not in (None, ""):
            out[f"{prefix}.{key}"] = _text(body[key], subs)


def _containers(
    prefix: str, statuses: Iterable[Mapping[str, Any]] | None, out: View, subs: Mapping[str, str]
) -> None:
    for cs in statuses or []:
        p = f"{prefix}.{cs.get('name', '?')}"
        for key in ("restartCount", "ready", "started"):
            if key in cs and cs[key] is not None:
                out[f"{p}.{key}"] = cs[key]
        _state(f"{p}.state", cs.get("state"), out, subs)
        _state(f"{p}.lastState", cs.get("lastState"), out, subs)


def normalise(status: Mapping[str, Any] | None, subs: Mapping[str, str] | None = None) -> View:
    """The flat, run-independent view of one pod status (see module doc). ``subs``: strings of
    this run (the pod's UID, its namespace) -> placeholders, replaced in messages."""
    st = status or {}
    subs = subs or {}
    out: View = {}
    if st.get("phase"):
        out["phase"] = st["phase"]
    for key in ("reason", "message"):
        if st.get(key):
            out[key] = _text(st[key], subs)
    for c in st.get("conditions") or []:
        ctype = c.get("type")
        if ctype not in KUBELET_CONDITIONS:
            continue
        out[f"conditions.{ctype}.status"] = c.get("status")
        if c.get("reason"):
            out[f"conditions.{ctype}.reason"] = c["reason"]
    _containers("init", st.get("initContainerStatuses"), out, subs)
    _containers("containers", st.get("containerStatuses"), out, subs)
    return out


def sequence(
    statuses: Iterable[Mapping[str, Any] | None], subs: Mapping[str, str] | None = None
) -> list[View]:
    """The views of a pod's successive statuses, consecutive duplicates collapsed."""
    out: list[View] = []
    for s in statuses:
        v = normalise(s, subs)
        if not out or out[-1] != v:
            out.append(v)
    return out


def started(view: View) -> bool:
    """Some container (init or regular) has run: a state or lastState other than waiting."""
    return any(
        (k.endswith(".state") or k.endswith(".lastState")) and v in ("running", "terminated")
        for k, v in view.items()
    )


def from_first_start(views: Sequence[View]) -> list[View]:
    """The views from the first one in which a container has run (drops the creating steps,
    which a node may or may not report before its first container starts)."""
    for i, v in enumerate(views):
        if started(v):
            return list(views[i:])
    return []


def field_sequences(views: Sequence[View]) -> dict[str, list[Any]]:
    """field path -> the values it took over the views, in order, repeats collapsed. A field
    missing from a view counts as ``None`` there (appearing and disappearing are changes too)."""
    paths: list[str] = []
    seen: set[str] = set()
    for v in views:
        for k in v:
            if k not in seen:
                seen.add(k)
                paths.append(k)
    out: dict[str, list[Any]] = {}
    for p in paths:
        vals: list[Any] = []
        for v in views:
            x = v.get(p, ABSENT)
            if not vals or vals[-1] != x:
                vals.append(x)
        # a field not there in the very first statuses: its absence before is not a difference
        while len(vals) > 1 and vals[0] is ABSENT:
            vals.pop(0)
        out[p] = vals
    return out


def compare(kubelet: Sequence[View], warmlet: Sequence[View]) -> JSON:
    """Field-by-field comparison of two sequences of views.

    ``differs``: path -> {"kubelet": values, "warmlet": values} for every field whose value
    sequence differs; ``final_differs``: the same for the LAST view only (where each node
    settled); ``same``: whether nothing differs."""
    fk, fw = field_sequences(kubelet), field_sequences(warmlet)
    differs: JSON = {}
    for p in sorted(set(fk) | set(fw)):
        a, b = fk.get(p, [ABSENT]), fw.get(p, [ABSENT])
        if a != b:
            differs[p] = {"kubelet": a, "warmlet": b}
    last_k = kubelet[-1] if kubelet else {}
    last_w = warmlet[-1] if warmlet else {}
    final: JSON = {}
    for p in sorted(set(last_k) | set(last_w)):
        if last_k.get(p, ABSENT) != last_w.get(p, ABSENT):
            final[p] = {"kubelet": last_k.get(p, ABSENT), "warmlet": last_w.get(p, ABSENT)}
    return {"same": not differs, "differs": differs, "final_differs": final}


# Differences between kubelet and warmlet that are deliberate, each with its reason. A field
# difference is accepted only when the definition holds exactly; anything else is a gap.
ACCEPTED: dict[str, str] = {
    "creating-steps": (
        "kubelet writes Pending/ContainerCreating statuses (PodReadyToStartContainers False, then "
        "True once its sandbox exists) before any container runs; warmlet writes a pod's first "
        "status once its containers started, so that a pod start costs one status write "
        "(docs/benchmarks.md). Accepted: the field differs over the whole sequences, and is the "
        "same from the first status in which a container has run."
    ),
}


def accepted(whole: Mapping[str, Any], once_started: Mapping[str, Any]) -> dict[str, str]:
    """field -> the accepted difference (:data:`ACCEPTED`) that explains it, for the fields of
    ``whole`` (``compare``'s ``differs`` over the whole sequences) not in ``once_started`` (the
    same over the sequences from the first start): they differ only in the creating steps."""
    return {f: "creating-steps" for f in whole if f not in once_started}


def event_reasons(events: Iterable[Mapping[str, Any]]) -> list[str]:
    """The distinct ``<type>/<reason>`` of a pod's events, sorted (counts and times vary)."""
    return sorted({f"{e.get('type', '')}/{e.get('reason', '')}" for e in events})


def compare_events(kubelet: Iterable[Mapping[str, Any]], warmlet: Iterable[Mapping[str, Any]]) -> JSON:
    """Event reasons only one of the two nodes recorded."""
    k, w = set(event_reasons(kubelet)), set(event_reasons(warmlet))
    return {"only_kubelet": sorted(k - w), "only_warmlet": sorted(w - k)}
