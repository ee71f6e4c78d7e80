"""Test tiers by folder (unit / integration / e2e / faults) and the test-bed fixtures (lazy)."""

from __future__ import annotations

from pathlib import Path

import pytest

# Fixtures only: importing the plugin starts nothing; the bed starts when a test asks for it.
pytest_plugins = ["testbed.pytest_plugin", "testbed.reliability_plugin"]

_HERE = Path(__file__).resolve().parent
_TIERS = ("unit", "integration", "e2e", "faults")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with the tier of its folder, so ``-m unit`` selects without decorators."""
    for item in items:
        try:
            rel = Path(str(item.path)).resolve().relative_to(_HERE)
        except ValueError:
            continue
        if rel.parts and rel.parts[0] in _TIERS:
            item.add_marker(getattr(pytest.mark, rel.parts[0]))
