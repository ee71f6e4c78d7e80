"""The benchmark percentile/summary helpers that every reported figure goes through."""

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.common import percentile, ratio, summarize_ms, write_result


def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0


def test_percentile_empty_is_nan() -> None:
    assert math.isnan(percentile([], 50))


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1), st.floats(min_value=0, max_value=100))
def test_percentile_is_a_member_and_monotonic(values: list[float], q: float) -> None:
    p = percentile(values, q)
    assert p in values
    assert percentile(values, min(100.0, q + 1)) >= p


def test_summarize_ms_converts_seconds() -> None:
    s = summarize_ms([0.1, 0.2, 0.3, 0.4])
    assert s["n"] == 4
    assert s["p50_ms"] == pytest.approx(200.0)
    assert s["p99_ms"] == pytest.approx(400.0)


def test_ratio_guards_zero() -> None:
    assert ratio(10, 5) == 2.0
    assert math.isnan(ratio(1, 0))


def test_write_result_stamps_machine(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = write_result("demo", {"n": 3}, results_dir=tmp_path)
    data = json.loads(path.read_text())
    assert data["scenario"] == "demo"
    assert data["machine"]["cores"] >= 1
    assert data["n"] == 3
