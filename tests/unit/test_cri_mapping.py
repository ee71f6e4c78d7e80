"""CRI mapping as kubelet does it: configs, labels, log layout, resources, status reasons, /proc parsing."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common import crilog
from proto import cri_pb2 as pb
from sandbox.backend import (
    ContainerSecurity,
    ContainerSpec,
    ContainerState,
    CreateContainerError,
    DNSConfig,
    EnvVar,
    Mount,
    PodSandboxSpec,
    PodSecurity,
    PortMapping,
    Resources,
)
from sandbox.cri import mapping as m
from sandbox.cri import stats_mapping as sm


def pod(**kw: object) -> PodSandboxSpec:
    base: dict[str, object] = dict(
        uid="uid-1",
        namespace="ns",
        name="web-1",
        workload_key="Deployment/ns/web|sa=default",
        hostname="web-1",
    )
    base.update(kw)
    return PodSandboxSpec(**base)  # type: ignore[arg-type]


@given(st.text(min_size=0, max_size=300))
def test_workload_key_label_is_label_safe_and_stable(key: str) -> None:
    v = m.workload_key_label(key)
    assert re.fullmatch(r"[a-f0-9]{32}", v)
    assert v == m.workload_key_label(key)


def test_log_layout() -> None:
    assert crilog.pod_log_dir("/var/log/pods", "ns", "p", "u") == "/var/log/pods/ns_p_u"
    assert crilog.container_log_relpath("app", 3) == "app/3.log"
    assert crilog.container_log_path("/logs", "ns", "p", "u", "app", 0) == "/logs/ns_p_u/app/0.log"


def test_sandbox_config() -> None:
    p = pod(
        labels={"app": "web"},
        annotations={"a": "b"},
        dns=DNSConfig(servers=["10.0.0.10"], searches=["ns.svc.cluster.local"], options=["ndots:5"]),
        ports=[PortMapping(container_port=80, protocol="udp", host_port=8080, host_ip="127.0.0.1")],
        security=PodSecurity(
            run_as_user=1000,
            run_as_group=2000,
            fs_group=3000,
            supplemental_groups=[4000],
            sysctls={"net.ipv4.ip_unprivileged_port_start": "0"},
        ),
    )
    cfg = m.sandbox_config(p, "/logs/ns_web-1_uid-1", cgroup_parent="/warmlet/poduid-1")
    assert not cfg.linux.security_context.privileged
    assert m.sandbox_config(
        pod(security=PodSecurity(privileged=True)), "/l"
    ).linux.security_context.privileged
    assert (cfg.metadata.name, cfg.metadata.namespace, cfg.metadata.uid) == ("web-1", "ns", "uid-1")
    assert cfg.hostname == "web-1" and cfg.log_directory == "/logs/ns_web-1_uid-1"
    assert list(cfg.dns_config.servers) == ["10.0.0.10"] and list(cfg.dns_config.options) == ["ndots:5"]
    pm = cfg.port_mappings[0]
    assert (pm.protocol, pm.container_port, pm.host_port, pm.host_ip) == (pb.UDP, 80, 8080, "127.0.0.1")
    labels = dict(cfg.labels)
    assert labels["app"] == "web"
    assert labels[m.LABEL_MANAGED] == "true" and labels[m.LABEL_POD_UID] == "uid-1"
    assert labels[m.K8S_POD_NAME] == "web-1" and labels[m.K8S_POD_NAMESPACE] == "ns"
    assert labels[m.LABEL_WORKLOAD_KEY] == m.workload_key_label(p.workload_key)
    assert cfg.annotations[m.ANNOTATION_WORKLOAD_KEY] == p.workload_key and cfg.annotations["a"] == "b"
    sc = cfg.linux.security_context
    assert sc.namespace_options.network == pb.POD and sc.namespace_options.pid == pb.CONTAINER
    assert sc.run_as_user.value == 1000 and sc.run_as_group.value == 2000
    assert list(sc.supplemental_groups) == [4000, 3000]
    assert dict(cfg.linux.sysctls) == {"net.ipv4.ip_unprivileged_port_start": "0"}
    assert cfg.linux.cgroup_parent == "/warmlet/poduid-1"
    assert m.LABEL_PREWARMED not in cfg.labels
    assert m.sandbox_config(p, "/x", prewarmed=True).labels[m.LABEL_PREWARMED] == "true"


def test_container_config() -> None:
    p = pod(security=PodSecurity(run_as_user=1000, fs_group=3000))
    c = ContainerSpec(
        name="app",
        image="busybox",
        command=["sh", "-c"],
        args=["echo hi"],
        env=[EnvVar(name="A", value="1")],
        working_dir="/w",
        mounts=[Mount(container_path="/data", host_path="/var/lib/x", read_only=True)],
        resources=Resources(cpu_request_milli=250, cpu_limit_milli=500, memory_limit_bytes=64 << 20),
        security=ContainerSecurity(allow_privilege_escalation=False, capabilities_drop=["ALL"]),
    )
    cfg = m.container_config(p, c, 2, image_ref="sha256:abc", qos="Burstable", node_memory_bytes=8 << 30)
    assert (cfg.metadata.name, cfg.metadata.attempt) == ("app", 2)
    assert cfg.image.image == "sha256:abc" and cfg.image.user_specified_image == "busybox"
    assert list(cfg.command) == ["sh", "-c"] and list(cfg.args) == ["echo hi"]
    assert [(e.key, e.value) for e in cfg.envs] == [("A", "1")]
    assert cfg.working_dir == "/w"
    assert (cfg.mounts[0].container_path, cfg.mounts[0].host_path, cfg.mounts[0].readonly) == (
        "/data",
        "/var/lib/x",
        True,
    )
    assert cfg.log_path == "app/2.log"
    assert cfg.labels[m.K8S_CONTAINER_NAME] == "app" and cfg.labels[m.LABEL_POD_UID] == "uid-1"
    assert cfg.annotations[m.K8S_CONTAINER_RESTART] == "2"
    r = cfg.linux.resources
    assert (r.cpu_shares, r.cpu_period, r.cpu_quota, r.memory_limit_in_bytes) == (
        256,
        100000,
        50000,
        64 << 20,
    )
    sc = cfg.linux.security_context
    assert sc.run_as_user.value == 1000 and list(sc.supplemental_groups) == [3000]
    assert sc.no_new_privs and list(sc.capabilities.drop_capabilities) == ["ALL"]
    assert "/proc/kcore" in sc.masked_paths and "/proc/sys" in sc.readonly_paths


def test_container_config_privileged_and_non_root() -> None:
    p = pod()
    c = ContainerSpec(
        name="x", image="i", security=ContainerSecurity(privileged=True, allow_privilege_escalation=False)
    )
    sc = m.container_config(p, c, 0).linux.security_context
    assert sc.privileged and not sc.no_new_privs and not sc.masked_paths
    assert not sc.HasField("run_as_user")
    bad = ContainerSpec(name="x", image="i", security=ContainerSecurity(run_as_user=0, run_as_non_root=True))
    with pytest.raises(CreateContainerError) as ei:
        m.container_config(p, bad, 0)
    assert ei.value.reason == "CreateContainerConfigError"


@pytest.mark.parametrize(
    ("milli", "shares", "quota"),
    [
        (0, 2, 0),
        (1, 2, 1000),
        (2, 2, 1000),
        (10, 10, 1000),
        (100, 102, 10000),
        (1000, 1024, 100000),
        (1500, 1536, 150000),
        (10**6, 262144, 10**8),
    ],
)
def test_cpu_conversions(milli: int, shares: int, quota: int) -> None:
    assert m.milli_cpu_to_shares(milli) == shares
    assert m.milli_cpu_to_quota(milli) == quota


def test_qos_and_oom_score() -> None:
    be = Resources()
    g = Resources(cpu_request_milli=100, cpu_limit_milli=100, memory_request_bytes=10, memory_limit_bytes=10)
    g_limits_only = Resources(cpu_limit_milli=100, memory_limit_bytes=10)
    b = Resources(cpu_request_milli=100)
    assert m.qos_class([be]) == "BestEffort"
    assert m.qos_class([g]) == "Guaranteed" and m.qos_class([g_limits_only]) == "Guaranteed"
    assert m.qos_class([b]) == "Burstable" and m.qos_class([g, be]) == "Burstable"
    assert m.oom_score_adj(g, "Guaranteed", 1 << 30) == -997
    assert m.oom_score_adj(be, "BestEffort", 1 << 30) == 1000
    assert m.oom_score_adj(Resources(memory_request_bytes=1 << 29), "Burstable", 1 << 30) == 500
    assert m.oom_score_adj(Resources(memory_request_bytes=1 << 30), "Burstable", 1 << 30) == 2
    assert m.oom_score_adj(Resources(), "Burstable", 1 << 30) == 999
    assert m.oom_score_adj(Resources(), "Burstable", 0) == 999


def status(state: int, code: int = 0, reason: str = "", **kw: object) -> pb.ContainerStatus:
    return pb.ContainerStatus(
        id="c1",
        metadata=pb.ContainerMetadata(name="app", attempt=1),
        state=state,  # type: ignore[arg-type]
        exit_code=code,
        reason=reason,
        created_at=1_000_000_000,
        started_at=2_000_000_000,
        finished_at=3_500_000_000,
        image=pb.ImageSpec(image="sha256:x", user_specified_image="busybox"),
        image_ref="busybox@sha256:y",
        labels={m.LABEL_POD_UID: "u-new", m.K8S_POD_UID: "u-old"},
        log_path="/logs/ns_p_u-new/app/1.log",
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("code", "reason", "want"),
    [
        (0, "Completed", "Completed"),
        (0, "", "Completed"),
        (1, "Error", "Error"),
        (137, "OOMKilled", "OOMKilled"),
        (0, "OOMKilled", "OOMKilled"),
        (2, "", "Error"),
        (128, "ContainerCannotRun", "ContainerCannotRun"),
    ],
)
def test_exited_status_mapping(code: int, reason: str, want: str) -> None:
    s = m.container_state_from_status(status(pb.CONTAINER_EXITED, code, reason, message="msg"))
    assert s.state == ContainerState.EXITED and s.exit_code == code and s.reason == want
    assert s.finished_at == 3.5 and s.started_at == 2.0 and s.created_at == 1.0
    assert s.pod_uid == "u-new"  # warmlet's label wins over the sandbox-era k8s label
    assert (s.name, s.attempt, s.image, s.image_ref) == ("app", 1, "busybox", "busybox@sha256:y")
    assert s.log_path == "/logs/ns_p_u-new/app/1.log" and s.message == "msg"


def test_running_and_created_status_mapping() -> None:
    s = m.container_state_from_status(status(pb.CONTAINER_RUNNING))
    assert (
        s.state == ContainerState.RUNNING and s.exit_code is None and s.finished_at is None and s.reason == ""
    )
    c = m.container_state_from_status(pb.ContainerStatus(id="c", state=pb.CONTAINER_CREATED))
    assert c.state == ContainerState.CREATED and c.started_at is None and c.created_at is None
    assert (
        m.map_state(pb.CONTAINER_UNKNOWN) == ContainerState.UNKNOWN
        and m.map_state(99) == ContainerState.UNKNOWN
    )


def test_container_usage_from_stats() -> None:
    exited = pb.ContainerStats(attributes=pb.ContainerAttributes(id="c"))
    assert sm.container_usage_from_stats(exited) is None
    s = pb.ContainerStats(
        attributes=pb.ContainerAttributes(id="c", metadata=pb.ContainerMetadata(name="app")),
        cpu=pb.CpuUsage(
            timestamp=5_000_000_000,
            usage_core_nano_seconds=pb.UInt64Value(value=7),
            usage_nano_cores=pb.UInt64Value(value=3),
        ),
        memory=pb.MemoryUsage(
            timestamp=4,
            working_set_bytes=pb.UInt64Value(value=100),
            usage_bytes=pb.UInt64Value(value=200),
            rss_bytes=pb.UInt64Value(value=50),
        ),
        writable_layer=pb.FilesystemUsage(used_bytes=pb.UInt64Value(value=9)),
    )
    u = sm.container_usage_from_stats(s, log_bytes=11)
    assert u is not None
    assert (u.name, u.cpu_usage_core_nanoseconds, u.cpu_usage_nano_cores, u.memory_working_set_bytes) == (
        "app",
        7,
        3,
        100,
    )
    assert (
        u.memory_usage_bytes,
        u.memory_rss_bytes,
        u.rootfs_used_bytes,
        u.logs_used_bytes,
        u.timestamp,
    ) == (200, 50, 9, 11, 5.0)


def test_proc_parsers() -> None:
    header = "Inter-|   Receive  |  Transmit\n face |bytes    packets errs drop|bytes\n"
    lo = "    lo:     100 1 0 0 0 0 0 0      100 1 0 0 0 0 0 0\n"
    eth = "  eth0:    1234 10 0 0 0 0 0 0      567 5 0 0 0 0 0 0\n"
    net = header + lo + eth
    assert sm.parse_net_dev(net) == sm.NetDev(1234, 567)
    stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 1 2 3 4\nbtime 1700000000\n"
    assert sm.parse_proc_stat(stat) == sm.ProcCpu(100 + 5 + 50 + 3 + 2 + 1, 1700000000.0)
    mem = sm.parse_meminfo("MemTotal:       2048 kB\nMemAvailable:   1024 kB\nHugePages_Total:       0\n")
    assert mem == {"MemTotal": 2048 * 1024, "MemAvailable": 1024 * 1024, "HugePages_Total": 0}


def test_container_config_carries_the_termination_message_path_and_policy() -> None:
    """The runtime side reads them back from the exited container's annotations (as kubelet)."""
    c = ContainerSpec(
        name="app",
        image="busybox",
        termination_message_path="/tmp/msg",
        termination_message_policy="FallbackToLogsOnError",
    )
    cfg = m.container_config(pod(), c, 0)
    assert cfg.annotations[m.K8S_CONTAINER_TERMINATION_MESSAGE_PATH] == "/tmp/msg"
    assert cfg.annotations[m.K8S_CONTAINER_TERMINATION_MESSAGE_POLICY] == "FallbackToLogsOnError"
    assert (
        m.container_config(pod(), ContainerSpec(name="a", image="b"), 0).annotations[
            m.K8S_CONTAINER_TERMINATION_MESSAGE_POLICY
        ]
        == "File"
    )


