"""The images Kubernetes' e2e suite runs in its [NodeConformance] specs, built offline.

The suite names its images by registry (``test/utils/image/manifest.go`` of the pinned release)
and lets a YAML file, named by the ``KUBE_TEST_REPO_LIST`` environment variable, override each
registry. No public registry is reachable here, so the images those specs use are assembled
like :mod:`testbed.images` assembles busybox (OCI layouts over Debian's busybox-static), pushed
to the bed's loopback registry under the overridden repository names with the tags the manifest
expects, and the override file points the suite at them:

- ``agnhost`` (2.63.0, and 2.55 as the "previous" agnhost): the release's ``test/images/agnhost``
  built statically by ``scripts/build-e2e.sh``, ENTRYPOINT ``/agnhost``, CMD ``pause``, with the
  image's ``agnhost-2`` link, ``/uploads``, its ``user-defined-in-image`` user and group, and a
  ``/bin/bash`` that runs busybox's shell and a ``curl`` that makes its GET with busybox's wget
  (specs run ``/bin/bash -c`` and ``curl http://...`` in agnhost);
- ``busybox`` (1.37.0-1): the bed's busybox;
- ``nonroot`` (1.5): busybox with ``USER 1234``;
- ``nonewprivs`` (1.4): busybox with the release's setuid ``nnp`` program;
- ``pause`` (3.10.2): the bed's pause;
- ``glibc-dns-testing`` (2.0.0): the bed's busybox (its specs run ``hostname`` and
  ``hostname -f``, which busybox answers from the pod's /etc/hosts like glibc does).

Images not in this list (nginx, kitten, nautilus, the NFS/iSCSI servers, ...) are not built:
their specs are skipped with a reason (``bench.conformance_report``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import struct
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from testbed.images import BUSYBOX, PAUSE_SCRIPT, TAG, ImageLayout, ImageSpec, busybox_layer, tarinfo
from testbed.util import REPO_ROOT, bin_dir, cache_dir, kv, run

log = logging.getLogger("testbed.e2e_images")

_FORMAT_VERSION = "3"  # bump to invalidate cached layouts when a recipe changes
# Repository prefixes under the bed's registry, one per registry of the manifest's RegistryList.
E2E_PREFIX = "e2e-test-images"
GC_PREFIX = "k8s"
# manifest.go's RegistryList YAML keys -> prefix under the bed's registry. invalidRegistry stays
# invalid (specs expect pulls from it to fail); privateRegistry is the authenticated one (not here).
_OVERRIDES = {
    "promoterE2eRegistry": E2E_PREFIX,
    "buildImageRegistry": "build-image",
    "gcEtcdRegistry": GC_PREFIX,
    "gcRegistry": GC_PREFIX,
    "sigStorageRegistry": "sig-storage",
    "dockerLibraryRegistry": "library",
    "cloudProviderGcpRegistry": "cloud-provider-gcp",
}
USER_DEFINED_IN_IMAGE = (1000, 50000)  # agnhost's adduser -u 1000 / addgroup -g 50000


@dataclass(frozen=True)
class E2EImage:
    """One image of the suite: repository (under the bed's registry), tags, recipe."""

    repo: str
    tags: tuple[str, ...]
    spec: ImageSpec
    # Extra layer over busybox, from the bin dir (None: busybox alone).
    layer: Callable[[Path], bytes] | None = None
    needs: tuple[str, ...] = ()  # binaries of the bin dir the layer uses (part of the cache key)


def repo_list(registry: str) -> dict[str, str]:
    """The ``KUBE_TEST_REPO_LIST`` content pointing the suite's registries at ``registry``."""
    return {key: f"{registry}/{prefix}" for key, prefix in _OVERRIDES.items()}


def _file_layer(entries: list[tuple[str, bytes | None, int, str]]) -> bytes:
    """A layer of (path, data, mode, link): data None + link "" = directory, link = symlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path, data, mode, link in entries:
            if link:
                tf.addfile(tarinfo(path, tarfile.SYMTYPE, 0o777, link=link))
            elif data is None:
                tf.addfile(tarinfo(path, tarfile.DIRTYPE, mode))
            else:
                tf.addfile(tarinfo(path, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))
    return buf.getvalue()


CURL_SHIM = b"""#!/bin/sh
url=""
for a in "$@"; do case "$a" in -*) ;; *) url="$a" ;; esac; done
exec wget -q -O - "$url"
"""


def _agnhost_layer(bins: Path) -> bytes:
    uid, gid = USER_DEFINED_IN_IMAGE
    passwd = (
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n"
        f"user-defined-in-image:x:{uid}:{uid}::/home/user-defined-in-image:/bin/sh\n"
    )
    group = (
        "root:x:0:\nnogroup:x:65534:\n"
        f"user-defined-in-image:x:{uid}:\ngroup-defined-in-image:x:{gid}:user-defined-in-image\n"
    )
    return _file_layer(
        [
            ("agnhost", static_binary(bins / "agnhost").read_bytes(), 0o755, ""),
            ("agnhost-2", None, 0, "agnhost"),
            # the real agnhost image has bash, and specs run `/bin/bash -c ...` in it: busybox's
            # POSIX shell runs those scripts (no bash is buildable offline here)
            ("bin/bash", b'#!/bin/sh\nexec /bin/sh "$@"\n', 0o755, ""),
            # ... and curl: the hook specs run `curl http://<ip>:8080/echo?msg=...` in it; busybox's
            # wget makes the same GET (its options are not curl's: only the URL is passed on)
            ("bin/curl", CURL_SHIM, 0o755, ""),
            ("uploads", None, 0o755, ""),
            ("home/user-defined-in-image", None, 0o755, ""),
            ("etc/passwd", passwd.encode(), 0o644, ""),
            ("etc/group", group.encode(), 0o644, ""),
        ]
    )


def _nnp_layer(bins: Path) -> bytes:
    data = static_binary(bins / "nnp").read_bytes()
    dirs: list[tuple[str, bytes | None, int, str]] = [
        (d, None, 0o755, "") for d in ("usr", "usr/local", "usr/local/bin")
    ]
    return _file_layer([*dirs, ("usr/local/bin/nnp", data, 0o4755, "")])


def images() -> list[E2EImage]:
    """The suite's images that can be built here (tags of the v1.36.3 manifest)."""
    return [
        E2EImage(
            f"{E2E_PREFIX}/agnhost",
            ("2.63.0", "2.55"),
            ImageSpec("agnhost", ["/agnhost"], ["pause"]),
            _agnhost_layer,
            ("agnhost",),
        ),
        E2EImage(f"{E2E_PREFIX}/busybox", ("1.37.0-1",), ImageSpec("busybox", None, ["sh"])),
        E2EImage(f"{E2E_PREFIX}/glibc-dns-testing", ("2.0.0",), ImageSpec("glibc-dns-testing", None, ["sh"])),
        E2EImage(f"{E2E_PREFIX}/nonroot", ("1.5",), ImageSpec("nonroot", None, ["sh"], user="1234")),
        E2EImage(
            f"{E2E_PREFIX}/nonewprivs", ("1.4",), ImageSpec("nonewprivs", None, ["nnp"]), _nnp_layer, ("nnp",)
        ),
        E2EImage(
            f"{GC_PREFIX}/pause", ("3.10.2",), ImageSpec("pause", ["/bin/sh", "-c", PAUSE_SCRIPT], None)
        ),
    ]


