"""A warmlet node as a ``warmlet run`` subprocess under the documented RBAC identity.

:func:`warmlet_process` is :func:`bench.harness.warmlet_node` plus what that does not set: an
identity bound to the ClusterRole of kind-config/rbac.yaml (the documented out-of-cluster
deployment) instead of the admin's — plus kind-config/punctual-rbac.yaml's when the node runs with
``punctual.enabled`` —, the simulated backend's timers, extra node settings and config sections, a
faster CRI poll. Used by the scenarios that measure warmlet at scale in its own process
(bench/midnight_burst.py, bench/scale.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from bench.harness import (
    REPO_ROOT,
    Bed,
    NodeHandle,
    free_port,
    node_config_dict,
    remove_instance_sandboxes,
    spawn_warmlet,
    stop_process,
    wait_node_ready,
)
from provider.kubeclient import ApiError, KubeClient

JSON = dict[str, Any]

# warmlet's identity in the benches: a user bound to the ClusterRole of kind-config/rbac.yaml (the
# documented out-of-cluster deployment). Not system:node:<name>: the Node authorizer does not let
# a node list CronJobs (no prewarming) nor Jobs (no punctual CronJobs).
RBAC_FILE = REPO_ROOT / "kind-config" / "rbac.yaml"
RBAC_NAME = "warmlet-bench"
# What punctual CronJobs need beyond it (punctual.enabled: true), bound the same way.
PUNCTUAL_RBAC_FILE = REPO_ROOT / "kind-config" / "punctual-rbac.yaml"
PUNCTUAL_RBAC_NAME = "warmlet-bench-punctual"


RBAC_API = "/apis/rbac.authorization.k8s.io/v1"


def warmlet_cluster_role(path: Path = RBAC_FILE, name: str = RBAC_NAME, kind: str = "ClusterRole") -> JSON:
    """The ``kind`` (ClusterRole, or the namespaced Role: the node Lease's) of ``path``
    (kind-config/rbac.yaml), renamed ``name`` for the benches; a Role keeps its namespace."""
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == kind:
            meta = {"name": name}
            if doc["metadata"].get("namespace"):
                meta["namespace"] = doc["metadata"]["namespace"]
            return {"metadata": meta, "rules": doc["rules"]}
    raise ValueError(f"no {kind} in {path}")


async def grant_warmlet_rbac(
    client: KubeClient, user: str, path: Path = RBAC_FILE, name: str = RBAC_NAME, kind: str = "ClusterRole"
) -> str:
    """The (shared) ``kind`` of ``path`` and a binding of it for ``user``; returns the binding's
    API path (deleted when the node stops)."""
    role = warmlet_cluster_role(path, name, kind)
    ns = role["metadata"].get("namespace")
    base = f"{RBAC_API}/namespaces/{ns}" if ns else RBAC_API
    roles, bindings = ("roles", "rolebindings") if ns else ("clusterroles", "clusterrolebindings")
    try:
        await client.post(f"{base}/{roles}", role)
    except ApiError as e:
        if not e.conflict:
            raise
        # exists (an earlier run): make its rules those of the file
        await client.patch(f"{base}/{roles}/{name}", {"rules": role["rules"]})
    binding = f"{name}-{user.replace(':', '-')}"
    with contextlib.suppress(ApiError):
        await client.post(
            f"{base}/{bindings}",
            {
                "metadata": {"name": binding},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
            },
        )
    return f"{base}/{bindings}/{binding}"


@contextlib.asynccontextmanager
async def warmlet_process(
    bed: Bed,
    backend: str,
    pool: Mapping[str, Any],
    simulated: Mapping[str, Any] | None = None,
    node: Mapping[str, Any] | None = None,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
    wait_ready: bool = True,
) -> AsyncIterator[NodeHandle]:
    """``warmlet run`` as a subprocess, like harness.warmlet_node, plus what that does not set.

    Own process (own event loop, no GIL shared with the bench's watch); the simulated backend's
    timers and node sections; other config ``sections`` merged into the config's (e.g. ``punctual``,
    ``pods``); an identity with the documented RBAC (see RBAC_FILE: its ClusterRole and its node
    Lease Role, and PUNCTUAL_RBAC_FILE's ClusterRole with ``punctual.enabled``). Yields once the
    Node is Ready (``wait_ready=False``: once spawned; the caller waits for its nodes). On exit: stopped,
    Node and bindings deleted, CRI sandboxes it left (idle pool members) removed.
    """
    name = f"mb-{backend[:3]}-{uuid.uuid4().hex[:6]}"
    workdir = Path(tempfile.mkdtemp(prefix=f"warmlet-{name}-"))
    port = free_port()
    cfg = node_config_dict(bed, name, workdir, port, backend, dict(pool))
    user = f"warmlet-bench:{name}"
    if bed.testbed is not None:
        cfg["kubeconfig"] = str(bed.testbed.kubeconfig_for(user))
    else:  # a cluster we cannot mint certificates for: its admin credentials
        cfg["kubeconfig"] = bed.kubeconfig
    cfg["log_level"] = "INFO"
    if node:
        cfg["node"].update(node)
    if simulated:
        cfg["simulated"] = dict(simulated)
    for key, section in (sections or {}).items():
        cfg[key] = {**(cfg.get(key) or {}), **section}
    if backend == "cri":
        cfg["cri"]["poll_interval_seconds"] = 0.2
    config_path = workdir / "warmlet.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    h = NodeHandle(name, port, workdir, config_path, workdir / "warmlet.log", backend, str(cfg["kubeconfig"]))
    client = await KubeClient.from_kubeconfig(bed.kubeconfig)
    bindings = [
        await grant_warmlet_rbac(client, user),
        # the node heartbeat Lease: rbac.yaml's Role in kube-node-lease
        await grant_warmlet_rbac(client, user, RBAC_FILE, RBAC_NAME, "Role"),
    ]
    if (cfg.get("punctual") or {}).get("enabled"):
        bindings.append(await grant_warmlet_rbac(client, user, PUNCTUAL_RBAC_FILE, PUNCTUAL_RBAC_NAME))
    try:
        h.proc = spawn_warmlet(config_path, h.log_path)
        if wait_ready:
            await wait_node_ready(client, name, 120)
        yield h
    finally:
        if h.proc is not None:
            await asyncio.to_thread(stop_process, h.proc)
        for path in (f"/api/v1/nodes/{name}", *bindings):
            with contextlib.suppress(ApiError):
                await client.delete(path)
        await client.close()
        if backend == "cri" and bed.cri_endpoint:
            await remove_instance_sandboxes(bed.cri_endpoint, name)
