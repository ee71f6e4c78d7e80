"""Fault tier: faults injected into the real test bed while warmlet runs (see README, Reliability).

Every test here is a row of the README's Reliability table: mark it with
``@pytest.mark.reliability(fault=..., checked=...)`` and report figures through the ``reliability``
fixture (``testbed.reliability_plugin``). The ``e2e`` fixture of tests/e2e is shared.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_helpers import E2E

from provider.kubeclient import KubeClient


@pytest.fixture
async def e2e(testbed: Any, kubeconfig: Path, cri_endpoint: str, tmp_path: Path) -> AsyncIterator[E2E]:
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    env = E2E(client, kubeconfig, tmp_path, testbed, cri_endpoint)
    try:
        yield env
    finally:
        await env.cleanup()
        await client.close()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]
