"""The kubelet HTTPS API of the virtual node: logs, stats, metrics, pods, health.

Served by aiohttp on the node's daemon endpoint port so that the API server's
``pods/log`` and ``nodes/proxy`` subresources, metrics-server and Prometheus talk to
warmlet exactly as they talk to a kubelet (same paths, parameters, authn/authz).
"""

from provider.kubelet_api.pods import CallablePods, PodsProvider, StaticPods
from provider.kubelet_api.server import KubeletApiServer, build_app, start_kubelet_api

__all__ = [
    "CallablePods",
    "KubeletApiServer",
    "PodsProvider",
    "StaticPods",
    "build_app",
    "start_kubelet_api",
]
