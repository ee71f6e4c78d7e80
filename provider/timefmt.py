"""RFC 3339 timestamps as the API server writes them (UTC): metav1.Time to the second,
metav1.MicroTime (Lease renewals) to the microsecond."""

from __future__ import annotations

import calendar
import re
import time
from datetime import UTC, datetime

_SECONDS = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})")


def rfc3339(ts: float) -> str:
    """metav1.Time as JSON; an unset (zero or negative) time renders as the epoch."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(max(0.0, ts)))


def micro_time(ts: float) -> str:
    """metav1.MicroTime as JSON (Lease ``renewTime``/``acquireTime``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


def parse_rfc3339(value: str | None) -> float | None:
    """Seconds since the epoch; None for a missing or unparsable value."""
    if not value:
        return None
    s = value.rstrip("Z").split(".")[0]
    m = _SECONDS.fullmatch(s)
    if m is not None:  # the API server's form: read directly (strptime costs 50 us a call)
        try:
            y, mo, d, h, mi, sec = (int(x) for x in m.groups())
            return datetime(y, mo, d, h, mi, sec, tzinfo=UTC).timestamp()
        except ValueError:
            pass  # e.g. a leap second, which strptime accepts: it decides
    try:
        return float(calendar.timegm(time.strptime(s, "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None
