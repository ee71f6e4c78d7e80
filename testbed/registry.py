"""A real image registry on loopback (Debian's docker-registry), filled with skopeo.

Pulls through a real registry make image-cache and cold-start behaviour measurable the way
they are in production (manifest resolution, blob download, unpack), which an import skips.

:class:`PrivateRegistry` is a second one as private registries are: HTTPS with a certificate of
the bed's own PKI and htpasswd (bcrypt) authentication, for image pull secrets.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import shutil
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from testbed.certs import CertPair
from testbed.images import TAG, ImageLayout
from testbed.util import ProcessSet, free_port, http_get, kv, run
from testbed.wait import wait_until

log = logging.getLogger("testbed.registry")


class Registry:
    """docker-registry serving plain HTTP on 127.0.0.1:<port> with storage in the state dir."""

    name = "registry"  # process name and state sub-directory

    def __init__(self, state_dir: Path, procs: ProcessSet, preferred_port: int | None = 5000) -> None:
        self.dir = state_dir / self.name
        self.procs = procs
        self.port = free_port(preferred_port)
        self.address = f"127.0.0.1:{self.port}"

    def _config(self) -> dict[str, Any]:
        return {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.dir / "data")}, "delete": {"enabled": True}},
            "http": {"addr": self.address},
            "health": {"storagedriver": {"enabled": False}},
        }

    def spawn(self) -> None:
        """Write the config and start the registry."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "config.yml"
        path.write_text(yaml.safe_dump(self._config()))
        self.procs.spawn(self.name, ["docker-registry", "serve", str(path)])

    def _up(self) -> bool:
        return http_get(f"http://{self.address}/v2/", 1)[0] == 200

    def wait(self, timeout: float = 20) -> None:
        """/v2/ answers."""
        wait_until(
            self.name,
            self._up,
            timeout,
            alive=self.procs.alive(self.name),
            log_path=self.procs.logs[self.name],
        )

    def _dest_args(self) -> list[str]:
        return ["--dest-tls-verify=false"]

    def push(self, layout: ImageLayout, repo: str) -> str:
        """Copy an OCI layout into ``repo:TAG``; returns the pullable reference."""
        ref = f"{self.address}/{repo}:{TAG}"
        run(
            [
                "skopeo",
                "--insecure-policy",
                "copy",
                "--quiet",
                *self._dest_args(),
                f"oci:{layout.path}:{TAG}",
                f"docker://{ref}",
            ],
            timeout=300,
        )
        log.info(kv("pushed", ref=ref))
        return ref

    def stop(self) -> None:
        """Stop the registry process."""
        self.procs.stop([self.name])


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for an htpasswd file, with the C library's crypt (no Python package needed)."""
    lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = lib.crypt_gensalt(b"$2y$", 5, None, 0)
    hashed = lib.crypt(password.encode(), salt) if salt else None
    if not hashed or not hashed.startswith(b"$2"):
        raise RuntimeError("the C library's crypt has no bcrypt")
    return str(hashed.decode())


class PrivateRegistry(Registry):
    """docker-registry on HTTPS (``tls``: a serving cert of the bed's CA ``ca``) that requires
    htpasswd authentication as ``username``/``password``."""

    name = "registry-private"

    def __init__(
        self,
        state_dir: Path,
        procs: ProcessSet,
        tls: CertPair,
        ca: Path,
        username: str = "warmlet",
        password: str = "private-pass",
    ) -> None:
        super().__init__(state_dir, procs, preferred_port=None)
        self.tls, self.ca = tls, ca
        self.username, self.password = username, password

    def _config(self) -> dict[str, Any]:
        cfg = super()._config()
        htpasswd = self.dir / "htpasswd"
        htpasswd.write_text(f"{self.username}:{bcrypt_hash(self.password)}\n")
        cfg["auth"] = {"htpasswd": {"realm": "warmlet-private", "path": str(htpasswd)}}
        cfg["http"]["tls"] = {"certificate": str(self.tls.cert), "key": str(self.tls.key)}
        return cfg

    def _up(self) -> bool:
        """/v2/ answers 401 (authentication required) over verified TLS."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        try:
            with urllib.request.urlopen(f"https://{self.address}/v2/", timeout=1, context=ctx):
                return False  # 200 without credentials: not the private registry
        except urllib.error.HTTPError as e:
            return e.code == 401
        except OSError:
            return False

    def _dest_args(self) -> list[str]:
        certs = self.dir / "client-certs"  # skopeo trusts the *.crt of a cert dir as CAs
        certs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.ca, certs / "ca.crt")
        return [f"--dest-cert-dir={certs}", f"--dest-creds={self.username}:{self.password}"]
