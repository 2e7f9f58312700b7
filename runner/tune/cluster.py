"""Ray cluster start-up and per-trial sizing.

The default starts a local Ray sized to this machine: every CPU, the GPUs Ray detects, a
modest object store (trials exchange only small results; Ray's default takes 30 % of RAM) and
no dashboard (``ray[tune]`` ships none. Ray binds its services to the
machine's address (it replaces 127.0.0.1 by it), so Ray 2.60's token authentication stays on
(the token lives in ``~/.ray/auth_token``); set ``RAY_AUTH_MODE=disabled`` yourself to opt
out. ``--address`` joins a cluster started with ``ray start --head`` instead, authenticating with
the cluster's token (see :func:`use_cluster_token`).
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass

import ray

from localization.api import InputError
from runner.searchfile.spec import ResourcesSpec, SearchOptions

OBJECT_STORE_BYTES = 384 * 1024**2
CPUS_PER_TRIAL_WITHOUT_GPU = 2  # default concurrency on CPU: one trial per 2 CPUs
CONNECT_TIMEOUT_S = 5
# Where Ray 2.60 looks for a cluster's token, in this order (said when joining fails without one)
TOKEN_HELP = "set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file with it, or copy the head's ~/.ray/auth_token here"

# Set before Ray starts: trials keep the driver's cwd so relative data paths work, and
# checkpointing every epoch must not warn about forced experiment snapshots.
RAY_ENV = {
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


@dataclass(frozen=True)
class Cluster:
    """What the search needs to know about the Ray cluster it runs on."""

    cpus: float
    gpus: float
    owned: bool  # started (or connected) here, so shut down here; False when Ray was already up
    node_gpus: float | None = None  # GPUs of the largest node (a trial runs on one node); None: unknown


def start(
    address: str | None = None, num_cpus: int | None = None, object_store_bytes: int = OBJECT_STORE_BYTES
) -> Cluster:
    """Connect to ``address`` or start a local cluster; raises InputError if unreachable.

    A Ray already initialised in this process (a notebook, the tests) is used as it is.
    """
    os.environ.update(RAY_ENV)
    owned = not ray.is_initialized()
    if owned and address is not None:
        check_reachable(address)
        token = use_cluster_token()
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=True, runtime_env={"env_vars": RAY_ENV})
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = "" if token else f"; a cluster with token authentication needs its token here: {TOKEN_HELP}"
            raise InputError(f"--address {address}: cannot connect to a Ray cluster ({first}){hint}") from None
    elif owned:
        # address="local": a new cluster of our own. Without it ray.init joins whatever cluster
        # `ray start` last left in /tmp/ray/ray_current_cluster on this machine (someone else's), and
        # then refuses num_cpus ("When connecting to an existing cluster, num_cpus ... must not be provided").
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count() or 1,
            object_store_memory=object_store_bytes,
            include_dashboard=False,
        )
    resources = ray.cluster_resources()
    node_gpus = max((float(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")), default=0.0)
    return Cluster(
        cpus=float(resources.get("CPU", 0)), gpus=float(resources.get("GPU", 0)), owned=owned, node_gpus=node_gpus
    )


def use_cluster_token() -> bool:
    """Authenticate with the cluster's token when joining by address; True if token mode is on.

    Ray 2.60 turns token authentication on by itself only for ``ray.init(address="auto")`` (or no
    address): with an explicit ``HOST:PORT`` the client stays in mode "disabled", and a cluster
    started with a token (``ray start --head`` finds ``~/.ray/auth_token``) answers
    ``InvalidAuthToken``. This does what "auto" does: with ``RAY_AUTH_MODE`` unset and a token
    available (``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH``, else
    ``~/.ray/auth_token``), token mode is enabled for this process and the workers it starts. An
    explicit ``RAY_AUTH_MODE`` is respected. Ray keeps this step in a private module:
    tests/runner/tune/test_ray_start.py fails if a Ray release moves it.
    """
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    return maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def check_reachable(address: str) -> None:
    """Fail fast (InputError): ray.init retries an unreachable GCS for minutes before giving up."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        raise InputError(f"--address {address}: no Ray cluster answers there ({exc})") from None


def stop(cluster: Cluster) -> None:
    if cluster.owned and ray.is_initialized():
        ray.shutdown()


def trial_resources(want: ResourcesSpec, cluster: Cluster) -> dict[str, float]:
    """One trial's request: its GPUs where the cluster has any, CPUs capped to the cluster's."""
    if cluster.gpus > 0 and want.gpu > cluster.gpus:
        raise InputError(f"resources.gpu: {want.gpu:g} GPUs per trial, but the cluster has {cluster.gpus:g}")
    if cluster.gpus > 0 and cluster.node_gpus is not None and want.gpu > cluster.node_gpus:
        # Ray would keep such a trial pending forever: no single node can hold it
        raise InputError(
            f"resources.gpu: {want.gpu:g} GPUs per trial, but the largest node has "
            f"{cluster.node_gpus:g} (the cluster {cluster.gpus:g})"
        )
    gpu = want.gpu if cluster.gpus > 0 else 0.0
    return {"cpu": min(want.cpu, cluster.cpus), "gpu": gpu}


def torch_threads(resources: dict[str, float]) -> int:
    """CPU trials use as many torch threads as CPUs they hold; GPU trials keep torch's default."""
    return 0 if resources["gpu"] > 0 else max(1, math.floor(resources["cpu"]))


def max_concurrent(options: SearchOptions, cluster: Cluster, resources: dict[str, float]) -> int:
    """``search.max_concurrent``, else one trial per GPU, or per 2 CPUs without GPUs."""
    if options.max_concurrent is not None:
        return options.max_concurrent
    if resources["gpu"] > 0:
        return max(1, math.floor(cluster.gpus / resources["gpu"]))
    return max(1, math.floor(cluster.cpus / CPUS_PER_TRIAL_WITHOUT_GPU))
