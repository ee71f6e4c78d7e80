"""Container probes (startup, readiness, liveness) with kubelet v1.36's semantics.

``spec`` parses a container's probes with Kubernetes' defaults, ``state`` is the pure per-probe
state machine (kubelet's prober worker), ``handlers`` run one probe (exec, httpGet, tcpSocket,
grpc), ``simulated`` decides outcomes for backends without processes, ``scheduler`` is the one
timer heap all probes share, ``manager`` ties them to pods, ``kill`` decides liveness/startup kills,
``metrics`` is kubelet's ``/metrics/probes``.
"""
