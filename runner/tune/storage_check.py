"""Before any trial starts: the driver and every node of the cluster reach the storage path.

Ray writes a trial's checkpoints from the node the trial runs on, straight to the storage path. A
node that cannot reach it (a share not mounted there, a folder that exists only on the head, an
object store it has no route or credentials to) fails only when a trial placed on it persists its
first checkpoint: after the search has started and its MLflow runs exist. So the driver writes a
marker there, and on a cluster of more than one node a task pinned to every alive node reads it
and writes one back, which the driver reads. A node that cannot is refused with one line naming
it and the path. It costs one small task per node: seconds.
"""

from __future__ import annotations

import contextlib
import time
import uuid

import pyarrow
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from localization.api import InputError
from runner.tune.storage import Location

ANSWER_TIMEOUT_S = 120  # a node's task may first have to start a worker process
DRIVER = "driver"  # the marker's name; each node answers with a file named by its node id


def check_storage(storage: Location) -> str:
    """Refuse (InputError) a storage path the driver or any alive node cannot read and write; a summary."""
    started = time.perf_counter()
    folder = storage / f".storage-check-{uuid.uuid4().hex[:12]}"
    token = uuid.uuid4().hex
    try:
        (folder / DRIVER).write_text(token)
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        if len(nodes) > 1:
            _check_nodes(storage, folder, token, nodes)
    except (OSError, pyarrow.ArrowException) as exc:
        raise InputError(f"--storage-path {storage}: the driver cannot use it ({_first_line(exc)})") from None
    finally:
        with contextlib.suppress(OSError, pyarrow.ArrowException):  # an unreachable store has no marker to remove
            folder.delete()
    return f"storage: {storage}, read and written from {len(nodes)} node(s) ({time.perf_counter() - started:.1f} s)"


def _check_nodes(storage: Location, folder: Location, token: str, nodes: list[dict]) -> None:
    """One task per node: it reads the driver's marker and answers; the driver reads every answer."""
    tasks = {
        node["NodeID"]: _answer.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(folder, token, node["NodeID"])
        for node in nodes
    }
    for node in nodes:
        name = f"node {node['NodeManagerAddress']} ({node['NodeID'][:12]})"
        try:
            problem = ray.get(tasks[node["NodeID"]], timeout=ANSWER_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            problem = f"no answer within {ANSWER_TIMEOUT_S} s"
        if problem is None:
            answer = folder / node["NodeID"]
            if not answer.is_file() or answer.read_text() != token:
                problem = f"the driver cannot read what it wrote to {answer} (a folder of that node's own?)"
        if problem is not None:
            raise InputError(f"--storage-path {storage}: {name} cannot reach it: {problem}")


@ray.remote(num_cpus=0, max_retries=0)
def _answer(folder: Location, token: str, node_id: str) -> str | None:
    """On one node: read the driver's marker, write this node's answer; what went wrong, or None."""
    marker = folder / DRIVER
    try:
        if not marker.is_file():
            return f"{marker} does not exist there"
        if marker.read_text() != token:
            return f"{marker} holds another marker than the driver's"
        (folder / node_id).write_text(token)
    except (OSError, pyarrow.ArrowException) as exc:
        return _first_line(exc)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
