"""Lease renewal gaps of the node soak (bench.soak_node): what counts as a missed renewal."""

from __future__ import annotations

from bench.soak_node import SoakResult, renew_gaps


def test_gaps_between_distinct_renewals_and_to_the_end() -> None:
    times = [
        "2026-11-23T10:00:00.000000Z",
        "2026-11-23T10:00:00.000000Z",  # the same renewal seen twice
        "2026-11-23T10:00:10.500000Z",
        "2026-11-23T10:00:21.000000Z",
        "",
    ]
    end = 1795428000.0 + 25.0  # 2026-11-23T10:00:25Z
    assert renew_gaps(times, end) == [10.5, 10.5, 4.0]


def test_a_gap_of_two_intervals_is_a_missed_renewal() -> None:
    ok = SoakResult(pods=1, max_renew_gap=19.9, renew_interval=10.0)
    missed = SoakResult(pods=1, max_renew_gap=20.0, renew_interval=10.0)
    assert ok.ok and ok.missed_renewals == 0
    assert not missed.ok and missed.missed_renewals == 1
