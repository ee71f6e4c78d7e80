"""kubernetes_asyncio's configuration loaders, without its generated API and model modules.

warmlet speaks raw JSON (provider/kubeclient.py) and uses kubernetes_asyncio only to load a
kubeconfig or the in-cluster configuration (certificates, tokens, exec plugins). The library's
package ``__init__`` modules import all of its generated API and model classes (about 780 modules,
31 MB resident in every warmlet process, a fifth of a 10,000-pod simulated node's memory) before
that. ``loaders()`` imports just the loaders: the two package ``__init__`` modules are stood in
for while ``kubernetes_asyncio.config.kube_config`` and its own imports load, then every module
of the library loaded that way leaves ``sys.modules`` again, so a later ordinary
``import kubernetes_asyncio`` (the tests' admin client) gets the whole library, untouched.

Should the library's layout ever change so this fails, the ordinary import is used (and logged):
more memory, same behaviour.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

PACKAGE = "kubernetes_asyncio"


@dataclass(frozen=True)
class Loaders:
    """What warmlet needs of kubernetes_asyncio: a Configuration and the two ways to fill it."""

    configuration: Callable[[], Any]
    load_kube_config: Callable[..., Awaitable[None]]
    load_incluster_config: Callable[..., None]
    config_exception: type[Exception]
    service_token_filename: str
    lean: bool  # loaded without the API and model modules


class _NoApiClient:
    """Stands in for ``kubernetes_asyncio.client.ApiClient``, which the kube_config module imports
    for helpers warmlet never calls (``new_client_from_config``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("warmlet loads kubernetes_asyncio without its ApiClient")


def _imported(lean: bool) -> Loaders:
    """The loaders from the library's modules: imported here, or found in ``sys.modules`` when
    ``_lean`` has imported them its way."""

    def module(name: str) -> types.ModuleType:
        return importlib.import_module(f"{PACKAGE}.{name}")

    incluster = module("config.incluster_config")
    return Loaders(
        configuration=module("client.configuration").Configuration,
        load_kube_config=module("config.kube_config").load_kube_config,
        load_incluster_config=incluster.load_incluster_config,
        config_exception=module("config.config_exception").ConfigException,
        service_token_filename=incluster.SERVICE_TOKEN_FILENAME,
        lean=lean,
    )


def _ordinary() -> Loaders:
    return _imported(lean=False)


def _library_modules() -> list[str]:
    return [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]


def _stand_in(name: str, path: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [path]
    sys.modules[name] = module
    return module


def _lean() -> Loaders:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(f"{PACKAGE} is not installed")
    root = os.path.dirname(spec.origin)
    before = set(_library_modules())
    try:
        _stand_in(PACKAGE, root)
        client = _stand_in(f"{PACKAGE}.client", os.path.join(root, "client"))
        _stand_in(f"{PACKAGE}.config", os.path.join(root, "config"))
        configuration = importlib.import_module(f"{PACKAGE}.client.configuration")
        client.Configuration = configuration.Configuration  # type: ignore[attr-defined]
        client.ApiClient = _NoApiClient  # type: ignore[attr-defined]
        return _imported(lean=True)  # kube_config and the rest, under the stand-ins
    finally:
        for name in _library_modules():
            if name not in before:
                del sys.modules[name]


@cache
def loaders() -> Loaders:
    """The loaders, imported once per process (lean unless the whole library is loaded already)."""
    if PACKAGE in sys.modules:
        return _ordinary()
    try:
        return _lean()
    except Exception as e:  # any failure of the lean import means: import it whole
        log.warning("kubernetes_asyncio loaded whole (its lean import failed) err=%r", e)
        return _ordinary()
