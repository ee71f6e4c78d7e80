"""warmlet's Kubernetes side: node, pods, status, kubelet HTTP API, CLI."""

__version__ = "0.1.0"
