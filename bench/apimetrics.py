"""API calls per pod, from the API server's own counter ``apiserver_request_total``.

The benchmark scrapes the API server's /metrics before the pods are created and once all are
Running (plus a short settle); the difference, split by verb into reads (GET, LIST, WATCH) and
writes (POST, PUT, PATCH, DELETE, DELETECOLLECTION, APPLY), less the calls the bench made itself
(its pod POSTs), divided by the pods, is what the node under test cost the API server per pod.

What the counter cannot tell apart (said in the result, not hidden): it has no client label, so
the window also holds the other components' calls (controller-manager, scheduler, node Leases
every few seconds: a handful per window, small against thousands of pods); and a WATCH is
counted when it ends, so watches open through the window are not in it (reads are a lower bound).
Non-resource requests (/metrics, /healthz, /readyz, ...) are counted apart and left out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from provider.kubeclient import KubeClient

JSON = dict[str, Any]
METRIC = "apiserver_request_total"
READ_VERBS = frozenset({"GET", "LIST", "WATCH"})
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"})
_LABEL_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


class RequestKey(NamedTuple):
    """One series of apiserver_request_total (the labels that matter here)."""

    verb: str
    group: str
    resource: str
    subresource: str
    code: str

    @property
    def call(self) -> str:
        """``VERB resource[/subresource]`` (group-qualified when not core), e.g. ``PATCH pods/status``."""
        res = self.resource + (f"/{self.subresource}" if self.subresource else "")
        if self.group:
            res = f"{res}.{self.group}"
        return f"{self.verb} {res}"


def parse_request_totals(text: str, metric: str = METRIC) -> dict[RequestKey, float]:
    """The ``metric`` counters of a Prometheus text exposition, keyed by :class:`RequestKey`
    (series that differ only in labels not kept, e.g. ``version``, are summed)."""
    out: dict[RequestKey, float] = {}
    prefix = metric + "{"
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        close = line.rindex("}")
        labels = {
            k: v.replace('\\"', '"').replace("\\\\", "\\")
            for k, v in _LABEL_RE.findall(line[len(prefix) : close])
        }
        value_text = line[close + 1 :].split()
        if not value_text:
            continue
        key = RequestKey(
            labels.get("verb", ""),
            labels.get("group", ""),
            labels.get("resource", ""),
            labels.get("subresource", ""),
            labels.get("code", ""),
        )
        out[key] = out.get(key, 0.0) + float(value_text[0])
    return out


def counter_delta(
    before: Mapping[RequestKey, float], after: Mapping[RequestKey, float]
) -> dict[RequestKey, float]:
    """``after - before`` per series; a series that went down (API server restarted) counts from 0;
    only series that grew are kept."""
    out: dict[RequestKey, float] = {}
    for key, value in after.items():
        prev = before.get(key, 0.0)
        grew = value - prev if value >= prev else value
        if grew > 0:
            out[key] = grew
    return out


def kind_of(verb: str) -> str:
    """``read``, ``write`` or ``other`` (CONNECT, ...)."""
    if verb in READ_VERBS:
        return "read"
    if verb in WRITE_VERBS:
        return "write"
    return "other"


@dataclass(frozen=True)
class CallAccount:
    """Calls in one window, the bench's own removed, per pod."""

    pods: int
    reads: float
    writes: float
    other: float
    non_resource: float
    errors: float
    by_verb: dict[str, float]
    by_call: dict[str, float]
    bench_own: dict[str, float]

    def as_json(self, top: int = 12) -> JSON:
        n = max(1, self.pods)
        calls = sorted(self.by_call.items(), key=lambda kv: (-kv[1], kv[0]))
        return {
            "reads": round(self.reads),
            "writes": round(self.writes),
            "reads_per_pod": round(self.reads / n, 3),
            "writes_per_pod": round(self.writes / n, 3),
            "calls_per_pod": round((self.reads + self.writes + self.other) / n, 3),
            "errors": round(self.errors),
            "by_verb": {k: round(v) for k, v in sorted(self.by_verb.items())},
            "per_pod_by_call": {k: round(v / n, 3) for k, v in calls[:top]},
            "non_resource_requests_left_out": round(self.non_resource),
            "bench_own_calls_removed": {k: round(v) for k, v in self.bench_own.items()},
        }


def account(delta: Mapping[RequestKey, float], pods: int, bench_own: Mapping[str, float]) -> CallAccount:
    """Split a window's calls into reads / writes / other and per call (``VERB resource``), less
    ``bench_own`` (``{"POST pods": n}``: the calls the bench itself made, by :attr:`RequestKey.call`;
    never below zero)."""
    by_call: dict[str, float] = {}
    by_verb: dict[str, float] = {}
    non_resource = errors = 0.0
    for key, count in delta.items():
        if not key.resource:
            non_resource += count
            continue
        by_call[key.call] = by_call.get(key.call, 0.0) + count
        by_verb[key.verb] = by_verb.get(key.verb, 0.0) + count
        if key.code[:1] in ("4", "5"):
            errors += count
    removed: dict[str, float] = {}
    for call, count in bench_own.items():
        have = by_call.get(call, 0.0)
        take = min(have, count)
        if take:
            by_call[call] = have - take
            verb = call.split(" ", 1)[0]
            by_verb[verb] = by_verb.get(verb, 0.0) - take
        removed[call] = take
    by_call = {k: v for k, v in by_call.items() if v > 0}
    by_verb = {k: v for k, v in by_verb.items() if v > 0}
    totals = {"read": 0.0, "write": 0.0, "other": 0.0}
    for verb, count in by_verb.items():
        totals[kind_of(verb)] += count
    return CallAccount(
        pods=pods,
        reads=totals["read"],
        writes=totals["write"],
        other=totals["other"],
        non_resource=non_resource,
        errors=errors,
        by_verb=by_verb,
        by_call=by_call,
        bench_own=removed,
    )


def sum_calls(delta: Mapping[RequestKey, float], calls: Iterable[str]) -> float:
    """How many of the window's calls are one of ``calls`` (``VERB resource``)."""
    wanted = set(calls)
    return sum(v for k, v in delta.items() if k.call in wanted)


async def scrape(client: KubeClient) -> dict[RequestKey, float]:
    """The API server's apiserver_request_total now (its /metrics, with the client's credentials)."""
    async with client.session.get(client.server + "/metrics", headers={"Accept": "text/plain"}) as resp:
        resp.raise_for_status()
        text = await resp.text()
    return parse_request_totals(text)
