"""pytest fixtures over the real test bed, shared by tests/integration and tests/e2e.

Loaded from ``tests/conftest.py`` (``pytest_plugins``). Nothing starts at import or collection:
the bed comes up the first time a test requests one of these fixtures and is stopped at the
end of the session, even when tests fail or the run is interrupted (the ``TestBed`` processes
also die with the test process). Set ``WARMLET_TESTBED_REUSE=1`` to run against the bed that
``python -m testbed up`` keeps running instead of starting a private one.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from testbed.bed import TestBed, TestBedInfo, info_dir
from testbed.util import kv

log = logging.getLogger("testbed.pytest")


@dataclass(frozen=True)
class TestImages:
    """Pullable references of the bed's images (also indexable: ``images["busybox"]``)."""

    __test__ = False

    pause: str
    busybox: str
    fat: str

    def __getitem__(self, name: str) -> str:
        return str(getattr(self, name))


@pytest.fixture(scope="session")
def testbed(request: pytest.FixtureRequest) -> Iterator[TestBed]:
    """The running :class:`TestBed` (started once per session, lazily)."""
    if os.environ.get("WARMLET_TESTBED_REUSE") == "1" and (info_dir() / "ready").exists():
        yield TestBed.attach(TestBedInfo.load())
        return
    bed = TestBed()
    bed.start()
    log.info(kv("testbed for session", slot=bed.slot, seconds=bed.startup_seconds))
    try:
        yield bed
    finally:
        if request.session.testsfailed:
            dest = Path(str(request.config.rootpath)) / ".warmlet" / "testbed-logs" / f"slot-{bed.slot}"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(bed.state_dir / "logs", dest, dirs_exist_ok=True)
            log.warning(kv("tests failed; component logs kept", dir=dest))
        bed.stop()


@pytest.fixture(scope="session")
def kubeconfig(testbed: TestBed) -> Path:
    """Path of the cluster-admin kubeconfig."""
    return Path(testbed.admin_kubeconfig)


@pytest.fixture(scope="session")
def warmlet_kubeconfig(testbed: TestBed) -> Path:
    """Path of the kubeconfig of warmlet's node identity (``system:node:<testbed.node_name>``)."""
    return Path(testbed.warmlet_kubeconfig)


@pytest.fixture(scope="session")
def containerd_socket(testbed: TestBed) -> Path:
    """Path of the bed's containerd socket (CRI endpoint is ``unix://`` + this)."""
    return Path(testbed.containerd_socket)


@pytest.fixture(scope="session")
def cri_endpoint(containerd_socket: Path) -> str:
    """The CRI endpoint in gRPC target form."""
    return f"unix://{containerd_socket}"


@pytest.fixture(scope="session")
def registry(testbed: TestBed) -> str:
    """``127.0.0.1:<port>`` of the bed's plain-HTTP registry."""
    return str(testbed.registry)


@pytest.fixture(scope="session")
def images(testbed: TestBed) -> TestImages:
    """References of the pause, busybox and fat images (all pushed to the registry)."""
    return TestImages(**testbed.images)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def kube_api(kubeconfig: Path) -> AsyncIterator[object]:
    """An admin ``kubernetes_asyncio.client.ApiClient`` (closed at session end)."""
    from kubernetes_asyncio import client, config

    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    api = client.ApiClient(configuration=cfg)
    try:
        yield api
    finally:
        await api.close()
