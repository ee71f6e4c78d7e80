"""A pod's own /etc/hosts, /etc/resolv.conf and /etc/hostname, written under its directory.

The runtime keeps these files per sandbox; warmlet reuses sandboxes across pods, so each pod
gets its own copies (kubelet's managed hosts file) mounted over the sandbox's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from provider.resolve_volumes import pod_dir
from sandbox.backend import Mount

ETC_FILES = {
    "/etc/hosts": "etc-hosts",
    "/etc/resolv.conf": "etc-resolv.conf",
    "/etc/hostname": "etc-hostname",
}


def etc_hosts(
    hostname: str, pod_ip: str, host_aliases: Iterable[Mapping[str, Any]] = (), domain: str = ""
) -> str:
    """kubelet's managed /etc/hosts of a pod (pkg/kubelet/kubelet_pods.go managedHostsFileContent):
    the pod's IP maps to ``<hostname>.<domain> <hostname>`` when it has a domain (subdomain)."""
    lines = [
        "# Kubernetes-managed hosts file.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    if pod_ip:
        lines.append(f"{pod_ip}\t{hostname}.{domain}\t{hostname}" if domain else f"{pod_ip}\t{hostname}")
    aliases = list(host_aliases)
    if aliases:  # one header, then one line per alias (kubelet's hostsEntriesFromHostAliases)
        lines += ["", "# Entries added by HostAliases."]
        lines += [
            f"{a.get('ip', '')}\t" + "\t".join(str(h) for h in a.get("hostnames") or []) for a in aliases
        ]
    return "\n".join(lines) + "\n"


def resolv_conf(servers: Iterable[str], searches: Iterable[str], options: Iterable[str]) -> str:
    out = [f"search {' '.join(searches)}"] if searches else []
    out += [f"nameserver {s}" for s in servers]
    opts = list(options)
    if opts:
        out.append(f"options {' '.join(opts)}")
    return "\n".join(out) + "\n"


def write_etc_files(volumes_dir: Path, uid: str, contents: Mapping[str, str]) -> dict[str, str]:
    """Per-pod /etc/hosts, /etc/resolv.conf and /etc/hostname (container path -> host file).

    Why: the runtime keeps these files per SANDBOX and containers may write to them, so a pod
    could leave entries for the next pod of a reused sandbox. Mounted per pod (as kubelet does
    for /etc/hosts) they start fresh with every pod and are deleted with its directory.
    """
    base = pod_dir(volumes_dir, uid)
    base.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    for cpath, text in contents.items():
        path = base / ETC_FILES[cpath]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        out[cpath] = str(path)
    return out


def with_etc_mounts(mounts: list[Mount], etc: Mapping[str, str]) -> list[Mount]:
    """Add the pod's /etc files unless the container mounts something at that path itself."""
    taken = {m.container_path.rstrip("/") for m in mounts}
    return mounts + [Mount(container_path=c, host_path=h) for c, h in etc.items() if c not in taken]
