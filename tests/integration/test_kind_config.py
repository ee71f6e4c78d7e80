"""kind-config/: every manifest is accepted by the real apiserver, and the guide's files hold up.

kind and Docker do not run on the test machines, so the cluster config and the Containerfile are
checked statically (fields kind's v1alpha4 Cluster has, files the image copies, the entrypoint);
the Kubernetes manifests go through a server-side apply dry run with strict field validation.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from provider.cli import apply_run_flags, main
from provider.config import WarmletConfig
from testbed.bed import TestBed

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KIND = ROOT / "kind-config"
KIND_CLUSTER = KIND / "kind-cluster.yaml"
# kind's v1alpha4 Cluster (sigs.k8s.io/kind/pkg/apis/config/v1alpha4/types.go)
KIND_CLUSTER_FIELDS = {
    "kind", "apiVersion", "name", "nodes", "networking", "featureGates", "runtimeConfig",
    "kubeadmConfigPatches", "kubeadmConfigPatchesJSON6902", "containerdConfigPatches",
    "containerdConfigPatchesJSON6902",
}  # fmt: skip
KIND_NODE_FIELDS = {
    "role", "image", "labels", "extraMounts", "extraPortMappings", "gpus", "kubeadmConfigPatches",
    "kubeadmConfigPatchesJSON6902",
}  # fmt: skip
KIND_NETWORKING_FIELDS = {
    "ipFamily", "apiServerPort", "apiServerAddress", "podSubnet", "serviceSubnet", "disableDefaultCNI",
    "kubeProxyMode", "dnsSearch",
}  # fmt: skip


def manifests() -> list[Path]:
    """Every Kubernetes manifest of kind-config/ (the kind cluster config is kind's, not the API's)."""
    return sorted(p for p in KIND.glob("*.yaml") if p != KIND_CLUSTER)


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.name)
def test_manifest_accepted_by_server_side_dry_run(testbed: TestBed, path: Path) -> None:
    """Server-side apply, dry run, strict field validation: typos and unknown fields are refused."""
    out = testbed.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=warmlet-kind-config-test",
        "--validate=strict",
        "-f",
        str(path),
        "-o",
        "json",
    )
    result = json.loads(out)
    items = result.get("items", [result])
    assert len(items) == len(docs(path))
    assert all(i.get("metadata", {}).get("name") for i in items)


def test_kind_cluster_config_has_what_the_guide_uses() -> None:
    cfg = yaml.safe_load(KIND_CLUSTER.read_text())
    assert cfg["kind"] == "Cluster" and cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert set(cfg) <= KIND_CLUSTER_FIELDS
    assert set(cfg["networking"]) <= KIND_NETWORKING_FIELDS
    for node in cfg["nodes"]:
        assert set(node) <= KIND_NODE_FIELDS and node["role"] in ("control-plane", "worker")
    assert [n["role"] for n in cfg["nodes"]].count("control-plane") == 1
    # host mode: the apiserver is published on a host address warmlet can use
    ipaddress.ip_address(cfg["networking"]["apiServerAddress"])
    # the operator's guide's kind commands name this cluster (kind load / get kubeconfig / docker exec)
    readme = (ROOT / "docs" / "operating.md").read_text()
    name = cfg["name"]
    assert f"--name {name}" in readme and f"{name}-control-plane" in readme


def _containerfile_instructions() -> list[tuple[str, str]]:
    text = (KIND / "Containerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_containerfile_copies_existing_files_and_runs_warmlet_run() -> None:
    """No Docker here: check the build's inputs and the entrypoint instead of building it."""
    ins = _containerfile_instructions()
    assert [op for op, _ in ins].count("FROM") >= 2, "multi-stage build"
    assert not (KIND / "Dockerfile").exists(), "replaced by the Containerfile"
    for op, rest in ins:
        if op == "COPY" and not rest.startswith("--from"):
            *sources, _dest = shlex.split(rest)
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: no such file in the build context"
    users = [rest for op, rest in ins if op == "USER"]
    assert users and not users[-1].startswith(("0", "root")), "runs as non-root"
    entrypoint = json.loads(next(rest for op, rest in ins if op == "ENTRYPOINT"))
    assert entrypoint == ["warmlet", "run"]
    # the console script warmlet → provider.cli:main, and `warmlet run` parses its flags
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["warmlet"] == "provider.cli:main"
    # every package the distribution installs is copied into the build
    copied = {shlex.split(rest)[0] for op, rest in ins if op == "COPY" and not rest.startswith("--from")}
    for pkg in ("provider", "sandbox", "proto", "bench", "testbed", "pyproject.toml"):
        assert pkg in copied
    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0


def test_in_cluster_deployment_args_and_config_are_valid_for_warmlet_run() -> None:
    """The Deployment's args parse as `warmlet run` flags and its ConfigMap is a valid config."""
    import argparse

    from provider import cli

    objs = docs(KIND / "warmlet-simulated.yaml")
    dep = next(o for o in objs if o["kind"] == "Deployment")
    cm = next(o for o in objs if o["kind"] == "ConfigMap")
    cfg = WarmletConfig.model_validate(yaml.safe_load(cm["data"]["warmlet.yaml"]))
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    parser = argparse.ArgumentParser()
    cli._run_parser(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(["run", *container["args"]])
    cfg = apply_run_flags(cfg, ns)
    assert cfg.backend == "simulated" and cfg.server.address == "0.0.0.0"
    assert pod["serviceAccountName"] == "warmlet"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    # every path warmlet writes is a volume (the root filesystem is read-only)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for path in (cfg.state_dir, cfg.log_dir, cfg.server.cert_dir, cfg.pods.volumes_dir):
        assert any(str(path).startswith(m) for m in mounts), path
    assert str(ns.config).startswith(tuple(mounts))
    # the ServiceAccount the Deployment runs as is the one rbac.yaml binds
    rbac = docs(KIND / "rbac.yaml")
    sa = next(o for o in rbac if o["kind"] == "ServiceAccount")
    assert (sa["metadata"]["namespace"], sa["metadata"]["name"]) == (dep["metadata"]["namespace"], "warmlet")


def test_readme_names_only_files_that_exist() -> None:
    readme = (ROOT / "docs" / "operating.md").read_text()
    named = set(re.findall(r"kind-config/[A-Za-z0-9_.-]+", readme))
    assert "kind-config/Containerfile" in named and "kind-config/rbac.yaml" in named
    for ref in named:
        assert (ROOT / ref).exists(), ref
