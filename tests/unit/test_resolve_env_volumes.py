"""Env and volume resolution against fake ConfigMaps/Secrets/tokens."""

from __future__ import annotations

import base64
import copy
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from provider.podspec import dns_config, expand, pull_policy, sandbox_spec
from provider.resolve_env import ConfigError, field_value, resolve_env, resource_value
from provider.resolve_volumes import (
    MountError,
    container_mounts,
    ensure_memory_dir,
    is_memory_backed,
    memory_root,
    memory_size_limit,
    prepare_volumes,
    release_memory_root,
    remove_orphan_pod_dirs,
    remove_pod_dir,
    subpath_host_path,
)


@pytest.fixture
def mem_dir(tmp_path: Path) -> Iterator[Path]:
    """A memory-backed dir for memory volumes: /dev/shm when present (no mount needed), else skip."""
    shm = Path("/dev/shm")
    if not is_memory_backed(shm):
        pytest.skip("no tmpfs at /dev/shm")
    d = shm / f"warmlet-unit-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class Fake:
    def __init__(self) -> None:
        self.cms: dict[str, dict[str, Any]] = {
            "cfg": {"data": {"a": "1", "b": "2"}, "binaryData": {"bin": b64("B")}}
        }
        self.secrets: dict[str, dict[str, Any]] = {"sec": {"data": {"pw": b64("hunter2")}}}
        self.token_calls: list[tuple[Any, ...]] = []

    async def configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.cms.get(name)

    async def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.secrets.get(name)

    async def token(
        self, namespace: str, sa: str, audiences: Sequence[str], exp: int, pod: Mapping[str, Any]
    ) -> str:
        self.token_calls.append((namespace, sa, tuple(audiences), exp, pod["metadata"]["uid"]))
        return "TOKEN"


