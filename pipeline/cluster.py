"""Ray: join a cluster or start a local one on localhost, once per process."""

from __future__ import annotations

import logging
import os

__all__ = ["init_ray"]

logger = logging.getLogger(__name__)


def init_ray(address: str, workers: int) -> tuple[int, bool]:
    """Join `address` (or RAY_ADDRESS) or start a local Ray; -> (tasks to keep in flight, started here).

    A local Ray listens on 127.0.0.1 with no dashboard. When Ray is already initialised
    (a test session, a notebook) it is reused and `workers` only caps the tasks in flight.
    """
    import ray

    started = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS", "")
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False,
                     _node_ip_address="127.0.0.1", log_to_driver=False, logging_level=logging.WARNING)
        started = True
    if not workers:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return workers, started
