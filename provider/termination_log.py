"""The termination-message file of one container instance (kubelet's ``makeMounts``).

For every container start kubelet creates a fresh, empty, world-writable file under the pod's
directory (``<pod dir>/containers/<container>/<random id>``) and mounts it at the container's
``terminationMessagePath``: whatever the process writes there becomes its terminated
``message`` (read back by the runtime side, ``sandbox/cri/termination_message.py``). A new file
per instance means a restarted container never reports its predecessor's message. The files go
with the pod's directory.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from provider.resolve_volumes import pod_dir
from sandbox.backend import Mount


def create_termination_log(volumes_dir: Path, uid: str, container: str, container_path: str) -> Mount:
    """Create the empty file (mode 0666 whatever the umask) and return its mount (blocking)."""
    base = pod_dir(volumes_dir, uid) / "containers" / container
    base.mkdir(parents=True, exist_ok=True)
    path = base / secrets.token_hex(4)
    path.touch()
    os.chmod(path, 0o666)
    return Mount(container_path=container_path, host_path=str(path))


def with_termination_log(mounts: list[Mount], log: Mount | None) -> list[Mount]:
    """Add the termination-log mount (kubelet appends it after the volume mounts)."""
    return [*mounts, log] if log is not None else mounts
