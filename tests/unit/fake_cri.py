"""A fake CRI RuntimeService served by a real grpc.aio server on a unix socket (unit tests)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc.aio

from proto import cri_pb2_grpc as pbg


@contextlib.asynccontextmanager
async def serve_runtime(servicer: pbg.RuntimeServiceServicer, sock: Path) -> AsyncIterator[str]:
    """Serve ``servicer`` on ``sock``; yields the ``unix://`` endpoint."""
    srv = grpc.aio.server()
    pbg.add_RuntimeServiceServicer_to_server(servicer, srv)
    srv.add_insecure_port(f"unix://{sock}")
    await srv.start()
    try:
        yield f"unix://{sock}"
    finally:
        await srv.stop(0)