POD: dict[str, Any] = {
    "metadata": {
        "name": "p",
        "namespace": "ns",
        "uid": "uid1",
        "labels": {"app": "x", "b": "y"},
        "annotations": {"note": "hi"},
    },
    "spec": {
        "nodeName": "vnode",
        "serviceAccountName": "sa",
        "containers": [{"name": "c", "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}}],
    },
}
ALLOC = {"cpu": "16", "memory": "64Gi"}


async def env(container: dict[str, Any], fake: Fake | None = None) -> dict[str, str]:
    vs = await resolve_env(POD, container, fake or Fake(), "10.0.0.5", "192.168.0.1", ALLOC)
    return {e.name: e.value for e in vs}


async def test_plain_and_expanded_values() -> None:
    out = await env({"env": [{"name": "A", "value": "x"}, {"name": "B", "value": "$(A)-$(NOPE)-$$(A)"}]})
    assert out == {"A": "x", "B": "x-$(NOPE)-$(A)"}


async def test_configmap_and_secret_refs() -> None:
    out = await env(
        {
            "env": [
                {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "a"}}},
                {"name": "BIN", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "bin"}}},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "pw"}}},
                {
                    "name": "OPT",
                    "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "a", "optional": True}},
                },
                {
                    "name": "OPTKEY",
                    "valueFrom": {"secretKeyRef": {"name": "sec", "key": "nokey", "optional": True}},
                },
            ]
        }
    )
    assert out == {"A": "1", "BIN": "B", "PW": "hunter2"}


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ({"configMapKeyRef": {"name": "missing", "key": "a"}}, 'configmap "missing" not found'),
        ({"secretKeyRef": {"name": "missing", "key": "a"}}, 'secret "missing" not found'),
        ({"configMapKeyRef": {"name": "cfg", "key": "zz"}}, "couldn't find key zz in ConfigMap ns/cfg"),
        ({"secretKeyRef": {"name": "sec", "key": "zz"}}, "couldn't find key zz in Secret ns/sec"),
    ],
)
async def test_missing_refs_are_config_errors(ref: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        await env({"env": [{"name": "X", "valueFrom": ref}]})


async def test_missing_then_created_resolves() -> None:
    fake = Fake()
    c = {"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "late", "key": "k"}}}]}
    with pytest.raises(ConfigError):
        await env(c, fake)
    fake.cms["late"] = {"data": {"k": "v"}}
    assert await env(c, fake) == {"X": "v"}


async def test_env_from_with_prefix_and_override() -> None:
    out = await env(
        {
            "envFrom": [
                {"configMapRef": {"name": "cfg"}, "prefix": "CFG_"},
                {"secretRef": {"name": "sec"}},
                {"configMapRef": {"name": "missing", "optional": True}},
            ],
            "env": [{"name": "CFG_a", "value": "override"}],
        }
    )
    assert out == {"CFG_a": "override", "CFG_b": "2", "pw": "hunter2"}
    with pytest.raises(ConfigError, match='secret "nope" not found'):
        await env({"envFrom": [{"secretRef": {"name": "nope"}}]})


async def test_downward_api_env() -> None:
    c = {
        "env": [
            {"name": n, "valueFrom": {"fieldRef": {"fieldPath": p}}}
            for n, p in [
                ("N", "metadata.name"),
                ("NS", "metadata.namespace"),
                ("U", "metadata.uid"),
                ("NODE", "spec.nodeName"),
                ("SA", "spec.serviceAccountName"),
                ("IP", "status.podIP"),
                ("HIP", "status.hostIP"),
                ("L", "metadata.labels['app']"),
                ("AN", "metadata.annotations['note']"),
            ]
        ]
    }
    assert await env(c) == {
        "N": "p",
        "NS": "ns",
        "U": "uid1",
        "NODE": "vnode",
        "SA": "sa",
        "IP": "10.0.0.5",
        "HIP": "192.168.0.1",
        "L": "x",
        "AN": "hi",
    }
    assert field_value(POD, "metadata.labels", "", "") == 'app="x"\nb="y"'
    with pytest.raises(ConfigError):
        field_value(POD, "spec.bogus", "", "")


def test_resource_field_ref() -> None:
    c = POD["spec"]["containers"][0]
    assert resource_value(c, "limits.cpu", None, ALLOC) == "1"  # ceil(0.5)
    assert resource_value(c, "limits.cpu", "1m", ALLOC) == "500"
    assert resource_value(c, "limits.memory", "1Mi", ALLOC) == "64"
    assert resource_value({}, "limits.cpu", None, ALLOC) == "16"  # node allocatable
    assert resource_value({}, "requests.memory", None, ALLOC) == "0"
    # an unset divisor comes back from the apiserver as "0" (a Quantity is never omitted)
    assert resource_value(c, "limits.memory", "0", ALLOC) == str(64 * 1024 * 1024)
    assert resource_value(c, "limits.cpu", "0", ALLOC) == "1"


async def test_volumes_written_and_mounted(tmp_path: Path, mem_dir: Path) -> None:
    fake = Fake()
    pod = {
        **POD,
        "spec": {
            **POD["spec"],
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "sub/a.txt"}]}},
                {"name": "sec", "secret": {"secretName": "sec", "defaultMode": 0o400}},
                {
                    "name": "info",
                    "downwardAPI": {
                        "items": [
                            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                            {
                                "path": "cpu",
                                "resourceFieldRef": {
                                    "containerName": "c",
                                    "resource": "limits.cpu",
                                    "divisor": "1m",
                                },
                            },
                        ]
                    },
                },
                {
                    "name": "kube-api-access",
                    "projected": {
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {"configMap": {"name": "cfg", "items": [{"key": "b", "path": "ca.crt"}]}},
                            {
                                "downwardAPI": {
                                    "items": [
                                        {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
                                    ]
                                }
                            },
                        ]
                    },
                },
                {"name": "pvc", "persistentVolumeClaim": {"claimName": "x"}},
                {"name": "host", "hostPath": {"path": "/etc"}},
            ],
        },
    }
    paths = await prepare_volumes(pod, tmp_path, fake, "10.0.0.5", "h", ALLOC, memory_dir=mem_dir)
    root = tmp_path / "uid1" / "volumes"
    mem = mem_dir / "uid1" / "volumes"
    assert paths["scratch"] == str(root / "kubernetes.io~empty-dir" / "scratch")
    assert (root / "kubernetes.io~configmap/cfg/sub/a.txt").read_text() == "1"
    # secrets, tokens and the downward API are memory-backed, nothing of them on the disk dir
    assert not (root / "kubernetes.io~secret").exists()
    assert (mem / "kubernetes.io~secret/sec/pw").read_text() == "hunter2"
    assert is_memory_backed(mem / "kubernetes.io~secret/sec/pw")
    assert os.stat(mem / "kubernetes.io~secret/sec/pw").st_mode & 0o777 == 0o400
    assert (mem / "kubernetes.io~downward-api/info/cpu").read_text() == "500"
    proj = mem / "kubernetes.io~projected/kube-api-access"
    assert (proj / "token").read_text() == "TOKEN"
    assert (proj / "ca.crt").read_text() == "2"
    assert (proj / "namespace").read_text() == "ns"
    assert fake.token_calls == [("ns", "sa", (), 3607, "uid1")]
    assert "pvc" not in paths and "host" not in paths
    mounts = container_mounts(
        {
            "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/cfg", "readOnly": True},
                {"name": "scratch", "mountPath": "/s", "subPath": "x"},
                {"name": "pvc", "mountPath": "/data"},
            ]
        },
        paths,
    )
    assert [(m.container_path, m.read_only) for m in mounts] == [("/etc/cfg", True), ("/s", False)]
    assert mounts[1].host_path.endswith("scratch/x")
    assert os.path.isdir(mounts[1].host_path)  # noqa: ASYNC240
    remove_pod_dir(tmp_path, "uid1", mem_dir)
    assert not (tmp_path / "uid1").exists()
    assert not (mem_dir / "uid1").exists()


