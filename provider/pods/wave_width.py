"""How many ``StartContainer`` calls a start wave keeps in flight: a hill climb on the measured rate.

The runtime's start rate depends on the calls in flight: too few leave the CPUs idle between
calls, too many make every call slower (containerd 1.6 + runc on 2 cores: about 30 starts/s at
4-8 in flight, 17/s at 32; docs/design.md). The best width depends on the machine and its load,
so with ``pods.start_wave_adaptive`` the wave finds it: it starts at the width that was best
so far (first: the backend's own figure), measures the rate over a window of completed starts,
tries the neighbouring widths it has not measured yet, and goes on with the best one. Rates are
kept per width across waves (a moving average), so the next wave starts where the last one ended.

Pure: :func:`learn` folds one window's rate into the estimates, :func:`choose` picks the next width.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ALPHA = 0.5  # weight of a new window's rate in a width's moving average


@dataclass(frozen=True)
class Bounds:
    """The widths the climb may use, from the backend's figure (``start``)."""

    start: int
    low: int
    high: int

    @classmethod
    def around(cls, start: int) -> Bounds:
        start = max(1, start)
        return cls(start, max(1, start // 4), max(start + 1, start * 4))


def step_of(width: int) -> int:
    """Neighbouring widths are about a third apart (6 -> 4 and 8; 512 -> 341 and 683)."""
    return max(1, round(width / 3))


def window_of(width: int) -> int:
    """Completed starts per measured window: enough calls that each worker finishes about two."""
    return max(4, 2 * width)


def learn(rates: Mapping[int, float], width: int, rate: float, alpha: float = ALPHA) -> dict[int, float]:
    """The estimates with one window's ``rate`` (starts/s) at ``width`` folded in."""
    out = dict(rates)
    old = out.get(width)
    out[width] = rate if old is None else (1 - alpha) * old + alpha * rate
    return out


def best(rates: Mapping[int, float], default: int) -> int:
    """The width with the highest estimate (the smaller on a tie); ``default`` when none."""
    if not rates:
        return default
    return max(sorted(rates), key=lambda w: rates[w])


def choose(rates: Mapping[int, float], bounds: Bounds) -> int:
    """The next width: an unmeasured neighbour of the best width (up first), else the best."""
    if not rates:
        return bounds.start
    top = best(rates, bounds.start)
    step = step_of(top)
    for w in (top + step, top - step):
        if bounds.low <= w <= bounds.high and w not in rates:
            return w
    return min(bounds.high, max(bounds.low, top))
