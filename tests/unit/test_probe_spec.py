"""Probe spec parsing: Kubernetes' defaults, handlers, named ports, env expansion; kill decisions;
simulated outcomes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from provider.probes.kill import kill_for_probe
from provider.probes.outcome import ProbeResult, go_duration
from provider.probes.simulated import parse_rule, simulated_outcome
from provider.probes.spec import (
    ExecAction,
    GRPCAction,
    HTTPGetAction,
    ProbeKind,
    TCPSocketAction,
    container_probes,
    expand_command,
    probed_containers,
    resolve_port,
)

C = {
    "name": "app",
    "ports": [{"name": "http", "containerPort": 8080}, {"name": "grpc", "containerPort": 9090}],
    "env": [{"name": "F", "value": "/tmp/ok"}, {"name": "S", "valueFrom": {"secretKeyRef": {}}}],
}


def test_defaults() -> None:
    p = container_probes({**C, "readinessProbe": {"exec": {"command": ["true"]}}})[ProbeKind.READINESS]
    assert (p.initial_delay, p.period, p.timeout, p.success_threshold, p.failure_threshold) == (
        0,
        10,
        1,
        1,
        3,
    )
    assert p.termination_grace is None and p.error == ""
    assert p.handler == ExecAction(("true",))


def test_fields_and_every_handler() -> None:
    c = {
        **C,
        "readinessProbe": {
            "httpGet": {
                "scheme": "HTTPS",
                "port": "http",
                "path": "/healthz",
                "httpHeaders": [{"name": "X-A", "value": "1"}],
            },
            "initialDelaySeconds": 5,
            "periodSeconds": 3,
            "timeoutSeconds": 2,
            "successThreshold": 2,
            "failureThreshold": 7,
        },
        "livenessProbe": {
            "tcpSocket": {"port": 8081, "host": "10.0.0.9"},
            "terminationGracePeriodSeconds": 4,
        },
        "startupProbe": {"grpc": {"port": 9090, "service": "svc"}},
    }
    ps = container_probes(c)
    r = ps[ProbeKind.READINESS]
    assert (r.initial_delay, r.period, r.timeout, r.success_threshold, r.failure_threshold) == (5, 3, 2, 2, 7)
    assert r.handler == HTTPGetAction("https", "", 8080, "/healthz", (("X-A", "1"),))
    assert ps[ProbeKind.LIVENESS].handler == TCPSocketAction("10.0.0.9", 8081)
    assert ps[ProbeKind.LIVENESS].termination_grace == 4
    assert ps[ProbeKind.STARTUP].handler == GRPCAction(9090, "svc")


def test_unknown_named_port_is_an_error_not_a_crash() -> None:
    p = container_probes({**C, "livenessProbe": {"tcpSocket": {"port": "nope"}}})[ProbeKind.LIVENESS]
    assert p.handler is None and "nope" in p.error
    assert container_probes({**C, "livenessProbe": {}})[ProbeKind.LIVENESS].error.startswith(
        "missing probe handler"
    )


def test_resolve_port() -> None:
    assert resolve_port(80, C) == 80
    assert resolve_port("grpc", C) == 9090
    for bad in (0, 70000, "x", None):
        try:
            resolve_port(bad, C)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_expand_command_uses_literal_env_only() -> None:
    assert expand_command(["cat", "$(F)", "$(S)", "$(NOPE)", "$$(F)"], C["env"]) == (  # type: ignore[arg-type]
        "cat",
        "/tmp/ok",
        "$(S)",
        "$(NOPE)",
        "$(F)",
    )


def test_probed_containers_are_app_containers_and_sidecars() -> None:
    pod = {
        "spec": {
            "initContainers": [{"name": "init"}, {"name": "side", "restartPolicy": "Always"}],
            "containers": [{"name": "app"}],
        }
    }
    assert [c["name"] for c in probed_containers(pod)] == ["side", "app"]


def test_kill_grace_and_message() -> None:
    c = {"name": "app", "livenessProbe": {"exec": {"command": ["x"]}, "terminationGracePeriodSeconds": 3}}
    pod = {"metadata": {}, "spec": {"terminationGracePeriodSeconds": 20, "restartPolicy": "Always"}}
    k = kill_for_probe(pod, c, "cid", ProbeKind.LIVENESS)
    assert (k.grace_seconds, k.restart) == (3.0, True)
    assert k.message == "Container app failed liveness probe, will be restarted"
    k = kill_for_probe(pod, c, "cid", ProbeKind.STARTUP)  # no probe-level grace on the startup probe
    assert k.grace_seconds == 20.0 and k.message == "Container app failed startup probe, will be restarted"
    never = {"metadata": {"deletionGracePeriodSeconds": 1}, "spec": {"restartPolicy": "Never"}}
    k = kill_for_probe(never, c, "cid", ProbeKind.LIVENESS)
    assert (k.grace_seconds, k.restart, k.message) == (1.0, False, "Container app failed liveness probe")


def test_simulated_rules() -> None:
    ann = {"warmlet.io/sim-probe-readiness": "fail", "warmlet.io/sim-probe-readiness.web": "succeed-after=5"}
    assert simulated_outcome({}, ProbeKind.READINESS, "app", 0) is None
    out = simulated_outcome(ann, ProbeKind.READINESS, "app", 100)
    assert out is not None and out.result == ProbeResult.FAILURE
    before = simulated_outcome(ann, ProbeKind.READINESS, "web", 4.9)
    after = simulated_outcome(ann, ProbeKind.READINESS, "web", 5)
    assert before is not None and before.result == ProbeResult.FAILURE
    assert after is not None and after.result == ProbeResult.SUCCESS
    flip = simulated_outcome({"warmlet.io/sim-probe-liveness": "fail-after=2"}, ProbeKind.LIVENESS, "a", 3)
    assert flip is not None and flip.result == ProbeResult.FAILURE
    assert parse_rule("garbage") == (True, float("inf"))


@given(st.floats(0, 1e6, allow_nan=False), st.floats(0, 1e6, allow_nan=False))
def test_simulated_after_flips_exactly_once(after: float, t: float) -> None:
    out = simulated_outcome(
        {"warmlet.io/sim-probe-startup": f"succeed-after={after}"}, ProbeKind.STARTUP, "a", t
    )
    assert out is not None and (out.result == ProbeResult.SUCCESS) == (t >= after)


def test_go_duration() -> None:
    assert [go_duration(s) for s in (1, 2.5, 60, 90)] == ["1s", "2.5s", "1m0s", "1m30s"]


def test_a_container_killed_for_liveness_is_restarted_in_the_same_sync_whatever_its_exit_code() -> None:
    """kubelet's computePodActions starts a container it kills for a probe (unless Never), even when
    it exits 0 on TERM under OnFailure; without the kill, a clean exit is final."""
    from provider.backoff import Backoff
    from provider.sync import Start, compute_pod_actions
    from sandbox.backend import ContainerRuntimeState, ContainerState

    now = 1_000_000.0
    done = ContainerRuntimeState(
        container_id="c0",
        pod_uid="u",
        name="app",
        state=ContainerState.EXITED,
        exit_code=0,
        started_at=now - 30,
        finished_at=now,
    )
    for policy, killed, want in (
        ("OnFailure", frozenset({"app"}), [Start("app", 1, False)]),
        ("OnFailure", frozenset(), []),
        ("Never", frozenset({"app"}), []),
    ):
        p = {"metadata": {"uid": "u"}, "spec": {"restartPolicy": policy, "containers": [{"name": "app"}]}}
        assert compute_pod_actions(p, [done], Backoff(), now, killed).start == want, (policy, killed)