async def test_host_path_passthrough_when_allowed(tmp_path: Path) -> None:
    pod = {**POD, "spec": {**POD["spec"], "volumes": [{"name": "host", "hostPath": {"path": "/etc"}}]}}
    assert await prepare_volumes(pod, tmp_path, Fake(), "", "", ALLOC, allow_host_path=True) == {
        "host": "/etc"
    }


@pytest.mark.parametrize(
    "vol",
    [
        {"name": "v", "configMap": {"name": "missing"}},
        {"name": "v", "secret": {"secretName": "missing"}},
        {"name": "v", "configMap": {"name": "cfg", "items": [{"key": "zz", "path": "x"}]}},
    ],
)
async def test_missing_volume_sources_are_mount_errors(tmp_path: Path, vol: dict[str, Any]) -> None:
    pod = {**POD, "spec": {**POD["spec"], "volumes": [vol]}}
    with pytest.raises(MountError):
        await prepare_volumes(pod, tmp_path, Fake(), "", "", ALLOC)


async def test_optional_missing_volume_is_empty(tmp_path: Path) -> None:
    pod = {
        **POD,
        "spec": {**POD["spec"], "volumes": [{"name": "v", "configMap": {"name": "zz", "optional": True}}]},
    }
    paths = await prepare_volumes(pod, tmp_path, Fake(), "", "", ALLOC)
    assert [n for n in os.listdir(paths["v"]) if not n.startswith("..")] == []


def test_expand_edge_cases() -> None:
    assert expand("$(A", {"A": "x"}) == "$(A"
    assert expand("a$", {}) == "a$"
    assert expand("$(A)$(A)", {"A": "x"}) == "xx"


def test_pull_policy_default() -> None:
    assert pull_policy({"image": "busybox"}).value == "Always"
    assert pull_policy({"image": "busybox:latest"}).value == "Always"
    assert pull_policy({"image": "localhost:5000/busybox:1.36"}).value == "IfNotPresent"
    assert pull_policy({"image": "localhost:5000/busybox"}).value == "Always"
    assert pull_policy({"image": "x", "imagePullPolicy": "Never"}).value == "Never"


def test_dns_policies() -> None:
    p = {"metadata": {"namespace": "ns"}, "spec": {}}
    d = dns_config(p, ["10.0.0.10"], "cluster.local")
    assert d.servers == ["10.0.0.10"] and d.searches[0] == "ns.svc.cluster.local" and d.options == ["ndots:5"]
    p["spec"] = {
        "dnsPolicy": "None",
        "dnsConfig": {"nameservers": ["1.1.1.1"], "options": [{"name": "ndots", "value": "2"}]},
    }
    d = dns_config(p, ["10.0.0.10"], "cluster.local")
    assert d.servers == ["1.1.1.1"] and d.options == ["ndots:2"] and d.searches == []


def test_sandbox_spec_fields() -> None:
    s = sandbox_spec(POD, "ns/Pod/uid1#x", ["10.0.0.10"], "cluster.local")
    assert (s.uid, s.namespace, s.name, s.workload_key, s.hostname) == (
        "uid1",
        "ns",
        "p",
        "ns/Pod/uid1#x",
        "p",
    )
    assert s.resources.cpu_limit_milli == 500 and s.resources.memory_limit_bytes == 64 * 2**20


def test_subpath_never_escapes_the_volume(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "ok").mkdir()
    os.symlink("/etc", vol / "planted")  # what a container could do in a writable emptyDir
    os.symlink("../..", vol / "up")
    assert subpath_host_path(str(vol), "ok") == str(vol / "ok")
    assert subpath_host_path(str(vol), "new/dir") == str(vol / "new/dir")
    for bad in ("../../etc", "/etc", "a/../../x", "planted", "planted/passwd", "up/x", "ok/\x00"):
        with pytest.raises(ConfigError):
            subpath_host_path(str(vol), bad)
    mounts = container_mounts(
        {"volumeMounts": [{"name": "v", "mountPath": "/m", "subPathExpr": "$(POD)/data"}]},
        {"v": str(vol)},
        {"POD": "p1"},
    )
    assert mounts[0].host_path == str(vol / "p1/data")
    with pytest.raises(ConfigError):
        container_mounts(
            {"volumeMounts": [{"name": "v", "mountPath": "/m", "subPathExpr": "$(X)/etc"}]},
            {"v": str(vol)},
            {"X": ".."},
        )


