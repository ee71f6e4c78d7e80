"""Query parameters of ``/containerLogs``: decoding and validation exactly as kubelet does.

kubelet decodes the query into a v1 PodLogOptions (a decode failure is ``400 Unable to
decode query.``) and validates it (any violation is ``422 Invalid request.``). Pure
functions so every parameter and error can be tested without a server.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from common.crilog import STDERR, STDOUT, parse_timestamp

INT64_MAX = 2**63 - 1
STREAMS = {"All": None, "Stdout": STDOUT, "Stderr": STDERR}

DECODE_ERROR = '{"message": "Unable to decode query."}'
INVALID_ERROR = '{"message": "Invalid request."}'


class LogParamError(Exception):
    """A rejected query: HTTP status, kubelet's body, and the detailed reason (for logs)."""

    def __init__(self, status: int, body: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.body = body
        self.detail = detail


@dataclass(frozen=True, slots=True)
class LogOptions:
    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None  # None: whole file
    limit_bytes: int | None = None  # None: unlimited (still capped by the server)
    since_ns: int | None = None  # absolute Unix nanoseconds
    stream: str | None = None  # None: both; else "stdout" / "stderr"


def _bool(values: list[str]) -> bool:
    # apimachinery's Convert_Slice_string_To_bool: only "0" and "false" are false.
    v = values[0]
    return not (v == "0" or v.lower() == "false")


def _int64(name: str, values: list[str]) -> int | None:
    v = values[0]
    if v == "":
        return None  # an empty value is the same as no value
    try:
        if not v or v.strip() != v or "_" in v:
            raise ValueError(v)
        n = int(v, 10)
    except ValueError:
        raise LogParamError(400, DECODE_ERROR, f"{name}: {v!r} is not an integer") from None
    if not -(2**63) <= n <= INT64_MAX:
        raise LogParamError(400, DECODE_ERROR, f"{name}: {v!r} is out of range")
    return n


def parse_log_options(query: Mapping[str, list[str]], now_ns: int | None = None) -> LogOptions:
    """Decode and validate ``/containerLogs`` query parameters (multi-valued: first wins)."""
    q = {k: v for k, v in query.items() if v}
    tail = q.get("tail")
    if tail and tail[0]:
        if tail[0] == "all":
            q.pop("tailLines", None)
        else:
            q["tailLines"] = [tail[0]]
    follow = _bool(q["follow"]) if "follow" in q else False
    previous = _bool(q["previous"]) if "previous" in q else False
    timestamps = _bool(q["timestamps"]) if "timestamps" in q else False
    tail_lines = _int64("tailLines", q["tailLines"]) if "tailLines" in q else None
    limit_bytes = _int64("limitBytes", q["limitBytes"]) if "limitBytes" in q else None
    since_seconds = _int64("sinceSeconds", q["sinceSeconds"]) if "sinceSeconds" in q else None
    since_time_ns: int | None = None
    if "sinceTime" in q and q["sinceTime"][0] not in ("", "null"):
        since_time_ns = parse_timestamp(q["sinceTime"][0])
        if since_time_ns is None:
            raise LogParamError(400, DECODE_ERROR, f"sinceTime: {q['sinceTime'][0]!r} is not RFC3339")
    stream_name = q["stream"][0] if "stream" in q else "All"

    problems: list[str] = []
    if tail_lines is not None and tail_lines < 0:
        problems.append("tailLines: must be greater than or equal to 0")
    if limit_bytes is not None and limit_bytes < 1:
        problems.append("limitBytes: must be greater than 0")
    if since_seconds is not None and since_time_ns is not None:
        problems.append("at most one of `sinceTime` or `sinceSeconds` may be specified")
    elif since_seconds is not None and since_seconds < 1:
        problems.append("sinceSeconds: must be greater than 0")
    if stream_name not in STREAMS:
        problems.append(
            f'stream: Unsupported value: "{stream_name}": supported values: "All", "Stderr", "Stdout"'
        )
    elif stream_name != "All" and tail_lines is not None:
        problems.append("`tailLines` and specific `stream` are mutually exclusive for now")
    if problems:
        raise LogParamError(422, INVALID_ERROR, "; ".join(problems))

    since_ns = since_time_ns
    if since_seconds is not None:
        now = time.time_ns() if now_ns is None else now_ns
        since_ns = now - min(since_seconds, now // 1_000_000_000) * 1_000_000_000
    return LogOptions(
        follow=follow,
        previous=previous,
        timestamps=timestamps,
        tail_lines=tail_lines,
        limit_bytes=limit_bytes,
        since_ns=since_ns,
        stream=STREAMS[stream_name],
    )
