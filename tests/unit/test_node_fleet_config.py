"""``nodes:``: several simulated nodes in one process, as the config describes them (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from provider import cli
from provider.app import WarmletNode
from provider.config import NodeConfig, NodesConfig, WarmletConfig, expand_nodes

pytestmark = pytest.mark.unit


def load(text: str) -> WarmletConfig:
    return WarmletConfig.model_validate(yaml.safe_load(text))


def test_without_nodes_the_node_section_is_the_one_node_itself() -> None:
    cfg = WarmletConfig()
    assert not cfg.nodes.enabled
    assert cfg.node_configs()[0] is cfg.node and len(cfg.node_configs()) == 1


def test_a_count_names_nodes_by_the_pattern_each_as_the_node_section_says() -> None:
    cfg = load("node: {name: sim, cpu: '8', labels: {pool: a}}\nnodes: {count: 3}")
    nodes = cfg.node_configs()
    assert [n.name for n in nodes] == ["sim-0", "sim-1", "sim-2"]
    assert all(n.cpu == "8" and n.labels == {"pool": "a"} for n in nodes)
    assert cfg.node.name == "sim"  # the template is not a node itself
    other = load("node: {name: sim}\nnodes: {count: 2, name_pattern: 'kwok-node-{index}', start_index: 5}")
    assert [n.name for n in other.node_configs()] == ["kwok-node-5", "kwok-node-6"]


def test_custom_nodes_change_fields_and_add_labels_and_extended_resources() -> None:
    cfg = load(
        """
node: {name: sim, cpu: "8", labels: {pool: a}, extended_resources: {example.com/fpga: "1"}}
nodes:
  count: 1
  custom:
    - {name: big, cpu: "64", memory: 256Gi, labels: {size: big}, extended_resources: {example.com/gpu: "8"}}
    - {name: tainted, taint_effect: NoExecute, provider: other}
"""
    )
    sim, big, tainted = cfg.node_configs()
    assert sim.name == "sim-0" and sim.cpu == "8"
    assert (big.name, big.cpu, big.memory) == ("big", "64", "256Gi")
    assert big.labels == {"pool": "a", "size": "big"}
    assert big.extended_resources == {"example.com/fpga": "1", "example.com/gpu": "8"}
    assert (tainted.taint_effect, tainted.provider, tainted.cpu) == ("NoExecute", "other", "8")


def test_a_yaml_list_as_nodes_is_the_custom_list() -> None:
    cfg = load("nodes: [{name: a}, {name: b, pods: '5'}]")
    assert [(n.name, n.pods) for n in cfg.node_configs()] == [("a", "10000"), ("b", "5")]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("backend: cri\nnodes: {count: 2}", "needs backend: simulated"),
        ("backend: cri\nnodes: [{name: a}]", "one node per process"),
        ("nodes: {count: 2, name_pattern: fixed}", "needs {index}"),
        ("nodes: [{name: a, internal_ip: 10.0.0.9}]", "internal_ip cannot differ per node"),
        ("nodes: [{name: a, cpus: '4'}]", "not node: fields: cpus"),
        ("nodes: [{name: a, cpu: 4}]", "node 'a'"),
        ("nodes: [{name: a, taint_effect: Sometimes}]", "node 'a'"),
        ("nodes: [{name: Upper}]", "DNS-1123"),
        ("nodes: [{name: a_b}]", "DNS-1123"),
        ("nodes: [{name: a}, {name: a}]", "appears twice"),
        ("node: {name: a}\nnodes: {count: 2, name_pattern: '{name}', custom: []}", "needs {index}"),
        ("node: {name: s}\nnodes: {count: 1, custom: [{name: s-0}]}", "appears twice"),
        ("nodes: [{cpu: '4'}]", "name"),
        ("nodes: {count: -1}", "count"),
    ],
)
def test_invalid_nodes_are_config_errors_with_a_reason(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        load(text)


def test_a_count_of_one_needs_no_index_in_the_pattern() -> None:
    cfg = load("nodes: {count: 1, name_pattern: only}")
    assert [n.name for n in cfg.node_configs()] == ["only"]


@given(
    count=st.integers(0, 40),
    start=st.integers(0, 10_000),
    custom=st.lists(st.sampled_from(["x", "y", "z", "w"]), unique=True, max_size=4),
    prefix=st.sampled_from(["n", "kwok-node", "a.b"]),
)
def test_expanded_nodes_are_the_count_then_the_custom_ones_all_distinct(
    count: int, start: int, custom: list[str], prefix: str
) -> None:
    template = NodeConfig(name=prefix, cpu="3", labels={"k": "v"})
    nodes = NodesConfig(count=count, start_index=start, custom=[{"name": c} for c in custom])  # type: ignore[list-item]
    out = expand_nodes(template, nodes)
    if not nodes.enabled:
        assert out == [template]
        return
    assert [n.name for n in out] == [f"{prefix}-{start + i}" for i in range(count)] + custom
    assert len({n.name for n in out}) == len(out)
    for n in out:  # everything but the name is the template's
        assert n.model_dump(exclude={"name"}) == template.model_dump(exclude={"name"})


def _run_ns(argv: list[str]) -> Any:
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli._run_parser(sub)
    return parser.parse_args(["run", *argv])


def test_the_nodes_flag_sets_the_count() -> None:
    cfg = cli.apply_run_flags(WarmletConfig(node=NodeConfig(name="s")), _run_ns(["--nodes", "4"]))
    assert [n.name for n in cfg.node_configs()] == ["s-0", "s-1", "s-2", "s-3"]


def test_run_refuses_nodes_made_invalid_by_a_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text("nodes: {count: 3}\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--config", str(conf), "--backend", "cri"])
    assert exit_.value.code == 2
    assert "one node per process" in capsys.readouterr().err


def test_a_process_with_nodes_and_the_cri_backend_refuses_before_building_it(tmp_path: Path) -> None:
    cfg = WarmletConfig(state_dir=tmp_path)
    cfg.nodes.count = 2
    cfg.backend = "cri"  # set after validation, as a flag would
    with pytest.raises(ValueError, match="needs backend: simulated"):
        WarmletNode(cfg)
