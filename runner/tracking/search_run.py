"""The search's parent run: created with its tags, options and search file; found again on
``--resume``; its child runs listed, closed or dropped. Only the driver writes (one writer per
SQLite database). The names are runner.names' (the MLflow layout contract).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from localization.api import to_dict
from runner.names import (
    METRIC,
    MODE,
    NUM_SAMPLES,
    PARENT,
    RAY_PATH,
    ROLE,
    ROLE_SEARCH,
    SEARCH_FILE,
    SEARCH_PARAM_PREFIX,
    SEARCH_SPACE_DIR,
    SEARCHER,
    SELECTION,
    SPEC_HASH,
    STATUS,
    TRIAL_ID,
    source_tags,
)
from runner.searchfile.spec import SearchFile
from runner.tracking.dataset_input import dataset_input

PARAM_VALUE_LIMIT = 6000  # MLflow's longest param value
PARAM_BATCH = 100  # MLflow's most params per log_batch call


def start_parent(client: MlflowClient, exp_id: str, spec: SearchFile, ray_path: Path, searcher: str) -> str:
    """Create the search's parent run with its tags, options and the search file."""
    tags = {
        ROLE: ROLE_SEARCH,
        SEARCH_FILE: str(spec.path),
        RAY_PATH: str(ray_path),
        SEARCHER: searcher,
        METRIC: spec.search.metric,
        MODE: spec.search.mode,
        NUM_SAMPLES: str(spec.search.num_samples),
        STATUS: "running",
        SPEC_HASH: spec_hash(spec),
        **source_tags(spec.path),
    }
    if spec.search.selection is not None:  # read back by runner.searchfile.selection.describe_selection
        tags[SELECTION] = json.dumps(to_dict(spec.search.selection))
    run = client.create_run(exp_id, run_name=ray_path.name, tags=tags)
    run_id = run.info.run_id
    options = {f"{SEARCH_PARAM_PREFIX}{k}": v for k, v in flatten_options(spec).items()}
    log_params(client, run_id, options)
    client.log_inputs(run_id, datasets=[dataset_input(spec.base.data)])  # the recipe's data
    client.log_artifact(run_id, str(spec.path), SEARCH_SPACE_DIR)
    if spec.base_path is not None:  # the run config the search file starts from
        client.log_artifact(run_id, str(spec.base_path), SEARCH_SPACE_DIR)
    return run_id


def spec_hash(spec: SearchFile) -> str:
    """A fingerprint of the resolved search file: --resume refuses a file that changed."""
    text = json.dumps(spec.resolved(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten_options(spec: SearchFile) -> dict[str, Any]:
    """The search section (without the space) plus each space entry's spelling, flat."""
    out: dict[str, Any] = {}
    for key, value in to_dict(spec.search).items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    out.update({f"space.{p.key}": p.describe() for p in spec.space.params})
    if spec.postprocess is not None:
        out["postprocess.trials"] = spec.postprocess.trials
        out.update({f"postprocess.space.{p.key}": p.describe() for p in spec.postprocess.space.params})
    return out


def find_parent(client: MlflowClient, exp_id: str, ray_path: Path) -> str | None:
    """The parent run of the search stored at ``ray_path`` (for --resume)."""
    runs = client.search_runs(
        [exp_id], f"tags.`{ROLE}` = '{ROLE_SEARCH}' and tags.`{RAY_PATH}` = '{ray_path}'", max_results=1
    )
    return runs[0].info.run_id if runs else None


def child_runs(client: MlflowClient, exp_id: str, parent_id: str) -> list[Any]:
    """Every child run of a parent, oldest first (the order the trials started)."""
    runs = client.search_runs(
        [exp_id], f"tags.`{PARENT}` = '{parent_id}'", max_results=10000, order_by=["attributes.start_time ASC"]
    )
    return list(runs)


def close_open_children(client: MlflowClient, exp_id: str, parent_id: str) -> int:
    """End children still RUNNING (an interrupted search) as KILLED; returns how many."""
    count = 0
    for run in child_runs(client, exp_id, parent_id):
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, STATUS, "interrupted")
            client.set_terminated(run.info.run_id, "KILLED")
            count += 1
    return count


def drop_orphans(client: MlflowClient, exp_id: str, parent_id: str, trial_ids: set[str]) -> int:
    """Delete RUNNING child runs of trials the resumed Ray experiment does not know; returns how many.

    A trial started after Ray's last experiment snapshot before a crash is not restored: the
    restored searcher proposes it again under a new trial id (a new run), so the old run is a
    duplicate of work redone, not a trial of the search.
    """
    count = 0
    for run in child_runs(client, exp_id, parent_id):
        if run.info.status == "RUNNING" and run.data.tags.get(TRIAL_ID) not in trial_ids:
            client.delete_run(run.info.run_id)
            count += 1
    return count


def log_params(client: MlflowClient, run_id: str, values: dict[str, Any]) -> None:
    """Every value as a param (JSON for non-strings), in batches MLflow accepts."""
    params = [Param(k, _param_text(v)) for k, v in values.items()]
    for start in range(0, len(params), PARAM_BATCH):
        client.log_batch(run_id, params=params[start : start + PARAM_BATCH])


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:PARAM_VALUE_LIMIT]
