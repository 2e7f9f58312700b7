"""Promoted models in MLflow: checkpoint -> pickle-free pyfunc model -> registered version, and back.

A promoted model holds three files, none of which can execute code when read:
``weights.pt`` (the training checkpoint minus optimizer, scheduler and RNG state; tensors, numbers
and strings, read with ``torch.load(weights_only=True)``), ``config.yaml`` (the resolved run
config) and ``class_names.json``. The pyfunc wrapper is logged as code
(``runner/actionformer_pyfunc.py``), so MLflow never cloudpickles or unpickles a Python object.
Registry stages are deprecated (MLflow 2.9+): versions are addressed by alias.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from localization import api
from localization.api import InputError
from runner.names import CLASS_NAMES, CONFIG, LOGGED_MODEL_NAME, WEIGHTS
from runner.names import MODEL_FILE_NAMES as FILE_NAMES
from runner.tracking.mlflow_store import Store, connect

PYFUNC_CODE = Path(__file__).with_name("actionformer_pyfunc.py")
# Load-time settings of the pyfunc (mlflow.pyfunc.load_model(..., model_config=...)); MLflow only
# accepts keys declared when the model is logged. subset None: the stored data.val_subset.
DEFAULT_MODEL_CONFIG = {"subset": None, "set": []}


class ModelNotFound(InputError):
    """A model URI that names no model (unknown name, version or alias, or a malformed URI)."""


@dataclass
class ModelFiles:
    """The three files of a promoted model on local disk."""

    weights: Path
    config: Path
    class_names: Path

    def as_artifacts(self) -> dict[str, str]:
        return {WEIGHTS: str(self.weights), CONFIG: str(self.config), CLASS_NAMES: str(self.class_names)}


@dataclass
class ModelRef:
    """A resolved model URI: where its files are and what the registry says about it."""

    uri: str  # as given
    download_uri: str  # a URI that stays on this exact model (an alias may move later)
    name: str | None = None  # registered model name (None for runs:/ and models:/m-... URIs)
    version: str | None = None
    alias: str | None = None
    source_run_id: str | None = None  # the training (child) run the weights come from
    model_id: str | None = None  # the MLflow LoggedModel id (m-...), where known
    tags: dict[str, str] = field(default_factory=dict)  # the version's lineage tags


def use_store(store: Store) -> MlflowClient:
    """Make ``store`` the tracking and registry store of this process; a client for it.

    Both URIs are set globally (``mlflow.register_model`` and ``log_model`` use the globals) and
    passed to the client explicitly: a client otherwise takes a registry URI set earlier.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep CLI output readable
    uri = connect(store).tracking_uri  # checks the store is reachable (InputError otherwise)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (annotation files are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_model_files(checkpoint: Path, config_yaml: Path, out_dir: Path) -> ModelFiles:
    """Write a training checkpoint's inference part as the model's files in ``out_dir``.

    The optimizer, scheduler and RNG state are dropped: they only matter to resume training.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ModelFiles(*(out_dir / FILE_NAMES[key] for key in (WEIGHTS, CONFIG, CLASS_NAMES)))
    class_names = api.save_inference_checkpoint(checkpoint, files.weights)
    shutil.copyfile(config_yaml, files.config)
    files.class_names.write_text(json.dumps(class_names, indent=1))
    return files


def _pip_requirements() -> list[str]:
    # Exact versions without local labels ("2.13.0+cpu" warns. The project
    # package itself (localization, runner) must be installed where the model is loaded.
    return [
        f"torch=={importlib.metadata.version('torch').split('+')[0]}",
        f"numpy=={np.__version__}",
        f"mlflow=={mlflow.__version__}",
        "pyyaml",
        "pandas",
    ]


def log_model(
    client: MlflowClient, files: ModelFiles, *, experiment_id: str, source_run_id: str, tags: dict[str, str]
) -> str:
    """Log the files as a models-from-code pyfunc linked to ``source_run_id``; returns its URI.

    The LoggedModel is created with the source run as its origin and then listed among the run's
    outputs, rather than logged by reopening the finished trial run (which would change its
    status and end time).
    """
    logged = mlflow.initialize_logged_model(
        name=LOGGED_MODEL_NAME, source_run_id=source_run_id, experiment_id=experiment_id, tags=tags
    )
    info = mlflow.pyfunc.log_model(
        name=LOGGED_MODEL_NAME,
        python_model=str(PYFUNC_CODE),
        artifacts=files.as_artifacts(),
        pip_requirements=_pip_requirements(),
        model_config=dict(DEFAULT_MODEL_CONFIG),
        model_id=logged.model_id,
    )
    client.log_outputs(source_run_id, [LoggedModelOutput(logged.model_id, step=0)])
    return info.model_uri


def register(client: MlflowClient, model_uri: str, model_name: str, alias: str, tags: dict[str, str]) -> ModelVersion:
    """Register a new version of ``model_name`` with ``tags`` and point ``alias`` at it."""
    version = mlflow.register_model(model_uri, model_name, tags=tags)
    client.set_registered_model_alias(model_name, alias, version.version)
    return client.get_model_version(model_name, version.version)


_REGISTERED = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")
_LOGGED = re.compile(r"^models:/(?P<model_id>m-[0-9a-f]+)$")
_RUNS = re.compile(r"^runs:/(?P<run_id>[0-9a-f]+)/(?P<path>.+)$")


def resolve_model(client: MlflowClient, uri: str) -> ModelRef:
    """Look ``uri`` up: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/m-ID`` or
    ``runs:/RUN_ID/PATH``. Unknown names, versions and aliases raise :class:`ModelNotFound`."""
    if match := _LOGGED.match(uri):
        try:
            logged = client.get_logged_model(match["model_id"])
        except MlflowException:
            raise ModelNotFound(f"{uri}: no such logged model") from None
        return ModelRef(uri, uri, source_run_id=logged.source_run_id, model_id=logged.model_id)
    if match := _RUNS.match(uri):
        try:
            client.get_run(match["run_id"])
        except MlflowException:
            raise ModelNotFound(f"{uri}: no run {match['run_id']} in the tracking store") from None
        return ModelRef(uri, uri, source_run_id=match["run_id"])
    match = _REGISTERED.match(uri)
    if match is None:
        raise ModelNotFound(
            f"{uri}: not a model URI (expected models:/NAME@ALIAS, models:/NAME/VERSION, "
            f"models:/m-ID or runs:/RUN_ID/PATH)"
        )
    name = match["name"]
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        raise ModelNotFound(f"{uri}: no registered model named {name!r}") from None
    try:
        if match["alias"]:
            version = client.get_model_version_by_alias(name, match["alias"])
        else:
            version = client.get_model_version(name, match["version"])
    except MlflowException:
        if match["alias"]:
            known = sorted(registered.aliases) or "none"
            raise ModelNotFound(f"{uri}: model {name!r} has no alias {match['alias']!r} (aliases: {known})") from None
        raise ModelNotFound(f"{uri}: model {name!r} has no version {match['version']}") from None
    logged = _LOGGED.match(version.source or "")
    return ModelRef(
        uri,
        f"models:/{name}/{version.version}",
        name=name,
        version=str(version.version),
        alias=match["alias"],
        source_run_id=version.run_id,
        model_id=logged["model_id"] if logged else None,
        tags=dict(version.tags),
    )


def download_model(ref: ModelRef, dst: Path, tracking_uri: str) -> ModelFiles:
    """Download the model's files to ``dst``; read where they are from its MLmodel file."""
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=ref.download_uri, dst_path=str(dst), tracking_uri=tracking_uri
            )
        )
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelNotFound(f"{ref.uri}: cannot download the model ({first})") from None
    flavor = mlflow.models.Model.load(str(local)).flavors.get("python_function", {})
    stored = flavor.get("artifacts", {})
    missing = [key for key in (WEIGHTS, CONFIG, CLASS_NAMES) if key not in stored]
    if missing:
        raise ModelNotFound(f"{ref.uri}: not a promoted ActionFormer model (no {missing} artifacts)")
    return ModelFiles(*(local / stored[key]["path"] for key in (WEIGHTS, CONFIG, CLASS_NAMES)))