def test_new_subpath_dirs_take_the_volume_mode(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    os.chmod(vol, 0o3777)  # a tmpfs emptyDir owned by an fsGroup
    (vol / "old").mkdir()
    os.chmod(vol / "old", 0o2700)
    host = subpath_host_path(str(vol), "old/a/b")
    for p in (vol / "old/a", vol / "old/a/b"):  # each created component, whatever the umask
        assert os.stat(p).st_mode & 0o7777 == 0o3777  # setgid and sticky too
    assert os.stat(vol / "old").st_mode & 0o777 == 0o700  # existing ones untouched
    assert host == str(vol / "old/a/b")


def test_memory_dir_is_tmpfs_or_mount_error(tmp_path: Path) -> None:
    """On disk, a memory volume is a tmpfs mount of its own (root) or a MountError, never a disk dir."""
    uid = "0f5b3a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    target = tmp_path / "m" / uid / "volumes" / "x"
    (tmp_path / "m" / "not-a-pod").mkdir(parents=True)
    try:
        ensure_memory_dir(target)
    except MountError as e:
        assert "refusing to write secrets to disk" in str(e)
        return
    assert is_memory_backed(target)
    (target / "s").write_text("x")
    assert remove_orphan_pod_dirs(tmp_path / "disk", {"other"}, tmp_path / "m") == [uid]
    assert not (tmp_path / "m" / uid).exists()
    assert (tmp_path / "m" / "not-a-pod").exists()  # never anything but pod-uid dirs


def test_memory_root_released_only_when_empty(tmp_path: Path) -> None:
    disk = tmp_path / "pods"
    root = memory_root(disk)
    try:
        ensure_memory_dir(root)
    except MountError:
        pytest.skip("cannot mount tmpfs here")
    assert is_memory_backed(root) and os.path.ismount(root)
    (root / "uid1").mkdir()
    assert not release_memory_root(disk)  # a pod's volumes are still there
    assert not release_memory_root(tmp_path, Path("/dev/shm"))  # never a tmpfs warmlet did not mount
    remove_pod_dir(disk, "uid1")
    assert release_memory_root(disk)
    assert not root.exists()


def test_pod_etc_files_are_the_pods_own(tmp_path: Path) -> None:
    from provider.pod_etc import etc_hosts, resolv_conf, with_etc_mounts, write_etc_files
    from sandbox.backend import Mount

    hosts = etc_hosts("web-0", "10.1.2.3", [{"ip": "10.9.9.9", "hostnames": ["a", "b"]}])
    assert "10.1.2.3\tweb-0" in hosts and "10.9.9.9\ta\tb" in hosts and hosts.endswith("\n")
    assert "web-0" not in etc_hosts("web-0", "")
    assert resolv_conf(["10.0.0.10"], ["ns.svc.cluster.local"], ["ndots:5"]) == (
        "search ns.svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
    )
    files = write_etc_files(tmp_path, "u1", {"/etc/hosts": hosts, "/etc/hostname": "web-0\n"})
    assert Path(files["/etc/hosts"]).read_text() == hosts
    assert Path(files["/etc/hostname"]).parent == tmp_path / "u1"
    own = [Mount(container_path="/etc/hosts/", host_path="/x")]
    mounts = with_etc_mounts(own, files)
    assert [m.container_path for m in mounts] == ["/etc/hosts/", "/etc/hostname"]  # the pod's own wins


async def test_empty_dir_is_world_writable_and_set_up_once(tmp_path: Path, mem_dir: Path) -> None:
    vols = [{"name": "d", "emptyDir": {}}, {"name": "m", "emptyDir": {"medium": "Memory"}}]
    pod = {**POD, "spec": {**POD["spec"], "volumes": vols}}
    paths = await prepare_volumes(pod, tmp_path, Fake(), "", "", ALLOC, memory_dir=mem_dir)
    assert os.stat(paths["d"]).st_mode & 0o7777 == 0o777  # kubelet's emptyDir mode, umask or not
    assert os.stat(paths["m"]).st_mode & 0o7777 == 0o1777  # a kubelet tmpfs root: sticky too
    os.chmod(paths["d"], 0o700)  # the container's own chmod survives a later container start
    await prepare_volumes(pod, tmp_path, Fake(), "", "", ALLOC, memory_dir=mem_dir)
    assert os.stat(paths["d"]).st_mode & 0o7777 == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another group needs root")
async def test_fs_group_owns_every_volume(tmp_path: Path, mem_dir: Path) -> None:
    vols = [
        {"name": "d", "emptyDir": {}},
        {"name": "cfg", "configMap": {"name": "cfg", "defaultMode": 0o400}},
        {"name": "sec", "secret": {"secretName": "sec", "defaultMode": 0o440}},
    ]
    spec = {**POD["spec"], "volumes": vols, "securityContext": {"fsGroup": 1234}}
    paths = await prepare_volumes({**POD, "spec": spec}, tmp_path, Fake(), "", "", ALLOC, memory_dir=mem_dir)
    d = os.stat(paths["d"])
    assert (d.st_gid, d.st_mode & 0o7777) == (1234, 0o2777)
    a = os.stat(os.path.join(paths["cfg"], "a"))
    assert (a.st_gid, a.st_mode & 0o777) == (1234, 0o440)  # 0400 + group read (read-only volume)
    pw = os.stat(os.path.join(paths["sec"], "pw"))
    assert (pw.st_gid, pw.st_mode & 0o777) == (1234, 0o440)


@pytest.mark.parametrize(
    ("ed", "alloc", "size"),
    [
        ({"medium": "Memory", "sizeLimit": "1Mi"}, {"memory": "64Gi"}, 1 << 20),
        ({"medium": "Memory", "sizeLimit": "128Gi"}, {"memory": "1Gi"}, 1 << 30),  # capped
        ({"medium": "Memory", "sizeLimit": "1Mi"}, {}, 1 << 20),
        ({"medium": "Memory"}, {"memory": "1Gi"}, None),  # the shared memory root
        ({"sizeLimit": "1Mi"}, {"memory": "1Gi"}, None),  # disk: no tmpfs
        ({"medium": "Memory", "sizeLimit": "0"}, {"memory": "1Gi"}, None),
    ],
)
def test_memory_size_limit(ed: dict[str, Any], alloc: dict[str, str], size: int | None) -> None:
    assert memory_size_limit({"name": "v", "emptyDir": ed}, alloc) == size


async def test_sized_memory_empty_dir_gets_its_own_tmpfs(tmp_path: Path, mem_dir: Path) -> None:
    vols = [{"name": "m", "emptyDir": {"medium": "Memory", "sizeLimit": "2Mi"}}]
    pod = {**POD, "spec": {**POD["spec"], "volumes": vols}}
    try:
        paths = await prepare_volumes(pod, tmp_path, Fake(), "", "", ALLOC, memory_dir=mem_dir)
    except MountError as e:
        pytest.skip(f"no CAP_SYS_ADMIN here: {e}")
    try:
        st = os.statvfs(paths["m"])
        assert st.f_blocks * st.f_frsize == 2 << 20
        assert os.stat(paths["m"]).st_mode & 0o7777 == 0o1777
    finally:
        remove_pod_dir(tmp_path, "uid1", mem_dir)  # unmounts it
    assert not (mem_dir / "uid1").exists()


async def test_prefetch_asks_for_every_volume_source_and_swallows_errors() -> None:
    """What the resolution will read is asked for ahead (the worker runs this while the sandbox
    is acquired); a failing source is left for the resolution to report."""
    from provider.resolve_volumes import prefetch_volume_sources

    class Recording(Fake):
        def __init__(self) -> None:
            super().__init__()
            self.reads: list[tuple[str, str]] = []

        async def configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
            self.reads.append(("cm", name))
            return await super().configmap(namespace, name)

        async def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
            self.reads.append(("secret", name))
            raise RuntimeError("API down")

    pod = copy.deepcopy(POD)
    pod["spec"]["volumes"] = [
        {"name": "c", "configMap": {"name": "cfg"}},
        {"name": "s", "secret": {"secretName": "sec"}},
        {"name": "e", "emptyDir": {}},
        {
            "name": "kube-api-access",
            "projected": {
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt"}},
                    {"secret": {"name": "other"}},
                    {"downwardAPI": {"items": []}},
                ]
            },
        },
    ]
    fake = Recording()
    await prefetch_volume_sources(pod, fake)
    assert sorted(fake.reads) == [
        ("cm", "cfg"),
        ("cm", "kube-root-ca.crt"),
        ("secret", "other"),
        ("secret", "sec"),
    ]
    assert fake.token_calls == [("ns", "sa", (), 3607, "uid1")]
