"""provider.punctual.schedule: instants as the CronJob controller computes them, zones and DST."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provider.punctual.schedule import (
    Unsupported,
    check_schedule,
    is_instant,
    latest_at_or_before,
    near_offset_change,
    next_after,
    parse_timestamp,
    scheduled_timestamp,
    start_at,
    zone,
)

T0 = datetime(2026, 11, 28, 17, 0, 0, tzinfo=UTC).timestamp()
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def _field_matches(expr: str, value: int, lo: int, hi: int) -> bool:
    for part in expr.split(","):
        step = 1
        if "/" in part:
            part, s = part.split("/")
            step = int(s)
        if part == "*":
            a, b = lo, hi
        elif "-" in part:
            a, b = (int(x) for x in part.split("-"))
        else:
            a = b = int(part)
            if step != 1:
                b = hi
        if a <= value <= b and (value - a) % step == 0:
            return True
    return False


def _matches(schedule: str, dt: datetime) -> bool:
    """Reference: vixie/robfig semantics (day-of-month OR day-of-week when both are restricted)."""
    mi, h, dom, mon, dow = schedule.split()
    if not (_field_matches(mi, dt.minute, 0, 59) and _field_matches(h, dt.hour, 0, 23)):
        return False
    if not _field_matches(mon, dt.month, 1, 12):
        return False
    dom_ok = _field_matches(dom, dt.day, 1, 31)
    dow_ok = _field_matches(dow, (dt.weekday() + 1) % 7, 0, 6)
    if dom.startswith("*") or dow.startswith("*"):
        return dom_ok and dow_ok
    return dom_ok or dow_ok


def _reference_next(
    schedule: str, tz: ZoneInfo | type[UTC], t: float, limit_minutes: int = 60 * 24 * 40
) -> float:
    cand = int(t // 60) * 60 + 60
    mi = schedule.split()[0]
    for _ in range(limit_minutes):
        dt = datetime.fromtimestamp(cand, tz)  # type: ignore[arg-type]
        if _matches(schedule, dt):
            return float(cand)
        if _matches(" ".join(["*", *schedule.split()[1:]]), dt) or mi == "*":
            cand += 60
        else:  # the hour or day does not match: on to the next quarter hour (offsets are 15-min multiples)
            cand += 60 * (15 - dt.minute % 15)
    raise AssertionError("no instant found")


FIELD_MIN = st.sampled_from(["*", "0", "15", "*/5", "*/15", "0-30/10", "5,35", "59"])
FIELD_HOUR = st.sampled_from(["*", "0", "9-17", "*/6", "23", "1,13"])
FIELD_DOM = st.sampled_from(["*", "1", "15", "28", "1-7"])
FIELD_MON = st.sampled_from(["*", "1", "6-8", "*/3", "12"])
FIELD_DOW = st.sampled_from(["*", "0", "1-5", "6", "1,3"])
ZONES = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"])


@settings(max_examples=60, deadline=None)
@given(
    mi=FIELD_MIN,
    h=FIELD_HOUR,
    dom=FIELD_DOM,
    mon=FIELD_MON,
    dow=FIELD_DOW,
    zone_name=ZONES,
    offset=st.integers(min_value=0, max_value=3 * 365 * 86400),
)
def test_next_after_matches_a_minute_by_minute_reference(
    mi: str, h: str, dom: str, mon: str, dow: str, zone_name: str, offset: int
) -> None:
    schedule = f"{mi} {h} {dom} {mon} {dow}"
    tz = ZoneInfo(zone_name)
    t = T0 + offset
    got = next_after(schedule, tz, t)
    if near_offset_change(tz, got):
        return  # where cron libraries disagree warmlet does not pre-create (schedule module doc)
    want = _reference_next(schedule, tz, t, limit_minutes=60 * 24 * 400)
    assert got == want
    assert got > t and got % 60 == 0
    assert is_instant(schedule, tz, got)
    assert latest_at_or_before(schedule, tz, got) == got
    assert latest_at_or_before(schedule, tz, got + 59) == got


def test_next_after_is_strictly_after() -> None:
    assert next_after("* * * * *", UTC, T0) == T0 + 60
    assert next_after("* * * * *", UTC, T0 - 0.5) == T0
    assert next_after("0 * * * *", UTC, T0 + 1) == T0 + 3600


def test_time_zone_moves_the_instant() -> None:
    # 00:00 in Berlin (winter, +01:00) is 23:00 UTC the day before
    got = next_after("0 0 * * *", BERLIN, T0)
    assert datetime.fromtimestamp(got, UTC) == datetime(2026, 11, 28, 23, 0, tzinfo=UTC)
    assert scheduled_timestamp(got, BERLIN) == "2026-11-29T00:00:00+01:00"
    assert scheduled_timestamp(got, UTC) == "2026-11-28T23:00:00Z"
    assert scheduled_timestamp(got, ZoneInfo("America/St_Johns")) == "2026-11-28T19:30:00-03:30"
    # a zone at offset zero formats as Z, like Go's RFC3339
    assert scheduled_timestamp(got, ZoneInfo("Europe/London")) == "2026-11-28T23:00:00Z"


def test_dst_instants_are_flagged() -> None:
    # Europe/Berlin springs forward at 2026-03-29 01:00 UTC: 02:30 local does not exist that day
    spring = datetime(2026, 3, 29, 1, 0, tzinfo=UTC).timestamp()
    assert near_offset_change(BERLIN, spring)
    assert near_offset_change(BERLIN, spring + 2 * 3600)
    assert not near_offset_change(BERLIN, spring + 4 * 3600)
    assert not near_offset_change(UTC, spring)
    fall = datetime(2026, 11, 1, 6, 0, tzinfo=UTC).timestamp()  # New York falls back 02:00 EDT
    assert near_offset_change(NEW_YORK, fall)
    assert not near_offset_change(NEW_YORK, T0)


@pytest.mark.parametrize(
    ("schedule", "why"),
    [
        ("TZ=UTC 0 * * * *", "TZ="),
        ("CRON_TZ=Europe/Berlin 0 * * * *", "TZ="),
        ("@every 5m", "macro"),
        ("0 0 * * * *", "5 fields"),
        ("61 * * * *", "unparseable"),
        ("", "5 fields"),
    ],
)
def test_unsupported_schedules(schedule: str, why: str) -> None:
    with pytest.raises(Unsupported, match=why):
        check_schedule(schedule)


def test_macros_and_spacing() -> None:
    assert check_schedule("@Hourly") == "@hourly"
    assert check_schedule(" 0  1 * * * ") == "0 1 * * *"
    assert next_after("@daily", UTC, T0) == datetime(2026, 11, 29, tzinfo=UTC).timestamp()


def test_zone() -> None:
    assert zone({}) is UTC
    assert zone({"timeZone": ""}) is UTC
    assert zone({"timeZone": "Europe/Berlin"}) == BERLIN
    with pytest.raises(Unsupported, match="timeZone"):
        zone({"timeZone": "Mars/Olympus"})


def test_timestamps() -> None:
    assert start_at(T0) == "2026-11-28T17:00:00.000Z"
    assert start_at(T0 + 0.25) == "2026-11-28T17:00:00.250Z"
    assert parse_timestamp("2026-11-29T00:00:00+01:00") == T0 + 6 * 3600
    assert parse_timestamp("2026-11-28T17:00:00Z") == T0
    assert parse_timestamp("nonsense") is None
    assert parse_timestamp(None) is None
