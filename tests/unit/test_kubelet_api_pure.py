"""Pure logic of the kubelet API: query parsing, instance selection, rendering, metrics, summary, authz attrs."""  # noqa: E501

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from common.crilog import encode_line, parse_bytes
from provider.kubelet_api.auth import UserInfo, forbidden_message, request_attributes, user_from_peercert
from provider.kubelet_api.container_logs import LogNotAvailable, LogRenderer, select_instance
from provider.kubelet_api.log_options import LogOptions, LogParamError, parse_log_options
from provider.kubelet_api.resource_metrics import go_float, render_resource_metrics
from provider.kubelet_api.server import path_bucket
from provider.kubelet_api.summary import build_summary
from sandbox.backend import ContainerRuntimeState, ContainerState, ContainerUsage, NodeUsage, PodUsage

pytestmark = pytest.mark.unit

NOW = 1_700_000_000 * 10**9


def q(**kw: str) -> dict[str, list[str]]:
    return {k: [v] for k, v in kw.items()}


# -- query parameters ----------------------------------------------------------------------


def test_defaults() -> None:
    assert parse_log_options({}) == LogOptions()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (q(follow="true"), {"follow": True}),
        (q(follow="1"), {"follow": True}),
        (q(follow=""), {"follow": True}),  # apimachinery: present and not 0/false is true
        (q(tailLines=""), {}),
        (q(follow="yes"), {"follow": True}),  # apimachinery: anything but 0/false is true
        (q(follow="FALSE"), {"follow": False}),
        (q(follow="0"), {"follow": False}),
        (q(previous="true", timestamps="true"), {"previous": True, "timestamps": True}),
        (q(tailLines="0"), {"tail_lines": 0}),
        (q(tailLines="+5"), {"tail_lines": 5}),
        (q(tail="7"), {"tail_lines": 7}),
        (q(tail="all", tailLines="3"), {}),
        (q(limitBytes="10"), {"limit_bytes": 10}),
        (q(stream="Stdout"), {"stream": "stdout"}),
        (q(stream="Stderr"), {"stream": "stderr"}),
        (q(stream="All", tailLines="2"), {"stream": None, "tail_lines": 2}),
        (q(sinceSeconds="10"), {"since_ns": NOW - 10 * 10**9}),
        (q(sinceTime="2023-11-14T22:13:10Z"), {"since_ns": NOW - 10 * 10**9}),
        (q(sinceTime="2023-11-14T22:13:10.5+00:00"), {"since_ns": NOW - 9_500_000_000}),
        (q(sinceTime=""), {}),
        (q(sinceSeconds=str(2**62)), {"since_ns": 0}),
    ],
)
def test_valid_queries(query: dict[str, list[str]], expected: dict[str, object]) -> None:
    assert parse_log_options(query, now_ns=NOW) == LogOptions(**expected)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("query", "status"),
    [
        (q(tailLines="x"), 400),
        (q(tailLines="1.5"), 400),
        (q(tailLines=" 1"), 400),
        (q(tailLines=str(2**63)), 400),
        (q(limitBytes="1e3"), 400),
        (q(sinceSeconds="soon"), 400),
        (q(sinceTime="yesterday"), 400),
        (q(sinceTime="2023-11-14 22:13:10"), 400),
        (q(tailLines="-1"), 422),
        (q(limitBytes="0"), 422),
        (q(limitBytes="-5"), 422),
        (q(sinceSeconds="0"), 422),
        (q(sinceSeconds="-3"), 422),
        (q(sinceSeconds="5", sinceTime="2023-11-14T22:13:10Z"), 422),
        (q(stream="stdout"), 422),
        (q(stream="Both"), 422),
        (q(stream="Stdout", tailLines="3"), 422),
    ],
)
def test_invalid_queries(query: dict[str, list[str]], status: int) -> None:
    with pytest.raises(LogParamError) as e:
        parse_log_options(query, now_ns=NOW)
    assert e.value.status == status
    expected = (
        '{"message": "Unable to decode query."}' if status == 400 else '{"message": "Invalid request."}'
    )
    assert e.value.body == expected


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "follow",
                "previous",
                "timestamps",
                "tailLines",
                "tail",
                "limitBytes",
                "sinceSeconds",
                "sinceTime",
                "stream",
                "x",
            ]
        ),
        st.lists(st.text(max_size=30), max_size=3),
    )
)
def test_fuzz_query_never_crashes(query: dict[str, list[str]]) -> None:
    try:
        opts = parse_log_options(query, now_ns=NOW)
    except LogParamError as e:
        assert e.status in (400, 422)
    else:
        assert opts.tail_lines is None or opts.tail_lines >= 0
        assert opts.limit_bytes is None or opts.limit_bytes >= 1


