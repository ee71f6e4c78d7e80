"""Pure mapping between the seam's models and CRI messages, the way kubelet builds them.

Why separate from the backend: these functions decide labels, log locations, resources, security
and status reasons. They have no I/O, so they are unit tested directly (tests/unit/test_cri_*.py),
and the backend stays about sequencing calls.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

from common.crilog import container_log_relpath
from proto import cri_pb2 as pb
from sandbox.backend import (
    ContainerRuntimeState,
    ContainerSpec,
    ContainerState,
    CreateContainerError,
    PodSandboxSpec,
    Resources,
)

# ---------------------------------------------------------------------------- labels

LABEL_MANAGED = "warmlet.io/managed"
LABEL_POD_UID = "warmlet.io/pod-uid"
LABEL_WORKLOAD_KEY = "warmlet.io/workload-key"  # label: hash; annotation: the full key
LABEL_PREWARMED = "warmlet.io/prewarmed"
ANNOTATION_WORKLOAD_KEY = "warmlet.io/workload-key"
ANNOTATION_POD_NAME = "warmlet.io/pod-name"
ANNOTATION_POD_NAMESPACE = "warmlet.io/pod-namespace"

K8S_POD_NAME = "io.kubernetes.pod.name"
K8S_POD_NAMESPACE = "io.kubernetes.pod.namespace"
K8S_POD_UID = "io.kubernetes.pod.uid"
K8S_CONTAINER_NAME = "io.kubernetes.container.name"
K8S_CONTAINER_RESTART = "io.kubernetes.container.restartCount"
K8S_CONTAINER_TERMINATION_MESSAGE_PATH = "io.kubernetes.container.terminationMessagePath"
K8S_CONTAINER_TERMINATION_MESSAGE_POLICY = "io.kubernetes.container.terminationMessagePolicy"

LABEL_INSTANCE = "warmlet.io/instance"  # which warmlet (node) owns it: several may share one runtime

MANAGED_SELECTOR = {LABEL_MANAGED: "true"}


def managed_selector(instance: str = "") -> dict[str, str]:
    """Label selector of what one warmlet instance owns (never another instance's sandboxes)."""
    sel = dict(MANAGED_SELECTOR)
    if instance:
        sel[LABEL_INSTANCE] = instance
    return sel


# kubelet's defaults (k8s.io/kubernetes/pkg/securitycontext): without them containerd masks nothing.
DEFAULT_MASKED_PATHS = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# cgroup cpu constants as kubelet uses them (pkg/kubelet/cm/helpers_linux.go).
MIN_SHARES = 2
MAX_SHARES = 262144
SHARES_PER_CPU = 1024
QUOTA_PERIOD_US = 100_000
MIN_QUOTA_US = 1000


def workload_key_label(key: str) -> str:
    """A label-safe (<=63 chars, [a-z0-9]) stable digest of a workload key."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------- resources


def milli_cpu_to_shares(milli: int) -> int:
    if milli <= 0:
        return MIN_SHARES
    shares = milli * SHARES_PER_CPU // 1000
    return max(MIN_SHARES, min(MAX_SHARES, shares))


def milli_cpu_to_quota(milli: int, period: int = QUOTA_PERIOD_US) -> int:
    if milli <= 0:
        return 0
    return max(MIN_QUOTA_US, milli * period // 1000)


def qos_class(resources: list[Resources]) -> str:
    """Guaranteed / Burstable / BestEffort from the containers' requests and limits."""
    if all(
        r.cpu_request_milli == 0
        and r.cpu_limit_milli == 0
        and r.memory_request_bytes == 0
        and r.memory_limit_bytes == 0
        for r in resources
    ):
        return "BestEffort"
    if all(
        r.cpu_limit_milli > 0
        and r.memory_limit_bytes > 0
        and r.cpu_request_milli in (0, r.cpu_limit_milli)
        and r.memory_request_bytes in (0, r.memory_limit_bytes)
        for r in resources
    ):
        return "Guaranteed"
    return "Burstable"


def oom_score_adj(res: Resources, qos: str, node_memory_bytes: int) -> int:
    """kubelet's policy (pkg/kubelet/qos/policy.go); containerd clamps it with restrict_oom_score_adj."""
    if qos == "Guaranteed":
        return -997
    if qos == "BestEffort":
        return 1000
    req = res.memory_request_bytes
    if node_memory_bytes <= 0:
        return 999
    adj = 1000 - (1000 * req) // node_memory_bytes
    return int(max(2, min(999, adj)))


def linux_resources(
    res: Resources, qos: str = "Burstable", node_memory_bytes: int = 0
) -> pb.LinuxContainerResources:
    cpu_req = res.cpu_request_milli or res.cpu_limit_milli
    out = pb.LinuxContainerResources(
        cpu_shares=milli_cpu_to_shares(cpu_req),
        memory_limit_in_bytes=max(0, res.memory_limit_bytes),
        oom_score_adj=oom_score_adj(res, qos, node_memory_bytes),
    )
    if res.cpu_limit_milli > 0:
        out.cpu_period = QUOTA_PERIOD_US
        out.cpu_quota = milli_cpu_to_quota(res.cpu_limit_milli)
    return out


def pids_max_files(
    cgroup_parent: str, root: str = "/sys/fs/cgroup", v1: bool = True
) -> tuple[str, list[str]]:
    """Where a pod's pids limit goes: (``pids.max`` file, ``cgroup.subtree_control`` files to
    enable ``+pids`` in first, top down).

    Why not CRI: LinuxContainerResources has no pids field (kubelet's podPidsLimit is written by
    kubelet into the pod cgroup, not sent to the runtime), and its ``unified`` map, which could
    carry ``pids.max`` on cgroup v2, is refused by runc on cgroup v1. So warmlet does what kubelet
    does: the pod gets its own cgroup parent and warmlet writes ``pids.max`` there before the
    sandbox starts; the limit is hierarchical, so it covers the pause and every container.
    """
    rel = cgroup_parent.strip("/")
    if v1:
        return os.path.join(root, "pids", rel, "pids.max"), []
    parts = rel.split("/")
    controls = [os.path.join(root, *parts[:i], "cgroup.subtree_control") for i in range(len(parts))]
    return os.path.join(root, rel, "pids.max"), controls


# ---------------------------------------------------------------------------- sandbox config

_PROTOCOLS = {"TCP": pb.TCP, "UDP": pb.UDP, "SCTP": pb.SCTP}


def port_mappings(pod: PodSandboxSpec) -> list[pb.PortMapping]:
    return [
        pb.PortMapping(
            protocol=_PROTOCOLS.get(p.protocol.upper(), pb.TCP),  # type: ignore[arg-type]
            container_port=p.container_port,
            host_port=p.host_port,
            host_ip=p.host_ip,
        )
        for p in pod.ports
    ]


def sandbox_labels(pod: PodSandboxSpec, prewarmed: bool = False, instance: str = "") -> dict[str, str]:
    labels = dict(pod.labels)
    labels.update(
        {
            K8S_POD_NAME: pod.name,
            K8S_POD_NAMESPACE: pod.namespace,
            K8S_POD_UID: pod.uid,
            LABEL_MANAGED: "true",
            LABEL_POD_UID: pod.uid,
            LABEL_WORKLOAD_KEY: workload_key_label(pod.workload_key),
        }
    )
    if prewarmed:
        labels[LABEL_PREWARMED] = "true"
    if instance:
        labels[LABEL_INSTANCE] = instance
    return labels


def sandbox_annotations(pod: PodSandboxSpec) -> dict[str, str]:
    ann = dict(pod.annotations)
    ann[ANNOTATION_WORKLOAD_KEY] = pod.workload_key
    return ann


def sandbox_config(
    pod: PodSandboxSpec,
    log_directory: str,
    cgroup_parent: str = "",
    prewarmed: bool = False,
    instance: str = "",
) -> pb.PodSandboxConfig:
    """PodSandboxConfig as kubelet's generatePodSandboxConfig builds it (pod network namespace)."""
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(
            name=pod.name, uid=pod.uid, namespace=pod.namespace, attempt=pod.attempt
        ),
        hostname=pod.hostname or pod.name,
        log_directory=log_directory,
        dns_config=pb.DNSConfig(servers=pod.dns.servers, searches=pod.dns.searches, options=pod.dns.options),
        port_mappings=port_mappings(pod),
        labels=sandbox_labels(pod, prewarmed, instance),
        annotations=sandbox_annotations(pod),
    )
    linux = cfg.linux
    if cgroup_parent:
        linux.cgroup_parent = cgroup_parent
    for k, v in pod.security.sysctls.items():
        linux.sysctls[k] = v
    sc = linux.security_context
    sc.namespace_options.CopyFrom(pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD))
    sc.privileged = pod.security.privileged  # kubelet: HasPrivilegedContainer(pod)
    if pod.security.run_as_user is not None:
        sc.run_as_user.value = pod.security.run_as_user
    if pod.security.run_as_group is not None:
        sc.run_as_group.value = pod.security.run_as_group
    groups = list(pod.security.supplemental_groups)
    if pod.security.fs_group is not None and pod.security.fs_group not in groups:
        groups.append(pod.security.fs_group)
    sc.supplemental_groups.extend(groups)
    return cfg


