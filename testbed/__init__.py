"""warmlet's one-machine test bed: a real control plane, containerd, registry and images.

``TestBed`` brings it all up on loopback for tests (see ``testbed.pytest_plugin``);
``python -m testbed up|down|status|env`` keeps one running in the background for demos.
"""

from testbed.bed import TestBed, TestBedInfo

__all__ = ["TestBed", "TestBedInfo"]