@pytest.mark.parametrize(
    ("pod_non_root", "c_user", "image_uid", "image_user", "want"),
    [
        (False, None, 0, "", ""),  # no policy: anything runs
        (True, 1000, 0, "", ""),  # runAsUser decides, not the image
        (True, 0, 1000, "", "container's runAsUser breaks non-root policy"),
        (True, None, 0, "", "container has runAsNonRoot and image will run as root"),  # no user: root
        (True, None, 1234, "", ""),
        (True, None, None, "app", "container has runAsNonRoot and image has non-numeric user (app)"),
    ],
)
def test_non_root_problem_is_kubelets_verify_run_as_non_root(
    pod_non_root: bool, c_user: int | None, image_uid: int | None, image_user: str, want: str
) -> None:
    from sandbox.backend import ContainerSecurity, PodSecurity

    p = PodSandboxSpec(
        uid="u",
        namespace="ns",
        name="p",
        workload_key="k",
        hostname="p",
        security=PodSecurity(run_as_non_root=pod_non_root),
    )
    c = ContainerSpec(name="app", image="img", security=ContainerSecurity(run_as_user=c_user))
    got = m.non_root_problem(p, c, image_uid, image_user)
    assert got.startswith(want) if want else got == ""
    if want:
        assert got.endswith('(pod: "p_ns(u)", container: app)')
        with pytest.raises(CreateContainerError):
            m.container_config(p, c, 0, image_uid=image_uid, image_user=image_user)


def test_the_image_user_reaches_the_image_cache() -> None:
    from sandbox.cri.image_runtime import CriImageRuntime

    numeric = pb.Image(id="sha256:a", size=3, repo_tags=["r/a:1"], uid=pb.Int64Value(value=1000))
    named = pb.Image(id="sha256:b", username="nobody")
    plain = pb.Image(id="sha256:c")
    a, b, c = (CriImageRuntime._info(i) for i in (numeric, named, plain))
    assert (a.id, a.size, a.tags, a.uid, a.username) == ("sha256:a", 3, ("r/a:1",), 1000, "")
    assert (b.uid, b.username) == (None, "nobody")
    assert (c.uid, c.username) == (None, "")  # kubelet: an image naming no user runs as root
