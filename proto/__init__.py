"""warmlet's CRI runtime v1 protocol subset (``cri.proto``) and its generated stubs.

Import the stubs with ``from proto import cri_pb2, cri_pb2_grpc``: the first import regenerates
``proto/gen/`` if it is missing or stale (hash of the .proto), so tests and the CLI work on a
clean clone without a separate build step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proto.gen import cri_pb2 as cri_pb2
    from proto.gen import cri_pb2_grpc as cri_pb2_grpc

__all__ = ["cri_pb2", "cri_pb2_grpc"]


def _load() -> None:
    from proto import generate

    if not generate.is_fresh():
        generate.generate()


def __getattr__(name: str) -> Any:
    if name in __all__:
        _load()
        import importlib

        mod = importlib.import_module(f"proto.gen.{name}")
        globals()[name] = mod
        return mod
    raise AttributeError(name)
