"""The metered CRI client: one duration per call and errors by gRPC code, recorded around the
decorated client's calls (which keep their answers and errors)."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import REGISTRY

from proto import cri_pb2 as pb
from sandbox.backend import RuntimeUnavailableError
from sandbox.cri.client import CriCallError
from sandbox.cri.metered import MeteredCriClient


def sample(name: str, **labels: str) -> float:
    return float(REGISTRY.get_sample_value(name, labels) or 0.0)


class Inner:
    def __init__(self) -> None:
        self.fail: Exception | None = None

    async def version(self) -> pb.VersionResponse:
        if self.fail is not None:
            raise self.fail
        return pb.VersionResponse(runtime_name="fake")


async def test_calls_and_errors_are_recorded_by_method_and_code() -> None:
    inner = Inner()
    client = MeteredCriClient(inner)  # type: ignore[arg-type]
    count = "warmlet_cri_call_duration_seconds_count"
    errors = "warmlet_cri_call_errors_total"
    calls0 = sample(count, method="Version")
    nf0 = sample(errors, method="Version", code="NOT_FOUND")
    un0 = sample(errors, method="Version", code="UNAVAILABLE")
    assert (await client.version()).runtime_name == "fake"
    assert sample(count, method="Version") == calls0 + 1
    inner.fail = CriCallError("Version", grpc.StatusCode.NOT_FOUND, "nope")
    with pytest.raises(CriCallError):
        await client.version()
    inner.fail = RuntimeUnavailableError("away")
    with pytest.raises(RuntimeUnavailableError):
        await client.version()
    assert sample(count, method="Version") == calls0 + 3
    assert sample(errors, method="Version", code="NOT_FOUND") == nf0 + 1
    assert sample(errors, method="Version", code="UNAVAILABLE") == un0 + 1