# ---------------------------------------------------------------------------- container config


def container_labels(
    pod: PodSandboxSpec, container: ContainerSpec, attempt: int, instance: str = ""
) -> dict[str, str]:
    labels = {
        K8S_POD_NAME: pod.name,
        K8S_POD_NAMESPACE: pod.namespace,
        K8S_POD_UID: pod.uid,
        K8S_CONTAINER_NAME: container.name,
        LABEL_MANAGED: "true",
        LABEL_POD_UID: pod.uid,
        LABEL_WORKLOAD_KEY: workload_key_label(pod.workload_key),
    }
    if instance:
        labels[LABEL_INSTANCE] = instance
    return labels


def non_root_problem(
    pod: PodSandboxSpec, container: ContainerSpec, image_uid: int | None, image_user: str
) -> str:
    """Why ``runAsNonRoot`` forbids this container ('' if it does not): kubelet's
    verifyRunAsNonRoot. With no runAsUser the image's user decides: its numeric uid (0 = root), a
    user name that cannot be verified, or no user at all (root). ``image_uid`` None with
    ``image_user`` '' means the image names no user."""
    sec, psec = container.security, pod.security
    if not (sec.run_as_non_root or psec.run_as_non_root):
        return ""
    where = f'(pod: "{pod.name}_{pod.namespace}({pod.uid})", container: {container.name})'
    run_as_user = sec.run_as_user if sec.run_as_user is not None else psec.run_as_user
    if run_as_user is not None:
        return f"container's runAsUser breaks non-root policy {where}" if run_as_user == 0 else ""
    if image_uid is None and image_user:
        return (
            f"container has runAsNonRoot and image has non-numeric user ({image_user}), "
            f"cannot verify user is non-root {where}"
        )
    if not image_uid:
        return f"container has runAsNonRoot and image will run as root {where}"
    return ""


