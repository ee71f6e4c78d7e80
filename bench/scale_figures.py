"""The figures of ``warmlet bench scale`` (pure): per contender, side by side, and the issue's goals.

Per contender and case: seconds from the first pod POST to all Running, pods/s, API calls per pod
(bench/apimetrics.py), resident memory and CPU seconds of the node process (bench/procstat.py).
Per case: the ratios warmlet / bare, warmlet / KWOK (time and peak memory), KWOK / bare. Goals
(issue 17): warmlet within 1.3x of the bare floor at 10,000 pods, at least as fast as KWOK, within
2x of KWOK's resident memory, at most 1.2 API writes per pod.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.apimetrics import CallAccount
from bench.common import ratio, summarize_ms
from bench.procstat import ProcSample

JSON = dict[str, Any]
GOAL_CASE = "10000"


@dataclass(frozen=True)
class Timing:
    """Client-side times of one contender's run (seconds, monotonic)."""

    pods: int
    running: int
    create_seconds: float
    all_running_seconds: float | None  # None: not all Running before the timeout
    delete_seconds: float
    namespace_deleted: bool


def mb(kb: float) -> float:
    return round(kb / 1024, 1)


def contender_figures(
    t: Timing,
    before: ProcSample,
    after: ProcSample,
    peak_kb: int,
    calls: CallAccount,
    watch_lag_s: Sequence[float],
    bind_to_running_s: Sequence[float],
    first_write_running: float,
) -> JSON:
    """One contender's row of the result."""
    cpu = after.cpu_seconds - before.cpu_seconds
    n = max(1, t.pods)
    secs = t.all_running_seconds
    return {
        "pods": t.pods,
        "running": t.running,
        "create_seconds": round(t.create_seconds, 2),
        "seconds_to_all_running": round(secs, 2) if secs is not None else None,
        "pods_per_second": round(t.pods / secs, 1) if secs else None,
        "api": calls.as_json(),
        "rss_mb_before": mb(before.rss_kb),
        "rss_mb_after": mb(after.rss_kb),
        "rss_mb_peak": mb(peak_kb),
        "rss_kb_per_pod": round((after.rss_kb - before.rss_kb) / n, 2),
        "cpu_seconds": round(cpu, 2),
        "cpu_ms_per_pod": round(cpu * 1000 / n, 3),
        "delete_seconds": round(t.delete_seconds, 1),
        "namespace_deleted": t.namespace_deleted,
        "watch_lag": summarize_ms(watch_lag_s),
        "first_write_is_running_fraction": round(first_write_running, 3),
        "bind_to_running": summarize_ms(bind_to_running_s),
    }


def _num(row: Mapping[str, Any] | None, *path: str) -> float:
    """A number at ``path`` of a contender's row; NaN when missing, skipped or None."""
    cur: Any = row
    for key in path:
        if not isinstance(cur, Mapping) or cur.get(key) is None:
            return math.nan
        cur = cur[key]
    return float(cur) if isinstance(cur, (int, float)) else math.nan


def case_ratios(rows: Mapping[str, Mapping[str, Any]]) -> JSON:
    """The side-by-side ratios of one case (NaN where a contender is missing or skipped)."""
    w, k, b = rows.get("warmlet"), rows.get("kwok"), rows.get("bare")
    secs = ("seconds_to_all_running",)
    peak = ("rss_mb_peak",)
    writes = ("api", "writes_per_pod")
    return {
        "warmlet_over_bare_seconds": ratio(_num(w, *secs), _num(b, *secs)),
        "warmlet_over_kwok_seconds": ratio(_num(w, *secs), _num(k, *secs)),
        "kwok_over_bare_seconds": ratio(_num(k, *secs), _num(b, *secs)),
        "warmlet_over_kwok_rss_peak": ratio(_num(w, *peak), _num(k, *peak)),
        "warmlet_over_kwok_cpu_seconds": ratio(_num(w, "cpu_seconds"), _num(k, "cpu_seconds")),
        "api_writes_per_pod": {name: _num(rows.get(name), *writes) for name in ("warmlet", "kwok", "bare")},
    }


def _goal(value: float, limit: float, what: str, case: str) -> JSON:
    met = None if math.isnan(value) else value <= limit
    return {
        "what": what,
        "case": case,
        "value": None if math.isnan(value) else value,
        "limit": limit,
        "met": met,
    }


def goals(cases: Mapping[str, Mapping[str, Any]], case: str = GOAL_CASE) -> JSON:
    """Issue 17's goals, judged on ``case`` (10,000 pods on one node; else the largest one-node
    case run, said in each goal's ``case``)."""
    if case not in cases:
        single = [c for c in cases if "x" not in c]
        case = max(single, key=int) if single else case
    rows = (cases.get(case) or {}).get("contenders") or {}
    r = case_ratios(rows)
    return {
        "warmlet_within_1.3x_of_bare": _goal(
            r["warmlet_over_bare_seconds"], 1.3, "warmlet / bare, seconds to all Running", case
        ),
        "warmlet_at_least_as_fast_as_kwok": _goal(
            r["warmlet_over_kwok_seconds"], 1.0, "warmlet / KWOK, seconds to all Running", case
        ),
        "warmlet_within_2x_kwok_memory": _goal(
            r["warmlet_over_kwok_rss_peak"], 2.0, "warmlet / KWOK, peak resident memory", case
        ),
        "warmlet_at_most_1.2_writes_per_pod": _goal(
            r["api_writes_per_pod"]["warmlet"],
            1.2,
            "warmlet API writes per pod (apiserver_request_total)",
            case,
        ),
    }


def skipped(reason: str) -> JSON:
    """A contender's row when it did not run."""
    return {"skipped": reason}


def failed(error: BaseException) -> JSON:
    """A contender's row when its run raised (the other contenders' rows stand)."""
    return {"failed": f"{type(error).__name__}: {error}"[:500]}


def summary(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Rows of the printed table (and bench/RESULTS.md): per case, each contender's key figures."""
    rows: list[tuple[str, str]] = []
    for label, case in (result.get("cases") or {}).items():
        for name, row in (case.get("contenders") or {}).items():
            if "skipped" in row or "failed" in row:
                rows.append((f"{label} {name}", str(row.get("skipped") or f"FAILED: {row['failed']}")))
                continue
            api = row.get("api") or {}
            rows.append(
                (
                    f"{label} {name}",
                    f"{row.get('seconds_to_all_running')} s, {row.get('pods_per_second')} pods/s, "
                    f"{api.get('writes_per_pod')} writes + {api.get('reads_per_pod')} reads /pod, "
                    f"peak {row.get('rss_mb_peak')} MB, {row.get('cpu_ms_per_pod')} ms CPU/pod",
                )
            )
        r = case.get("ratios") or {}
        rows.append(
            (
                f"{label} ratios",
                f"warmlet/bare {r.get('warmlet_over_bare_seconds')}x, "
                f"warmlet/KWOK {r.get('warmlet_over_kwok_seconds')}x time, "
                f"{r.get('warmlet_over_kwok_rss_peak')}x memory",
            )
        )
    for g in (result.get("goals") or {}).values():
        met = {True: "met", False: "NOT met", None: "not measured"}[g.get("met")]
        rows.append((f"goal: {g['what']} <= {g['limit']}", f"{g.get('value')} ({met}, case {g['case']})"))
    return rows
