"""The garbage collector of a long-running node process, tuned to what it holds.

CPython's cyclic collector passes over the young generation every 700 net new container objects
(dicts, lists, instances) and over everything every 100 of those passes (once a quarter more
objects survived than at the last full pass). A simulated node of 10,000 pods holds about 1.5
million such objects, most of them its informer's decoded pods: JSON trees, which never form a
cycle. Measured on a 10,000-pod start (``warmlet bench scale``): 15 full passes took 6.4 s and
1,960 young passes 2.7 s, about a third of the node process's CPU, finding nothing in the pods.

``tune()``, once startup is done: the objects alive then (modules, classes, configuration) are
frozen out of every pass (``gc.freeze``), and the young generation is collected every ``YOUNG``
net new objects instead of 700, so the older passes come that much less often too. Cyclic
garbage (exception tracebacks, asyncio's) is still collected; at most about ``YOUNG`` such
objects wait for it.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

YOUNG = 10_000


def tune(young: int = YOUNG) -> None:
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)
    log.debug("gc tuned frozen=%d thresholds=%s", gc.get_freeze_count(), gc.get_threshold())
