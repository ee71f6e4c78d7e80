"""The gRPC health probe (``grpc.health.v1.Health/Check``) without generated stubs.

The two messages are tiny: ``HealthCheckRequest{string service = 1}`` and
``HealthCheckResponse{ServingStatus status = 1}``; they are encoded by hand and sent with grpc's
generic unary call. Outcomes and messages follow kubelet's ``pkg/probe/grpc``.
"""

from __future__ import annotations

import grpc
import grpc.aio

from provider.probes.outcome import Outcome, ProbeResult, go_duration

CHECK_METHOD = "/grpc.health.v1.Health/Check"
SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_request(service: str) -> bytes:
    if not service:
        return b""
    raw = service.encode()
    return b"\x0a" + _varint(len(raw)) + raw


def decode_status(data: bytes) -> int:
    """The ``status`` field of a HealthCheckResponse (0 when absent); unknown fields skipped."""
    i, status = 0, 0
    while i < len(data):
        key, i = _read_varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(data, i)
            if field == 1:
                status = value
        elif wire == 2:
            length, i = _read_varint(data, i)
            i += length
        elif wire == 5:
            i += 4
        elif wire == 1:
            i += 8
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return status


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def check(host: str, port: int, service: str, timeout_seconds: float, user_agent: str) -> Outcome:
    addr = _addr(host, port)
    async with grpc.aio.insecure_channel(
        addr, options=[("grpc.primary_user_agent", user_agent), ("grpc.enable_retries", 0)]
    ) as channel:
        call = channel.unary_unary(CHECK_METHOD, request_serializer=None, response_deserializer=None)
        try:
            resp: bytes = await call(encode_request(service), timeout=timeout_seconds, wait_for_ready=True)
        except grpc.aio.AioRpcError as e:
            code = e.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return Outcome(
                    ProbeResult.FAILURE,
                    "error: this server does not implement the grpc health protocol "
                    f"(grpc.health.v1.Health): {e.details()}",
                )
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return Outcome(
                    ProbeResult.FAILURE,
                    f'timeout: failed to connect service "{addr}" within '
                    f"{go_duration(timeout_seconds)}: context deadline exceeded",
                )
            return Outcome(
                ProbeResult.FAILURE,
                f"error: health rpc probe failed: rpc error: code = {code.name} desc = {e.details()}",
            )
    try:
        status = decode_status(resp)
    except ValueError as e:
        return Outcome(ProbeResult.FAILURE, f"error: health rpc probe failed: {e}")
    if status != 1:
        return Outcome(
            ProbeResult.FAILURE,
            f'service unhealthy (responded with "{SERVING_STATUS.get(status, str(status))}")',
        )
    return Outcome(ProbeResult.SUCCESS, "service healthy")
