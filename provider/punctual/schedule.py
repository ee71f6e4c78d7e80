"""A CronJob's firing instants as kube-controller-manager's CronJob controller computes them.

The controller (pkg/controller/cronjob, robfig/cron ``ParseStandard`` with ``TZ=<spec.timeZone>``)
fires at the instants of a 5-field schedule (or a ``@hourly``-style macro) in the CronJob's time
zone (UTC when unset). warmlet computes them with croniter. Where the two libraries could disagree
warmlet does not pre-create at all (the controller then fires the normal way):

- a schedule carrying its own ``TZ=``/``CRON_TZ=`` prefix, ``@every``, or not 5 fields;
- an instant within :data:`DST_GUARD_SECONDS` of a change of the zone's UTC offset (DST: local
  times that do not exist or exist twice are where cron libraries differ).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter  # type: ignore[import-untyped,unused-ignore]

MACROS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
DST_GUARD_SECONDS = 3 * 3600.0


class Unsupported(ValueError):
    """The schedule or time zone is one warmlet does not pre-create for (the reason is the text)."""


def zone(spec: dict[str, Any]) -> tzinfo:
    """The CronJob's time zone (UTC when unset); Unsupported when unknown."""
    name = spec.get("timeZone")
    if not name:
        return UTC
    try:
        return ZoneInfo(str(name))
    except Exception as e:
        raise Unsupported(f"unknown timeZone {name!r}") from e


def check_schedule(schedule: str) -> str:
    """The schedule if warmlet computes it like the controller; else Unsupported."""
    s = " ".join(str(schedule).split())
    if "TZ=" in s:
        raise Unsupported("a TZ= or CRON_TZ= prefix in the schedule (use spec.timeZone)")
    if s.startswith("@"):
        if s.lower() not in MACROS:
            raise Unsupported(f"schedule macro {s!r}")
        return s.lower()
    if len(s.split(" ")) != 5:
        raise Unsupported(f"schedule {s!r} does not have 5 fields")
    if not croniter.is_valid(s):
        raise Unsupported(f"unparseable schedule {s!r}")
    return s


def next_after(schedule: str, tz: tzinfo, t: float) -> float:
    """The first instant strictly after ``t`` (epoch seconds, whole seconds)."""
    it = croniter(check_schedule(schedule), datetime.fromtimestamp(int(t // 1), tz))
    nxt: datetime = it.get_next(datetime)
    return nxt.timestamp()


def latest_at_or_before(schedule: str, tz: tzinfo, t: float) -> float:
    """The last instant at or before ``t``."""
    start = datetime.fromtimestamp(int(t // 1) + 1, tz)
    it = croniter(check_schedule(schedule), start)
    prev: datetime = it.get_prev(datetime)
    return prev.timestamp()


def is_instant(schedule: str, tz: tzinfo, t: float) -> bool:
    """Whether ``t`` is one of the schedule's instants."""
    return next_after(schedule, tz, t - 1) == t


def near_offset_change(tz: tzinfo, t: float, guard: float = DST_GUARD_SECONDS) -> bool:
    """Whether the zone's UTC offset differs ``guard`` seconds before and after ``t``."""
    before = datetime.fromtimestamp(t - guard, tz).utcoffset()
    after = datetime.fromtimestamp(t + guard, tz).utcoffset()
    return before != after


def scheduled_timestamp(t: float, tz: tzinfo) -> str:
    """``batch.kubernetes.io/cronjob-scheduled-timestamp``: the instant in the CronJob's zone,
    formatted as Go's time.RFC3339 (``Z`` for a zero offset, else ``+hh:mm``)."""
    dt = datetime.fromtimestamp(int(t // 1), tz)
    off = dt.utcoffset() or timedelta(0)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if off == timedelta(0):
        return base + "Z"
    sign = "-" if off < timedelta(0) else "+"
    minutes = int(abs(off).total_seconds()) // 60
    return f"{base}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def parse_timestamp(value: str | None) -> float | None:
    """Epoch seconds of an RFC 3339 value with any offset; None when missing or invalid."""
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def start_at(t: float) -> str:
    """``warmlet.io/start-at``: RFC 3339 UTC with milliseconds (the shared contract)."""
    dt = datetime.fromtimestamp(t, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
