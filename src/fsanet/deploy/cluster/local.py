"""Joining a Ray cluster for the life of the server, or starting a local one on loopback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from fsanet.core.errors import FsanetError
from fsanet.deploy.cluster._ray import ray

LOOPBACK = "127.0.0.1"


@contextmanager
def connected(address: str | None, num_cpus: int) -> Iterator[str]:
    """Ray in this process until the block ends: the cluster at `address`, or (None) a
    local one on 127.0.0.1 with `num_cpus` CPUs and no dashboard, stopped at the end (its
    processes die with this one). Yields the cluster's address."""
    # Replicas' output goes to Ray's log files, not to the server's stdout and stderr.
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            with _single_node():  # "local": a new cluster, even if `ray start` ran here
                ray.init(
                    "local",
                    _node_ip_address=LOOPBACK,
                    num_cpus=num_cpus,
                    include_dashboard=False,
                    **quiet,
                )
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise FsanetError(f"cannot start or join {where}: {e}") from None
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # no INFO line per deployment
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()  # a local cluster stops with it; a remote one only loses this driver


@contextmanager
def _single_node() -> Iterator[None]:
    """Ray turns 127.0.0.1 into the machine's outward address, so that other nodes can reach
    this one, unless multi-node clusters are off (its default on Windows and macOS). A local
    cluster has one node: turned off while it starts, every Ray port binds to loopback."""
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    saved = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if saved is None:  # another Ray version: it keeps its own choice of address
        yield
        return
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved
