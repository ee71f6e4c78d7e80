"""Test tiers by folder (unit / integration / e2e / faults) and the test-bed fixtures (lazy)."""

from __future__ import annotations

import subprocess
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


def _mount_points() -> list[str]:
    """Mount points of this mount namespace (field 5 of /proc/self/mountinfo, octal escapes undone)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    return [line.split()[4].encode().decode("unicode_escape") for line in lines if len(line.split()) > 4]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Unmount the memory-backed volume roots (tmpfs) warmlet nodes left under this session's tmp
    dirs -- a SIGKILLed warmlet cannot unmount its own -- and those of dead sessions pytest is
    trying to delete (``garbage-*``), so tmp cleanup works and no mount outlives the tests."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    try:
        base = Path(factory.getbasetemp()).resolve()
    except OSError:
        return
    roots = [base, *base.parent.glob("garbage-*")]
    for mp in sorted(_mount_points(), key=len, reverse=True):
        if any(mp == str(r) or mp.startswith(f"{r}/") for r in roots):
            subprocess.run(["umount", "-l", mp], capture_output=True, check=False)
