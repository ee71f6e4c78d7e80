"""Integration tests run against the real test bed (fixtures from ``testbed.pytest_plugin``)."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def unique() -> str:
    """A short random suffix for object names, so tests never collide within a session."""
    return uuid.uuid4().hex[:8]
