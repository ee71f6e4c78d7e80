"""provider/kubeconfig.py: the kubeconfig loaders come without kubernetes_asyncio's API and model
modules, load the same configuration as the whole library does, leave the library untouched for
a later ordinary import, and fall back to that import when the lean one cannot work."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from provider import kubeconfig

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _kubeconfig(tmp_path: Path) -> Path:
    """Two contexts: client certificates (embedded data) and an exec plugin's token."""
    exec_cred = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": "from-the-plugin"},
    }
    plugin = tmp_path / "plugin.py"
    plugin.write_text(f"print({json.dumps(json.dumps(exec_cred))})\n")
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "certs",
        "clusters": [
            {
                "name": "c",
                "cluster": {
                    "server": "https://127.0.0.1:6443",
                    "certificate-authority-data": _b64("CA PEM\n"),
                },
            },
            {"name": "plain", "cluster": {"server": "http://127.0.0.1:8080"}},
        ],
        "users": [
            {
                "name": "certs",
                "user": {
                    "client-certificate-data": _b64("CERT PEM\n"),
                    "client-key-data": _b64("KEY PEM\n"),
                },
            },
            {
                "name": "exec",
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": sys.executable,
                        "args": [str(plugin)],
                        "interactiveMode": "Never",
                    }
                },
            },
        ],
        "contexts": [
            {"name": "certs", "context": {"cluster": "c", "user": "certs"}},
            {"name": "exec", "context": {"cluster": "plain", "user": "exec"}},
        ],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


# Runs in a fresh interpreter: loads both contexts the lean way (recording every module imported),
# then imports the whole library and loads them again the ordinary way.
SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys

    imported = []

    class Spy:
        def find_spec(self, name, path=None, target=None):
            imported.append(name)
            return None

    sys.meta_path.insert(0, Spy())

    from provider.kubeclient import KubeClient
    from provider.kubeconfig import _ordinary, loaders

    def read(path):
        return open(path).read() if path else None

    async def describe(k8s, path, context):
        cfg = k8s.configuration()
        await k8s.load_kube_config(config_file=path, context=context, client_configuration=cfg)
        return {
            "host": cfg.host,
            "ca": read(cfg.ssl_ca_cert),
            "cert": read(cfg.cert_file),
            "key": read(cfg.key_file),
            "api_key": cfg.api_key,
        }

    async def main(path):
        lean = loaders()
        out = {"lean": lean.lean}
        out["lean_certs"] = await describe(lean, path, "certs")
        out["lean_exec"] = await describe(lean, path, "exec")
        client = await KubeClient.from_kubeconfig(path, context="exec")
        out["client"] = [client.server, client._token]
        out["left"] = sorted(n for n in sys.modules if n.startswith("kubernetes_asyncio"))
        out["imported"] = [n for n in imported if n.startswith("kubernetes_asyncio")]
        import kubernetes_asyncio
        from kubernetes_asyncio.client import ApiClient

        out["whole_api_client"] = ApiClient.__module__
        whole = _ordinary()
        out["whole_certs"] = await describe(whole, path, "certs")
        out["whole_exec"] = await describe(whole, path, "exec")
        print(json.dumps(out))

    asyncio.run(main(sys.argv[1]))
    """
)


def test_lean_loaders_load_what_the_whole_library_loads(tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["lean"] is True
    # none of the generated API or model modules, not even the ApiClient's module
    assert out["imported"], "the spy saw the lean import"
    heavy = [n for n in out["imported"] if ".models" in n or ".api." in n or n.endswith(".api_client")]
    assert heavy == []
    assert len(out["imported"]) < 30
    assert out["left"] == []  # nothing of the lean import stays in sys.modules
    assert out["whole_api_client"] == "kubernetes_asyncio.client.api_client"  # the real one
    assert out["lean_certs"] == out["whole_certs"]
    assert out["lean_certs"]["host"] == "https://127.0.0.1:6443"
    assert out["lean_certs"]["ca"] == "CA PEM\n"
    assert out["lean_certs"]["cert"] == "CERT PEM\n"
    assert out["lean_certs"]["key"] == "KEY PEM\n"
    assert out["lean_exec"] == out["whole_exec"]
    assert out["lean_exec"]["api_key"] == {"BearerToken": "Bearer from-the-plugin"}
    assert out["client"] == ["http://127.0.0.1:8080", "from-the-plugin"]


def uncached_loaders() -> kubeconfig.Loaders:
    """``loaders()`` decided afresh, leaving no cached answer to the other tests."""
    kubeconfig.loaders.cache_clear()
    try:
        return kubeconfig.loaders()
    finally:
        kubeconfig.loaders.cache_clear()


def test_a_failing_lean_import_falls_back_to_the_whole_library(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> kubeconfig.Loaders:
        raise ImportError("layout changed")

    monkeypatch.delitem(sys.modules, kubeconfig.PACKAGE, raising=False)
    monkeypatch.setattr(kubeconfig, "_lean", broken)
    got = uncached_loaders()
    assert got.lean is False
    assert got.service_token_filename.endswith("/token")
    assert "lean import failed" in caplog.text


def test_an_already_loaded_library_is_used_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    import kubernetes_asyncio  # noqa: F401 - the whole library, as the tests' admin client has it

    got = uncached_loaders()
    assert got.lean is False
    from kubernetes_asyncio.client import Configuration

    assert got.configuration is Configuration


def test_the_stand_in_api_client_says_why_it_cannot_be_used() -> None:
    with pytest.raises(RuntimeError, match="without its ApiClient"):
        kubeconfig._NoApiClient()
