"""End-to-end tier: the ``e2e`` fixture (see e2e_helpers.E2E)."""

from __future__ import annotations

from e2e_helpers import e2e

__all__ = ["e2e"]
