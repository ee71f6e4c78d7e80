"""The rooms' import graph, read statically (ast of every module, lazy imports included).

- product code (``common/``, ``provider/``, ``sandbox/``) never imports ``bench/`` or ``testbed/``;
- ``common/`` imports neither room; ``sandbox/`` never imports ``provider/``;
- ``provider/`` reaches ``sandbox/`` only through the seam ``sandbox.backend``, bar the lazy imports
  of the concrete backends in ``provider/app.py``'s ``build_backend`` (allow-listed below);
- no import cycle among provider, sandbox, common, bench and testbed modules;
- and at run time ``python -X importtime -m provider.cli version`` loads nothing from bench or
  testbed (``warmlet bench`` / ``warmlet demo`` are registered lazily).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "provider", "sandbox", "bench", "testbed")
PRODUCT = ("common", "provider", "sandbox")
SEAM = "sandbox.backend"

# (importing module, enclosing function, imported module or package): the one sanctioned way past
# the seam, build_backend choosing the concrete backend from the config ("sandbox.cri": any module
# of the CRI backend's package).
SANCTIONED = {
    ("provider.app", "build_backend", "sandbox.simulated"),
    ("provider.app", "build_backend", "sandbox.cri"),
}


@dataclass(frozen=True)
class Edge:
    src: str  # importing module
    func: str  # innermost enclosing function ("" at module level)
    dst: str  # imported module (a module of PACKAGES, or a package's __init__)
    line: int

    def __str__(self) -> str:
        where = f" in {self.func}()" if self.func else ""
        return f"{self.src}:{self.line}{where} imports {self.dst}"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of PACKAGES (generated protobuf code excluded)."""
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            out[module_name(path, root)] = path
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies in (``a.b.attr`` -> ``a.b``)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in known:
            return cand
    return None


def _imported(node: ast.Import | ast.ImportFrom, src: str, is_pkg: bool) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (a.name for a in node.names)
        return
    base = node.module or ""
    if node.level:  # relative: resolve against the importing module's package
        pkg = src.split(".") if is_pkg else src.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join([*pkg, base] if base else pkg)
    for a in node.names:
        yield f"{base}.{a.name}"  # a submodule, or a name in ``base`` (resolved to ``base``)


def edges(known: dict[str, Path]) -> list[Edge]:
    """Every import between modules of PACKAGES, wherever it is written (module level or lazy)."""
    out: list[Edge] = []
    for src, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"

        def visit(node: ast.AST, func: str, src: str = src, is_pkg: bool = is_pkg) -> None:
            for child in ast.iter_child_nodes(node):
                inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else func
                if isinstance(child, ast.Import | ast.ImportFrom):
                    for name in _imported(child, src, is_pkg):
                        dst = _resolve(name, known)
                        if dst is not None and dst != src:
                            out.append(Edge(src, func, dst, child.lineno))
                visit(child, inner)

        visit(tree, "")
    return out


def room(module: str) -> str:
    return module.split(".", 1)[0]


def sanctioned(e: Edge) -> bool:
    return any(
        (e.src, e.func) == (src, func) and (e.dst == dst or e.dst.startswith(f"{dst}."))
        for src, func, dst in SANCTIONED
    )


def violations(all_edges: list[Edge]) -> list[str]:
    """Edges breaking the room rules (pure: the rules applied to a list of edges)."""
    bad = []
    for e in all_edges:
        s, d = room(e.src), room(e.dst)
        if s in PRODUCT and d in ("bench", "testbed"):
            bad.append(f"{e}: product code must not import {d}/")
        elif s == "common" and d in ("provider", "sandbox"):
            bad.append(f"{e}: common/ imports neither room")
        elif s == "sandbox" and d == "provider":
            bad.append(f"{e}: sandbox/ must not import provider/")
        elif (
            s == "provider"
            and d == "sandbox"
            and e.dst not in (SEAM, "sandbox")
            and not sanctioned(e)
        ):
            bad.append(f"{e}: provider/ reaches sandbox/ only through {SEAM}")
    return bad


