"""``/metrics/resource``: kubelet's resource metrics in its exact Prometheus text format.

metrics-server parses this endpoint; the family names, HELP texts (with the stability
prefix of k8s component-base), label order, Go float formatting and millisecond
timestamps follow kubelet's collector so that any scraper sees no difference.
"""

from __future__ import annotations

import math
from decimal import Decimal

from sandbox.backend import NodeUsage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_HELP = {
    "container_cpu_usage_seconds_total": (
        "counter",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
    ),
    "container_memory_working_set_bytes": ("gauge", "[STABLE] Current working set of the container in bytes"),
    "container_start_time_seconds": (
        "gauge",
        "[STABLE] Start time of the container since unix epoch in seconds",
    ),
    "node_cpu_usage_seconds_total": (
        "counter",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
    ),
    "node_memory_working_set_bytes": ("gauge", "[STABLE] Current working set of the node in bytes"),
    "pod_cpu_usage_seconds_total": (
        "counter",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
    ),
    "pod_memory_working_set_bytes": ("gauge", "[STABLE] Current working set of the pod in bytes"),
    "resource_scrape_error": (
        "gauge",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
    ),
}


def go_float(v: float) -> str:
    """Format like Go's strconv.FormatFloat(v, 'g', -1, 64), as the Prometheus Go client does."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "-0" if math.copysign(1.0, v) < 0 else "0"
    a = abs(v)
    if v.is_integer() and a < 1e6:
        return str(int(v))
    if 1e-4 <= a < 1e6:
        return repr(v)  # Python's shortest repr agrees with Go's in this range
    sign, digits_t, exp = Decimal(repr(v)).as_tuple()
    digits = "".join(map(str, digits_t)).rstrip("0") or "0"
    assert isinstance(exp, int)
    # Decimal point position relative to the first digit: value = 0.d1d2... * 10**dp
    dp = len(digits_t) + exp
    stripped_lead = len(digits) - len(digits.lstrip("0"))
    digits = digits.lstrip("0")
    dp -= stripped_lead
    x = dp - 1  # scientific exponent
    s = "-" if sign else ""
    if x < -4 or x >= 6:  # Go: shortest formatting switches to %e at exponent 6
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{s}{mant}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if dp <= 0:
        return f"{s}0.{'0' * -dp}{digits}"
    if dp >= len(digits):
        return f"{s}{digits}{'0' * (dp - len(digits))}"
    return f"{s}{digits[:dp]}.{digits[dp:]}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def render_resource_metrics(usage: NodeUsage | None) -> str:
    """The text of one scrape; ``None`` usage means the stats call failed (scrape error 1)."""
    families: dict[str, list[tuple[tuple[tuple[str, str], ...], float, int | None]]] = {}

    def add(name: str, labels: tuple[tuple[str, str], ...], value: float, ts_ms: int | None) -> None:
        families.setdefault(name, []).append((labels, value, ts_ms))

    if usage is not None:
        ts = int(usage.timestamp * 1000)
        add("node_cpu_usage_seconds_total", (), usage.cpu_usage_core_nanoseconds / 1e9, ts)
        add("node_memory_working_set_bytes", (), float(usage.memory_working_set_bytes), ts)
        for p in usage.pods:
            pts = int(p.timestamp * 1000)
            for c in p.containers:
                cl = (("container", c.name), ("namespace", p.namespace), ("pod", p.name))
                cts = int(c.timestamp * 1000)
                if c.start_time > 0:
                    add("container_start_time_seconds", cl, c.start_time, None)
                add("container_cpu_usage_seconds_total", cl, c.cpu_usage_core_nanoseconds / 1e9, cts)
                add("container_memory_working_set_bytes", cl, float(c.memory_working_set_bytes), cts)
            pl = (("namespace", p.namespace), ("pod", p.name))
            add(
                "pod_cpu_usage_seconds_total",
                pl,
                sum(c.cpu_usage_core_nanoseconds for c in p.containers) / 1e9,
                pts,
            )
            add(
                "pod_memory_working_set_bytes",
                pl,
                float(sum(c.memory_working_set_bytes for c in p.containers)),
                pts,
            )
    add("resource_scrape_error", (), 0.0 if usage is not None else 1.0, None)

    lines: list[str] = []
    for name in sorted(families):
        kind, help_text = _HELP[name]
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        samples = families[name]
        samples.sort(key=lambda s: tuple(v for _, v in s[0]))
        for labels, value, ts_ms in samples:
            head = name + (_labels(labels) if labels else "")
            if ts_ms is None:
                lines.append(f"{head} {go_float(value)}")
            else:
                lines.append(f"{head} {go_float(value)} {ts_ms}")
    return "\n".join(lines) + "\n"
