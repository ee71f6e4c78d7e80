"""End-to-end tier: the ``e2e`` fixture (see e2e_helpers.E2E)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
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
