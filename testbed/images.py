"""OCI images built offline from Debian's busybox-static: pause, busybox and a fat image.

(The images of Kubernetes' e2e suite are assembled from the same pieces in
:mod:`testbed.e2e_images`.)

No registry outside this machine is reachable, so images are assembled by hand as OCI image
layouts (uncompressed layers, fixed mtimes/owners so the same inputs give the same digests)
and cached under ``$WARMLET_CACHE/images/<name>``. An archive for ``ctr images import`` is
made per import because the full image name (which contains the registry port) varies.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from testbed.util import cache_dir, kv

log = logging.getLogger("testbed.images")

BUSYBOX = Path("/bin/busybox")
TAG = "1.0"
PAUSE_SCRIPT = 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'
_FORMAT_VERSION = "2"  # bump to invalidate cached layouts when the recipe changes


@dataclass(frozen=True)
class ImageSpec:
    """Recipe of one image."""

    name: str
    entrypoint: list[str] | None
    cmd: list[str] | None
    fat_mb: int = 0
    user: str = ""  # the image config's User ("" = root)


def specs(fat_mb: int = 100) -> list[ImageSpec]:
    """The three images every test bed provides."""
    return [
        ImageSpec("pause", ["/bin/sh", "-c", PAUSE_SCRIPT], None),
        ImageSpec("busybox", None, ["sh"]),
        ImageSpec("fat", None, ["sh"], fat_mb=fat_mb),
    ]


def tarinfo(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    """A tar entry owned by root with mtime 0 (same inputs, same digests)."""
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.size, ti.linkname = kind, mode, size, link
    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "root", "root"
    return ti


def busybox_layer() -> bytes:
    """Rootfs: /bin/busybox + a symlink per applet, minimal /etc, the usual mount points."""
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d, mode in [
            ("bin", 0o755),
            ("dev", 0o755),
            ("etc", 0o755),
            ("proc", 0o555),
            ("root", 0o700),
            ("sys", 0o555),
            ("tmp", 0o1777),
            ("var", 0o755),
            ("var/tmp", 0o1777),
            ("home", 0o755),
        ]:
            tf.addfile(tarinfo(d, tarfile.DIRTYPE, mode))
        data = BUSYBOX.read_bytes()
        tf.addfile(tarinfo("bin/busybox", tarfile.REGTYPE, 0o755, len(data)), io.BytesIO(data))
        for a in sorted(set(applets) - {"busybox"}):
            tf.addfile(tarinfo(f"bin/{a}", tarfile.SYMTYPE, 0o777, link="busybox"))
        files = {
            "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
            "etc/group": "root:x:0:\nnogroup:x:65534:\n",
            "etc/nsswitch.conf": "hosts: files dns\n",
        }
        for path, text in files.items():
            raw = text.encode()
            tf.addfile(tarinfo(path, tarfile.REGTYPE, 0o644, len(raw)), io.BytesIO(raw))
    return buf.getvalue()


def _fat_layer(mb: int) -> bytes:
    """One file of ``mb`` MiB of seeded pseudo-random bytes: incompressible, deterministic."""
    data = random.Random(f"warmlet-fat-{mb}").randbytes(mb << 20)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(tarinfo("data", tarfile.DIRTYPE, 0o755))
        tf.addfile(tarinfo("data/blob", tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    return buf.getvalue()


class ImageLayout:
    """An OCI image layout directory holding exactly one image tagged :data:`TAG`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _put(self, data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        blob = self.path / "blobs" / "sha256" / digest
        if not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    def build(self, spec: ImageSpec, layers: list[bytes]) -> None:
        """Write blobs, config, manifest and index.json."""
        ldescs = [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **self._put(x)} for x in layers]
        diff_ids = [f"sha256:{hashlib.sha256(x).hexdigest()}" for x in layers]
        config: dict[str, object] = {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/",
        }
        if spec.entrypoint:
            config["Entrypoint"] = spec.entrypoint
        if spec.cmd:
            config["Cmd"] = spec.cmd
        if spec.user:
            config["User"] = spec.user
        cfg = {
            "created": "1970-01-01T00:00:00Z",
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": f"warmlet testbed {spec.name}"}],
        }
        cdesc = {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **self._put(json.dumps(cfg, sort_keys=True).encode()),
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": cdesc,
            "layers": ldescs,
        }
        mdesc = {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            **self._put(json.dumps(manifest, sort_keys=True).encode()),
            "platform": {"architecture": "amd64", "os": "linux"},
        }
        (self.path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        self._write_index(self.path / "index.json", mdesc, None)

    @staticmethod
    def _write_index(path: Path, mdesc: dict[str, object], full_name: str | None) -> None:
        ann = {"org.opencontainers.image.ref.name": TAG}
        if full_name:
            ann["io.containerd.image.name"] = full_name
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{**mdesc, "annotations": ann}],
        }
        path.write_text(json.dumps(index, sort_keys=True))

    def manifest_desc(self) -> dict[str, object]:
        """The single manifest descriptor of index.json, without annotations."""
        m = dict(json.loads((self.path / "index.json").read_text())["manifests"][0])
        m.pop("annotations", None)
        return m

    def archive(self, dest: Path, full_name: str) -> Path:
        """An OCI archive (tar of the layout) whose index names the image ``full_name``."""
        index = dest.with_suffix(".index.json")
        self._write_index(index, self.manifest_desc(), full_name)
        with tarfile.open(dest, "w") as tf:
            tf.add(self.path / "oci-layout", "oci-layout")
            tf.add(index, "index.json")
            tf.add(self.path / "blobs", "blobs")
        index.unlink()
        return dest


def build_all(fat_mb: int = 100, root: Path | None = None) -> dict[str, ImageLayout]:
    """Build (or reuse from cache) the layouts of pause, busybox and fat."""
    root = root or cache_dir() / "images"
    bb_sum = hashlib.sha256(BUSYBOX.read_bytes()).hexdigest()[:12]
    out: dict[str, ImageLayout] = {}
    base: bytes | None = None
    for spec in specs(fat_mb):
        key = f"{spec.name}-{bb_sum}-v{_FORMAT_VERSION}" + (f"-{spec.fat_mb}mb" if spec.fat_mb else "")
        path = root / key
        layout = ImageLayout(path)
        if not (path / "index.json").exists():
            log.info(
                kv(
                    "building OCI image layout (first time only, a few seconds)",
                    name=spec.name,
                    extra_layer_mb=spec.fat_mb or 0,
                    path=path,
                )
            )
            tmp = root / f".{key}.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            base = base or busybox_layer()
            layers = [base] + ([_fat_layer(spec.fat_mb)] if spec.fat_mb else [])
            ImageLayout(tmp).build(spec, layers)
            try:
                tmp.rename(path)
            except OSError:  # a concurrent builder won the race: same content, keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
            log.info(kv("built image layout", name=spec.name, path=path))
        out[spec.name] = layout
    return out