def namespace_options(container: ContainerSpec) -> pb.NamespaceOption:
    """kubelet's namespacesForPod: the pod's network and IPC; the container's own PID namespace,
    or an ephemeral container's target's (NamespaceMode TARGET)."""
    target = container.target_container_id
    pid = pb.TARGET if target else pb.CONTAINER
    return pb.NamespaceOption(network=pb.POD, pid=pid, ipc=pb.POD, target_id=target)


def container_config(
    pod: PodSandboxSpec,
    container: ContainerSpec,
    attempt: int,
    image_ref: str = "",
    qos: str = "Burstable",
    node_memory_bytes: int = 0,
    instance: str = "",
    image_uid: int | None = 0,
    image_user: str = "",
) -> pb.ContainerConfig:
    """ContainerConfig as kubelet's generateContainerConfig builds it.

    ``log_path`` is relative to the log_directory of the PodSandboxConfig sent WITH the request
    (containerd 1.6 joins them): the backend sends the current pod's log dir there, so reused
    sandboxes log into the new pod's directory.
    """
    sec = container.security
    psec = pod.security
    run_as_user = sec.run_as_user if sec.run_as_user is not None else psec.run_as_user
    run_as_group = sec.run_as_group if sec.run_as_group is not None else psec.run_as_group
    problem = non_root_problem(pod, container, image_uid, image_user)
    if problem:
        raise CreateContainerError(problem, reason="CreateContainerConfigError")
    cfg = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=container.name, attempt=attempt),
        image=pb.ImageSpec(image=image_ref or container.image, user_specified_image=container.image),
        command=container.command,
        args=container.args,
        working_dir=container.working_dir,
        envs=[pb.KeyValue(key=e.name, value=e.value) for e in container.env],
        mounts=[
            pb.Mount(container_path=m.container_path, host_path=m.host_path, readonly=m.read_only)
            for m in container.mounts
        ],
        labels=container_labels(pod, container, attempt, instance),
        annotations={
            K8S_CONTAINER_RESTART: str(attempt),
            K8S_CONTAINER_TERMINATION_MESSAGE_PATH: container.termination_message_path,
            K8S_CONTAINER_TERMINATION_MESSAGE_POLICY: container.termination_message_policy,
            ANNOTATION_POD_NAME: pod.name,
            ANNOTATION_POD_NAMESPACE: pod.namespace,
        },
        log_path=container_log_relpath(container.name, attempt),
        stdin=container.stdin,
        stdin_once=container.stdin_once,
        tty=container.tty,
    )
    linux = cfg.linux
    linux.resources.CopyFrom(linux_resources(container.resources, qos, node_memory_bytes))
    sc = linux.security_context
    sc.privileged = sec.privileged
    sc.readonly_rootfs = sec.read_only_root_fs
    sc.capabilities.add_capabilities.extend(sec.capabilities_add)
    sc.capabilities.drop_capabilities.extend(sec.capabilities_drop)
    sc.namespace_options.CopyFrom(namespace_options(container))
    if run_as_user is not None:
        sc.run_as_user.value = run_as_user
    if run_as_group is not None:
        sc.run_as_group.value = run_as_group
    groups = list(psec.supplemental_groups)
    if psec.fs_group is not None and psec.fs_group not in groups:
        groups.append(psec.fs_group)
    sc.supplemental_groups.extend(groups)
    # allowPrivilegeEscalation defaults to true in Kubernetes; false sets no_new_privs.
    sc.no_new_privs = sec.allow_privilege_escalation is False and not sec.privileged
    if not sec.privileged:
        sc.masked_paths.extend(DEFAULT_MASKED_PATHS)
        sc.readonly_paths.extend(DEFAULT_READONLY_PATHS)
    return cfg


