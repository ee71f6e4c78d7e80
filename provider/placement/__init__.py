"""Placement: where pods go before a kubelet ever sees them.

- ``policy``: pure decisions (overflow threshold, Job policy, node health and capacity, the JSON
  patch that steers a pod to the virtual node, node choice for the binder).
- ``view``: a cheap cache of warmlet's Nodes, their Leases and the pods bound to them.
- ``webhook``: the mutating admission webhook (TLS, AdmissionReview v1, fails open) and its
  MutatingWebhookConfiguration.
- ``binder``: a fast scheduler for pods naming warmlet's scheduler (Binding API, batches).
- ``service``: runs the enabled parts in one TaskGroup (inside ``warmlet run`` or
  ``warmlet placement``).
"""
