"""The MLflow run of one feature extraction: its settings and checkpoint as params, throughput and
failures as metrics, the manifest and settings file as artifacts. No Ray here."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from localization.api import flatten
from runner.names import EXTRACTION_DIR, ROLE, ROLE_EXTRACTION, SOURCE_NAME, SOURCE_TYPE, STATUS
from runner.tracking.search_run import log_params


def start(client: MlflowClient, exp_id: str, record: dict, videos: Path, out: Path, command: str) -> str:
    """Create the run, tagged as an extraction, with every setting (``clip.stride``, ...,
    ``backbone.weights_sha256``) and the folders as params."""
    tags = {ROLE: ROLE_EXTRACTION, STATUS: "running", SOURCE_NAME: command, SOURCE_TYPE: "LOCAL"}
    run_id = client.create_run(exp_id, run_name=f"extract {out.name}", tags=tags).info.run_id
    log_params(client, run_id, {**flatten(record), "videos": str(videos), "out": str(out)})
    return run_id


def finish(client: MlflowClient, run_id: str, metrics: dict[str, float], files: list[Path], status: str) -> None:
    """Log the metrics and files, then close the run (FINISHED, or FAILED when ``status`` is not "finished")."""
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    for path in files:
        if path.exists():
            client.log_artifact(run_id, str(path), EXTRACTION_DIR)
    client.set_tag(run_id, STATUS, status)
    client.set_terminated(run_id, "FINISHED" if status == "finished" else "FAILED")