def is_static_elf(head: bytes) -> bool:
    """True when the ELF64 file starting with ``head`` has no PT_INTERP (no dynamic loader)."""
    if head[:4] != b"\x7fELF" or head[4] != 2:
        raise ValueError("not an ELF64 file")
    (phoff,) = struct.unpack_from("<Q", head, 32)
    phentsize, phnum = struct.unpack_from("<HH", head, 54)
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + 4 > len(head):
            raise ValueError("program headers beyond the bytes read")
        if struct.unpack_from("<I", head, off)[0] == 3:  # PT_INTERP
            return False
    return True


def static_binary(path: Path) -> Path:
    """``path`` if it is a static executable, else an error saying how to build it."""
    hint = "build it with scripts/build-e2e.sh"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {hint}")
    with open(path, "rb") as f:
        head = f.read(8192)
    if not is_static_elf(head):
        raise RuntimeError(f"{path} is dynamically linked and cannot run in a libc-less image: {hint}")
    return path


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def build_layouts(bins: Path | None = None, root: Path | None = None) -> dict[str, ImageLayout]:
    """Build (or reuse from cache) the layout of every image; repo → layout."""
    bins = bins or bin_dir()
    root = root or cache_dir() / "images" / "e2e"
    bb_sum = _digest(BUSYBOX)
    base: bytes | None = None
    out: dict[str, ImageLayout] = {}
    for img in images():
        parts = [img.spec.name, bb_sum, *(_digest(bins / n) for n in img.needs), f"v{_FORMAT_VERSION}"]
        key = "-".join(parts)
        path = root / key
        if not (path / "index.json").exists():
            log.info(kv("building e2e image layout (first time only)", repo=img.repo, path=path))
            tmp = root / f".{key}.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            base = base or busybox_layer()
            layers = [base] + ([img.layer(bins)] if img.layer else [])
            ImageLayout(tmp).build(img.spec, layers)
            try:
                tmp.rename(path)
            except OSError:  # a concurrent builder won the race: same content, keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
        out[img.repo] = ImageLayout(path)
    return out


def push_all(registry: str, layouts: dict[str, ImageLayout]) -> list[str]:
    """Push every image under every tag to ``registry`` (plain HTTP); returns the references."""
    tags = {img.repo: img.tags for img in images()}
    refs: list[str] = []
    for repo, layout in layouts.items():
        for tag in tags[repo]:
            ref = f"{registry}/{repo}:{tag}"
            run(
                [
                    *("skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"),
                    *(f"oci:{layout.path}:{TAG}", f"docker://{ref}"),
                ],
                timeout=300,
            )
            refs.append(ref)
    log.info(kv("e2e images pushed", registry=registry, n=len(refs)))
    return refs


def prepare(registry: str, dest: Path, bins: Path | None = None) -> Path:
    """Build and push the suite's images; write and return the ``KUBE_TEST_REPO_LIST`` file."""
    push_all(registry, build_layouts(bins))
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(repo_list(registry), sort_keys=True))
    return dest


def ensure_binaries() -> None:
    """Run scripts/build-e2e.sh (a no-op when its binaries are cached)."""
    subprocess.run(["bash", str(REPO_ROOT / "scripts" / "build-e2e.sh")], check=True)