# -- instance selection --------------------------------------------------------------------


def inst(attempt: int, state: ContainerState, name: str = "c") -> ContainerRuntimeState:
    return ContainerRuntimeState(
        container_id=f"id{attempt}",
        pod_uid="u",
        name=name,
        attempt=attempt,
        state=state,
        created_at=float(attempt),
    )


R, X, C = ContainerState.RUNNING, ContainerState.EXITED, ContainerState.CREATED


@pytest.mark.parametrize(
    ("states", "previous", "expected"),
    [
        ([inst(0, R)], False, "id0"),
        ([inst(0, X)], False, "id0"),
        ([inst(0, X), inst(1, R)], False, "id1"),
        ([inst(0, X), inst(1, R)], True, "id0"),
        ([inst(0, X), inst(1, X)], True, "id0"),
        ([inst(0, X), inst(1, X), inst(2, C)], False, "id1"),
        ([inst(0, X), inst(1, X), inst(2, C)], True, "id1"),
        ([inst(1, R), inst(0, X), inst(0, R, name="other")], True, "id0"),
    ],
)
def test_select_instance(states: list[ContainerRuntimeState], previous: bool, expected: str) -> None:
    assert select_instance(states, None, "p", "c", previous).container_id == expected


def test_select_instance_errors() -> None:
    with pytest.raises(LogNotAvailable, match='previous terminated container "c" in pod "p" not found'):
        select_instance([inst(0, R)], None, "p", "c", True)
    with pytest.raises(LogNotAvailable, match="waiting to start - no logs yet"):
        select_instance([], None, "p", "c", False)
    with pytest.raises(LogNotAvailable, match="waiting to start: ContainerCreating"):
        pod = {
            "status": {
                "containerStatuses": [{"name": "c", "state": {"waiting": {"reason": "ContainerCreating"}}}]
            }
        }
        select_instance([inst(0, C)], pod, "p", "c", False)
    with pytest.raises(LogNotAvailable, match="image can't be pulled"):
        pod = {
            "status": {"containerStatuses": [{"name": "c", "state": {"waiting": {"reason": "ErrImagePull"}}}]}
        }
        select_instance([], pod, "p", "c", False)
    with pytest.raises(LogNotAvailable, match="trying and failing to pull image"):
        pod = {
            "status": {
                "initContainerStatuses": [{"name": "c", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]
            }
        }
        select_instance([], pod, "p", "c", False)


# -- rendering -----------------------------------------------------------------------------


def _data() -> bytes:
    return (
        encode_line(1 * 10**9, "stdout", b"one")
        + encode_line(2 * 10**9, "stderr", b"two")
        + encode_line(3 * 10**9, "stdout", b"thr", partial=True)
        + encode_line(3 * 10**9 + 1, "stdout", b"ee")
    )


def render(opts: LogOptions, max_bytes: int = 10**9) -> bytes:
    r = LogRenderer(opts, max_bytes)
    return r.feed(_data()) + r.finish()


def test_render_options() -> None:
    assert render(LogOptions()) == b"one\ntwo\nthree\n"
    assert render(LogOptions(stream="stdout")) == b"one\nthree\n"
    assert render(LogOptions(stream="stderr")) == b"two\n"
    assert render(LogOptions(since_ns=2 * 10**9)) == b"two\nthree\n"
    assert render(LogOptions(timestamps=True)) == (
        b"1970-01-01T00:00:01Z one\n1970-01-01T00:00:02Z two\n1970-01-01T00:00:03Z three\n"
    )
    assert render(LogOptions(limit_bytes=6)) == b"one\ntw"
    assert render(LogOptions(), max_bytes=5) == b"one\nt"


# -- resource metrics ----------------------------------------------------------------------


def usage() -> NodeUsage:
    t = 1_700_000_000.5
    c = ContainerUsage(
        name="main",
        start_time=1_699_999_000.0,
        timestamp=t,
        cpu_usage_core_nanoseconds=7_164_462_000,
        cpu_usage_nano_cores=1000,
        memory_working_set_bytes=16_953_344,
    )
    pods = [
        PodUsage(uid="u2", namespace="zz", name='we"ird', timestamp=t, start_time=t, containers=[c]),
        PodUsage(
            uid="u1",
            namespace="default",
            name="p1",
            timestamp=t,
            start_time=t,
            containers=[c, c.model_copy(update={"name": "a"})],
        ),
    ]
    return NodeUsage(
        timestamp=t,
        start_time=1_600_000_000.0,
        cpu_usage_core_nanoseconds=357_354_910_000,
        memory_working_set_bytes=1_616_273_408,
        pods=pods,
    )


def test_go_float() -> None:
    cases = {
        1.0: "1",
        0.0: "0",
        1616273408.0: "1.616273408e+09",
        357.35491: "357.35491",
        1e6: "1e+06",
        123456.0: "123456",
        1e-5: "1e-05",
        0.0001: "0.0001",
        7.164462: "7.164462",
        -2.5: "-2.5",
        float("inf"): "+Inf",
        float("nan"): "NaN",
    }
    for v, s in cases.items():
        assert go_float(v) == s


def test_resource_metrics_exact_text() -> None:
    text = render_resource_metrics(usage())
    lines = text.splitlines()
    assert lines[:2] == [
        "# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds",  # noqa: E501
        "# TYPE container_cpu_usage_seconds_total counter",
    ]
    assert (
        'container_cpu_usage_seconds_total{container="a",namespace="default",pod="p1"} 7.164462 1700000000500'
        in lines
    )
    assert (
        'container_memory_working_set_bytes{container="main",namespace="zz",pod="we\\"ird"} 1.6953344e+07 1700000000500'  # noqa: E501
        in lines
    )
    assert 'container_start_time_seconds{container="main",namespace="default",pod="p1"} 1.699999e+09' in lines
    assert "node_cpu_usage_seconds_total 357.35491 1700000000500" in lines
    assert "node_memory_working_set_bytes 1.616273408e+09 1700000000500" in lines
    assert 'pod_cpu_usage_seconds_total{namespace="default",pod="p1"} 14.328924 1700000000500' in lines
    assert lines[-3:] == [
        "# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise",  # noqa: E501
        "# TYPE resource_scrape_error gauge",
        "resource_scrape_error 0",
    ]
    names = [ln.split()[2] for ln in lines if ln.startswith("# TYPE")]
    assert names == sorted(names)
    # Samples of a family are sorted by label values (container, namespace, pod).
    cpu = [ln for ln in lines if ln.startswith("container_cpu_usage_seconds_total{")]
    assert cpu == sorted(cpu)


def test_resource_metrics_parse_with_prometheus_client() -> None:
    fams = {f.name: f for f in text_string_to_metric_families(render_resource_metrics(usage()))}
    assert fams["container_cpu_usage_seconds"].type == "counter"
    s = fams["container_cpu_usage_seconds"].samples[0]
    assert s.labels == {"container": "a", "namespace": "default", "pod": "p1"}
    assert s.timestamp is not None and float(s.timestamp) == pytest.approx(1_700_000_000.5)
    assert fams["node_memory_working_set_bytes"].samples[0].value == 1_616_273_408
    assert fams["resource_scrape_error"].samples[0].value == 0


def test_resource_metrics_on_error() -> None:
    text = render_resource_metrics(None)
    assert text.endswith("resource_scrape_error 1\n") and "node_cpu" not in text


# -- summary -------------------------------------------------------------------------------


def test_summary_schema() -> None:
    s = build_summary("vnode", usage())
    node = s["node"]
    assert node["nodeName"] == "vnode" and node["startTime"] == "2020-09-13T12:26:40Z"
    assert set(node["cpu"]) == {"time", "usageNanoCores", "usageCoreNanoSeconds"}
    assert {"time", "availableBytes", "usageBytes", "workingSetBytes", "rssBytes"} <= set(node["memory"])
    assert {"fs", "runtime", "rlimit", "network"} <= set(node)
    assert {"imageFs", "containerFs"} == set(node["runtime"])
    pod = s["pods"][1]
    assert pod["podRef"] == {"name": "p1", "namespace": "default", "uid": "u1"}
    assert {
        "podRef",
        "startTime",
        "containers",
        "cpu",
        "memory",
        "network",
        "volume",
        "ephemeral-storage",
    } <= set(pod)
    c = pod["containers"][0]
    assert {"name", "startTime", "cpu", "memory", "rootfs", "logs"} <= set(c)
    assert pod["cpu"]["usageCoreNanoSeconds"] == 2 * 7_164_462_000
    assert pod["memory"]["workingSetBytes"] == 2 * 16_953_344
    small = build_summary("vnode", usage(), only_cpu_and_memory=True)
    assert "fs" not in small["node"] and set(small["pods"][0]) == {
        "podRef",
        "startTime",
        "containers",
        "cpu",
        "memory",
    }


# -- authorization attributes --------------------------------------------------------------


U = UserInfo("alice", groups=("g",))


@pytest.mark.parametrize(
    ("method", "path", "verb", "subresources"),
    [
        ("GET", "/stats/summary", "get", ["stats"]),
        ("GET", "/stats", "get", ["stats"]),
        ("GET", "/statsx", "get", ["proxy"]),
        ("GET", "/metrics", "get", ["metrics"]),
        ("GET", "/metrics/resource", "get", ["metrics"]),
        ("GET", "/metricsfoo", "get", ["proxy"]),
        ("GET", "/logs/", "get", ["log"]),
        ("GET", "/logs/messages", "get", ["log"]),
        ("GET", "/containerLogs/ns/p/c", "get", ["proxy"]),
        ("GET", "/pods", "get", ["pods", "proxy"]),
        ("GET", "/runningpods/", "get", ["pods", "proxy"]),
        ("GET", "/healthz", "get", ["healthz", "proxy"]),
        ("GET", "/healthz/ping", "get", ["healthz", "proxy"]),
        ("GET", "/configz", "get", ["configz", "proxy"]),
        ("POST", "/exec/ns/p/c", "create", ["proxy"]),
        ("PUT", "/x", "update", ["proxy"]),
        ("PATCH", "/x", "patch", ["proxy"]),
        ("DELETE", "/x", "delete", ["proxy"]),
        ("POST", "/checkpoint/ns/p/c", "create", ["checkpoint"]),
    ],
)
def test_request_attributes(method: str, path: str, verb: str, subresources: list[str]) -> None:
    attrs = request_attributes(U, method, path, "vnode")
    assert [a.subresource for a in attrs] == subresources
    assert all(a.verb == verb and a.resource == "nodes" and a.name == "vnode" and a.user == U for a in attrs)


def test_forbidden_message() -> None:
    attrs = request_attributes(U, "GET", "/pods", "vnode")
    assert (
        forbidden_message(attrs)
        == "Forbidden (user=alice, verb=get, resource=nodes, subresource(s)=[pods proxy])\n"
    )


def test_user_from_peercert() -> None:
    cert = {"subject": ((("organizationName", "system:masters"),), (("commonName", "kube-apiserver"),))}
    user = user_from_peercert(cert)
    assert user is not None and user.name == "kube-apiserver"
    assert user.groups == ("system:masters", "system:authenticated")
    assert user_from_peercert({}) is None
    assert user_from_peercert({"subject": ((("organizationName", "x"),),)}) is None


@pytest.mark.parametrize(
    ("path", "bucket"),
    [
        ("/containerLogs/a/b/c", "containerLogs"),
        ("/metrics/resource", "metrics/resource"),
        ("/metrics", "metrics"),
        ("/metrics/zzz", "metrics"),
        ("/weird/path", "other"),
        ("/", "other"),
    ],
)
def test_path_bucket(path: str, bucket: str) -> None:
    assert path_bucket(path) == bucket


def test_time_is_monotonic_enough() -> None:
    assert time.time() > 1_600_000_000


line_st = st.one_of(
    st.tuples(
        st.binary(max_size=20).filter(lambda b: b"\n" not in b),
        st.booleans(),
        st.sampled_from(["stdout", "stderr"]),
    ),
    st.binary(max_size=20).filter(lambda b: b"\n" not in b),
)


@settings(max_examples=300)
@given(
    lines=st.lists(line_st, max_size=30),
    cut=st.integers(min_value=1, max_value=200),
    timestamps=st.booleans(),
    stream=st.sampled_from([None, "stdout", "stderr"]),
)
def test_fast_path_renders_like_the_parser(
    lines: list[Any], cut: int, timestamps: bool, stream: str | None
) -> None:
    data = b"".join(
        encode_line(10**9 + i, ln[2], ln[0], ln[1]) if isinstance(ln, tuple) else ln + b"\n"
        for i, ln in enumerate(lines)
    )
    expected = b"".join(
        r.render(timestamps) for r in parse_bytes(data) if stream is None or r.stream == stream
    )
    r = LogRenderer(LogOptions(timestamps=timestamps, stream=stream), 10**9)
    got = b"".join(r.feed(data[i : i + cut]) for i in range(0, len(data), cut)) + r.finish()
    assert got == expected