def cycles(all_edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in all_edges:
        graph.setdefault(e.src, set()).add(e.dst)
        graph.setdefault(e.dst, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                strong(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found)


# ---------------------------------------------------------------------------- the rules, checked


@pytest.fixture(scope="module")
def graph() -> list[Edge]:
    return edges(modules())


def test_the_walker_sees_the_tree(graph: list[Edge]) -> None:
    known = modules()
    assert {"provider.cli", "provider.app", "sandbox.backend", "common.clock", "bench.cli"} <= set(known)
    # lazy imports count: build_backend's are inside a function
    assert any(e.src == "provider.app" and e.func == "build_backend" for e in graph)
    assert any(e.src == "provider.cli" and e.dst == "provider.config" for e in graph)


def test_rooms_keep_to_their_imports(graph: list[Edge]) -> None:
    assert violations(graph) == []


def test_no_import_cycles(graph: list[Edge]) -> None:
    assert cycles(graph) == []


def test_rules_catch_what_they_forbid() -> None:
    def e(src: str, dst: str, func: str = "") -> Edge:
        return Edge(src, func, dst, 1)

    assert violations(
        [
            e("provider.cli", "bench.cli", "main"),  # lazy still counts
            e("provider.demo", "testbed.util"),
            e("sandbox.pool", "provider.config"),
            e("common.clock", "sandbox.backend"),
            e("provider.pods.worker", "sandbox.simulated"),
            e("provider.app", "sandbox.pool", "build_backend"),  # not a sanctioned backend
            e("provider.app", "sandbox.cri_client", "build_backend"),  # not under sandbox.cri
            e("provider.app", "sandbox.simulated", "run_forever"),  # sanctioned only in build_backend
        ]
    ) == [
        "provider.cli:1 in main() imports bench.cli: product code must not import bench/",
        "provider.demo:1 imports testbed.util: product code must not import testbed/",
        "sandbox.pool:1 imports provider.config: sandbox/ must not import provider/",
        "common.clock:1 imports sandbox.backend: common/ imports neither room",
        "provider.pods.worker:1 imports sandbox.simulated: provider/ reaches sandbox/ only through "
        "sandbox.backend",
        "provider.app:1 in build_backend() imports sandbox.pool: provider/ reaches sandbox/ only "
        "through sandbox.backend",
        "provider.app:1 in build_backend() imports sandbox.cri_client: provider/ reaches sandbox/ only "
        "through sandbox.backend",
        "provider.app:1 in run_forever() imports sandbox.simulated: provider/ reaches sandbox/ only "
        "through sandbox.backend",
    ]
    allowed = [
        e("provider.app", "sandbox.simulated", "build_backend"),
        e("provider.app", "sandbox.cri.backend", "build_backend"),
        e("provider.sync", "sandbox.backend"),
        e("bench.harness", "testbed.util"),
        e("bench.harness", "provider.kubeclient"),
    ]
    assert violations(allowed) == []
    assert cycles([e("bench.cli", "bench.report"), e("bench.report", "bench.cli", "module_rows")]) == [
        ["bench.cli", "bench.report"]
    ]
    assert cycles([e("a.x", "a.y"), e("a.y", "a.z"), e("a.z", "a.x"), e("a.z", "b.q")]) == [
        ["a.x", "a.y", "a.z"]
    ]
    assert cycles([e("a.x", "a.y"), e("a.x", "a.z"), e("a.y", "a.z")]) == []


def test_the_walker_resolves_from_imports(tmp_path: Path) -> None:
    files = ("provider/__init__.py", "provider/cli.py", "provider/x.py", "bench/__init__.py", "bench/cli.py")
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("")
    (tmp_path / "provider" / "cli.py").write_text(
        "from provider import x, __version__\n"
        "from . import x as y\n"
        "def main():\n"
        "    from bench.cli import add\n"
        "    import json\n"
    )
    known = {module_name(p, tmp_path): p for p in tmp_path.rglob("*.py")}
    got = {(e.src, e.func, e.dst) for e in edges(known)}
    assert got == {
        ("provider.cli", "", "provider.x"),
        ("provider.cli", "", "provider"),
        ("provider.cli", "main", "bench.cli"),
    }


def test_warmlet_version_loads_no_bench_or_testbed_module() -> None:
    """``python -X importtime -m provider.cli version``: every module it loaded, none of bench/testbed."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "provider.cli", "version"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("warmlet ")
    trace = [line for line in r.stderr.splitlines() if line.startswith("import time:")]
    loaded = [line.rsplit("|", 1)[-1].strip() for line in trace]
    assert "provider" in loaded and "provider.config" in loaded  # the trace is really read
    leaked = [m for m in loaded if room(m) in ("bench", "testbed")]
    assert leaked == []
