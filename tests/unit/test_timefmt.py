"""provider/timefmt.py: RFC 3339 as the API server writes it, read back exactly as strptime reads it."""

from __future__ import annotations

import calendar
import math
import time

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from provider.timefmt import micro_time, parse_rfc3339, rfc3339

pytestmark = pytest.mark.unit


def by_strptime(value: str | None) -> float | None:
    """The reading parse_rfc3339 keeps (its fast path must agree with it everywhere)."""
    if not value:
        return None
    s = value.rstrip("Z").split(".")[0]
    try:
        return float(calendar.timegm(time.strptime(s, "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


LAST_SECOND = 253402300799  # 9999-12-31T23:59:59Z: a fraction on it could round into year 10000


@given(st.integers(min_value=0, max_value=LAST_SECOND - 1), st.floats(min_value=0, max_value=0.999999))
@example(17_179_869_184, 0.9999989999999999)  # the float sum itself is the next second
def test_what_rfc3339_writes_reads_back_to_the_second(seconds: int, fraction: float) -> None:
    ts = seconds + fraction
    whole = float(math.floor(ts))  # far from the epoch a float holds fewer fractional digits
    assert parse_rfc3339(rfc3339(ts)) == whole
    assert parse_rfc3339(micro_time(ts)) == whole


fields = st.tuples(
    st.integers(min_value=0, max_value=10000),
    st.integers(min_value=0, max_value=13),
    st.integers(min_value=0, max_value=32),
    st.integers(min_value=0, max_value=25),
    st.integers(min_value=0, max_value=61),
    st.integers(min_value=0, max_value=62),
)


@given(fields, st.sampled_from(["", "Z", ".5Z", ".123456789Z", "+01:00", " "]), st.booleans())
@example((2026, 2, 30, 0, 0, 0), "Z", True)  # no such day
@example((2026, 12, 31, 23, 59, 60), "Z", True)  # a leap second: strptime takes it
@example((2026, 13, 1, 0, 0, 0), "Z", True)
def test_the_fast_reading_agrees_with_strptime(parts: tuple[int, ...], suffix: str, padded: bool) -> None:
    y, mo, d, h, mi, s = parts
    if padded:
        text = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{suffix}"
    else:
        text = f"{y}-{mo}-{d}T{h}:{mi}:{s}{suffix}"
    assert parse_rfc3339(text) == by_strptime(text)


@given(st.text(max_size=30))
def test_any_text_reads_as_strptime_reads_it(text: str) -> None:
    assert parse_rfc3339(text) == by_strptime(text)


def test_missing() -> None:
    assert parse_rfc3339(None) is None and parse_rfc3339("") is None
