"""Kubernetes resource quantities ("250m", "1.5Gi", "1e3") as integers.

Workload keys and the node's capacity compare resource shapes, so "1" and "1000m" must
parse to the same number; Decimal keeps that exact.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


def parse_quantity(value: str | int | float) -> Decimal:
    """The exact value of a quantity; ValueError when it is not one."""
    if isinstance(value, int | float):
        return Decimal(str(value))
    s = value.strip()
    if not s:
        raise ValueError("empty quantity")
    for suffix, mult in _BINARY.items():
        if s.endswith(suffix):
            return _number(s[: -len(suffix)], value) * mult
    if s[-1] in "numkMGTPE":
        return _number(s[:-1], value) * _DECIMAL[s[-1]]
    return _number(s, value)


def _number(s: str, original: object) -> Decimal:
    try:
        d = Decimal(s)
    except InvalidOperation:
        raise ValueError(f"invalid quantity {original!r}") from None
    if not d.is_finite():
        raise ValueError(f"invalid quantity {original!r}")
    return d


def cpu_milli(value: str | int | float | None) -> int:
    """CPU in millicores, rounded up like the apiserver does."""
    if value is None:
        return 0
    return int((parse_quantity(value) * 1000).to_integral_value(rounding="ROUND_CEILING"))


def to_int(value: str | int | float | None) -> int:
    """Bytes or counts, rounded up."""
    if value is None:
        return 0
    return int(parse_quantity(value).to_integral_value(rounding="ROUND_CEILING"))
