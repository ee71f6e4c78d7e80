"""A real image registry on loopback (Debian's docker-registry), filled with skopeo.

Pulls through a real registry make image-cache and cold-start behaviour measurable the way
they are in production (manifest resolution, blob download, unpack), which an import skips.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from testbed.images import TAG, ImageLayout
from testbed.util import ProcessSet, free_port, http_get, kv, run
from testbed.wait import wait_until

log = logging.getLogger("testbed.registry")


class Registry:
    """docker-registry serving plain HTTP on 127.0.0.1:<port> with storage in the state dir."""

    def __init__(self, state_dir: Path, procs: ProcessSet, preferred_port: int | None = 5000) -> None:
        self.dir = state_dir / "registry"
        self.procs = procs
        self.port = free_port(preferred_port)
        self.address = f"127.0.0.1:{self.port}"

    def spawn(self) -> None:
        """Write the config and start the registry."""
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.dir / "data")}, "delete": {"enabled": True}},
            "http": {"addr": self.address},
            "health": {"storagedriver": {"enabled": False}},
        }
        path = self.dir / "config.yml"
        path.write_text(yaml.safe_dump(cfg))
        self.procs.spawn("registry", ["docker-registry", "serve", str(path)])

    def wait(self, timeout: float = 20) -> None:
        """/v2/ answers 200."""
        wait_until(
            "registry",
            lambda: http_get(f"http://{self.address}/v2/", 1)[0] == 200,
            timeout,
            alive=self.procs.alive("registry"),
            log_path=self.procs.logs["registry"],
        )

    def push(self, layout: ImageLayout, repo: str) -> str:
        """Copy an OCI layout into ``repo:TAG``; returns the pullable reference."""
        ref = f"{self.address}/{repo}:{TAG}"
        run(
            [
                "skopeo",
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                f"oci:{layout.path}:{TAG}",
                f"docker://{ref}",
            ],
            timeout=300,
        )
        log.info(kv("pushed", ref=ref))
        return ref

    def stop(self) -> None:
        """Stop the registry process."""
        self.procs.stop(["registry"])