# ---------------------------------------------------------------------------- status

_STATES = {
    pb.CONTAINER_CREATED: ContainerState.CREATED,
    pb.CONTAINER_RUNNING: ContainerState.RUNNING,
    pb.CONTAINER_EXITED: ContainerState.EXITED,
    pb.CONTAINER_UNKNOWN: ContainerState.UNKNOWN,
}


def map_state(state: int) -> ContainerState:
    return _STATES.get(state, ContainerState.UNKNOWN)  # type: ignore[call-overload]


def ns_to_seconds(ns: int) -> float | None:
    return ns / 1e9 if ns > 0 else None


def exit_reason(runtime_reason: str, exit_code: int) -> str:
    """kubelet's terminated reason: OOMKilled from the runtime, else Completed (0) or Error."""
    if runtime_reason == "OOMKilled":
        return "OOMKilled"
    if runtime_reason and runtime_reason not in ("Completed", "Error"):
        return runtime_reason  # e.g. ContainerCannotRun, StartError: the runtime knows better
    return "Completed" if exit_code == 0 else "Error"


def pod_uid_of(labels: Mapping[str, str]) -> str:
    return labels.get(LABEL_POD_UID) or labels.get(K8S_POD_UID, "")


def container_state_from_status(st: pb.ContainerStatus) -> ContainerRuntimeState:
    state = map_state(st.state)
    exited = state == ContainerState.EXITED
    labels = dict(st.labels)
    return ContainerRuntimeState(
        container_id=st.id,
        pod_uid=pod_uid_of(labels),
        name=st.metadata.name or labels.get(K8S_CONTAINER_NAME, ""),
        attempt=st.metadata.attempt,
        state=state,
        image=st.image.user_specified_image or st.image.image,
        image_ref=st.image_ref,
        created_at=ns_to_seconds(st.created_at),
        started_at=ns_to_seconds(st.started_at),
        finished_at=ns_to_seconds(st.finished_at) if exited else None,
        exit_code=st.exit_code if exited else None,
        reason=exit_reason(st.reason, st.exit_code) if exited else st.reason,
        message=st.message,
        log_path=st.log_path,
    )
