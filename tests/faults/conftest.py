"""Fault tier: faults injected into the real test bed while warmlet runs (see docs/reliability.md).

Every test here is a row of the Reliability table: mark it with
``@pytest.mark.reliability(fault=..., checked=...)`` and report figures through the ``reliability``
fixture (``testbed.reliability_plugin``). A run records its rows in the untracked
``.warmlet/results/reliability.json``; ``warmlet bench --report`` publishes them to
docs/reliability.md. The ``e2e`` fixture of tests/e2e is shared.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_helpers import e2e
from process_helpers import warmlets


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


__all__ = ["e2e", "unique", "warmlets"]
