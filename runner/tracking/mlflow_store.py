"""Where a search's MLflow record goes: ``tracking.uri`` resolved to a store, connected, checked.

No Ray here: promotion and final evaluation open the same store.
"""

from __future__ import annotations

import logging
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from localization.api import InputError
from runner.names import EXPERIMENT_KIND, EXPERIMENT_KIND_MODEL_TRAINING

EMBEDDED_STORE_DIR = "mlflow"  # under the cwd: mlflow.db + artifacts/ (git-ignored)
SERVER_TIMEOUT_S = 5  # connecting to a tracking server


@dataclass(frozen=True)
class Store:
    """Where the record goes: a tracking URI, and for SQLite stores the artifact root."""

    uri: str
    artifact_root: Path | None  # None: the tracking server decides (http://, databases)


def resolve_store(uri: str | None, cwd: Path) -> Store:
    """``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else the embedded ``mlflow/`` store.

    A SQLite store keeps its artifacts in ``artifacts/`` beside the database file.
    """
    embedded = f"sqlite:///{cwd.resolve() / EMBEDDED_STORE_DIR / 'mlflow.db'}"
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or embedded
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        return Store(uri, database.parent / "artifacts")
    return Store(uri, None)


def connect(store: Store) -> MlflowClient:
    """A client for ``store``, checked reachable (InputError naming the URI otherwise)."""
    _check_server(store.uri)
    # "Creating initial MLflow database tables..." is noise on stderr, where errors must stand alone
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    try:
        if store.artifact_root is not None:
            store.artifact_root.parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=store.uri)
        client.search_experiments(max_results=1)
    except Exception as exc:  # any backend failure: bad scheme, missing driver, bad database URL, ...
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise InputError(f"tracking.uri {store.uri}: tracking store not usable ({first})") from None
    return client


def _check_server(uri: str) -> None:
    """Fail fast on a tracking server nobody answers: MLflow's client retries for minutes."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=SERVER_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        raise InputError(f"tracking.uri {uri}: no tracking server answers there ({exc})") from None


def experiment_id(client: MlflowClient, store: Store, name: str) -> str:
    """The experiment's id, created with an explicit artifact location when the store has one.

    The experiment is tagged as model training (``mlflow.experimentKind``) unless someone already
    chose a kind for it, so the UI opens on its runs rather than on the GenAI overview.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise InputError(f"experiment: {name!r} is deleted in {store.uri}; restore it or pick another name")
        if EXPERIMENT_KIND not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, EXPERIMENT_KIND_MODEL_TRAINING)
        return experiment.experiment_id
    location = (store.artifact_root / name).as_uri() if store.artifact_root is not None else None
    return client.create_experiment(
        name, artifact_location=location, tags={EXPERIMENT_KIND: EXPERIMENT_KIND_MODEL_TRAINING}
    )
