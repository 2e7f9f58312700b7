"""``python -m runner.evaluate MODEL_URI [--subset validation] [--set KEY=VALUE ...] --out DIR``

Final evaluation of a promoted model (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
``models:/m-ID`` or ``runs:/RUN_ID/PATH``): whole-video inference on a subset with the model's
own weights (EMA, as the trial's evaluation used) and config (``--set`` overrides any key, for
example data paths; ``--set tracking.uri=URI`` names the tracking store), then in DIR:

- ``predictions.json``: detections in the ActivityNet submission format;
- ``metrics.json``: the trainer's keys (``{"average_mAP": ..., "mAP": {"0.50": ...}, ...}``);
- ``per_class_ap.csv``, ``map_per_tiou.png``, ``per_class_ap.png`` (classes sorted by AP);
- ``evaluation.json``: which model, which subset, and which subset selected the model.

The same files and metrics go to an MLflow run (tag ``runner.role=evaluation``) in the model's
experiment. Where the subset has no labelled instances (FineAction's test subset) only the
submission file is written and no mAP is computed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from localization import api
from localization.api import (
    ConfigError,
    DetectionMetrics,
    RunConfig,
    add_set_argument,
    apply_overrides,
    config_from_dict,
    format_table,
    metrics_as_floats,
    read_yaml,
    run_command,
    set_torch_threads,
    tiou_key,
    write_json,
)
from runner import registry
from runner.names import (
    MODEL_ALIAS,
    MODEL_NAME,
    MODEL_URI,
    MODEL_VERSION,
    PARENT,
    ROLE,
    ROLE_EVALUATION,
    SELECTION,
    SELECTION_SUBSET,
    SELECTION_WARNING,
    SOURCE_RUN_ID,
    SUBSET,
)
from runner.searchfile.selection import Selection, describe_selection
from runner.searchfile.spec import check_tracking_uri
from runner.tracking.mlflow_store import resolve_store


def model_config(files: registry.ModelFiles, overrides: list[str]) -> RunConfig:
    """The model's stored run config with ``--set`` overrides (data paths, post-processing, ...);
    the ``model`` section must stay as stored: the weights only fit that architecture."""
    raw = read_yaml(files.config)
    stored = config_from_dict(raw, str(files.config))
    apply_overrides(raw, overrides)
    cfg = config_from_dict(raw, "--set")
    if cfg.model != stored.model:
        raise ConfigError("--set: model.*: the model section cannot change (the weights fit the stored one)")
    return cfg


def split_overrides(overrides: list[str], tracking_uri: str | None) -> tuple[list[str], str | None]:
    """``--set`` items for the model's run config, and the tracking URI (``--set tracking.uri=...``
    wins over ``--tracking-uri``); ``tracking.uri`` is the only runner setting evaluation takes."""
    run_overrides, tracking = [], {}
    for item in overrides:
        if item.strip().startswith("tracking."):
            apply_overrides(tracking, [item])
        else:
            run_overrides.append(item)
    settings = tracking.get("tracking", {})
    unknown = sorted(set(settings) - {"uri"})
    if unknown:
        raise ConfigError(f"--set: tracking.{unknown[0]}: runner.evaluate takes only tracking.uri")
    uri = settings.get("uri", tracking_uri)
    check_tracking_uri(uri, "--set")
    return run_overrides, uri


def selection_of(client: MlflowClient, ref: registry.ModelRef) -> Selection | None:
    """How the model's trial was selected, read from its run and search; None when unknown."""
    if ref.source_run_id is None:
        return None
    try:
        run = client.get_run(ref.source_run_id)
        parent_id = run.data.tags.get(PARENT)
        parent_tags = client.get_run(parent_id).data.tags if parent_id else {}
    except MlflowException:
        return None
    return describe_selection(run.data.params, parent_tags)


def write_per_class_csv(path: Path, metrics: DetectionMetrics) -> None:
    """One row per class with ground truth: AP at each tIoU and their mean, in percent."""
    keys = [tiou_key(t) for t in metrics.tiou_thresholds]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", *(f"AP@{k}" for k in keys), "average_AP"])
        for name, ap in zip(metrics.class_names, metrics.ap * 100, strict=True):  # ap: (T,) percent
            writer.writerow([name, *(f"{v:.6f}" for v in ap), f"{ap.mean():.6f}"])


def plot_map_per_tiou(path: Path, metrics: DetectionMetrics, title: str) -> None:
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(metrics.tiou_thresholds, metrics.mAP, marker="o")
    ax.axhline(metrics.average_mAP, linestyle="--", color="gray", label=f"average {metrics.average_mAP:.2f}")
    ax.set(xlabel="tIoU threshold", ylabel="mAP (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)


def plot_per_class_ap(path: Path, metrics: DetectionMetrics, title: str) -> None:
    """Horizontal bars of each class's AP averaged over tIoU, best class on top."""
    mean_ap = metrics.ap.mean(axis=1) * 100  # (K,) percent
    order = np.argsort(mean_ap, kind="stable")  # ascending: barh draws bottom-up
    fig = Figure(figsize=(7, max(3.0, 0.16 * len(order) + 1.2)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(np.arange(len(order)), mean_ap[order])
    ax.set_yticks(np.arange(len(order)), [metrics.class_names[i] for i in order], fontsize=6)
    ax.set(xlabel="AP averaged over tIoU (%)", title=title, ylim=(-0.5, len(order) - 0.5))
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=120)


def write_outputs(out: Path, result: api.EvalResult, summary: dict[str, Any]) -> list[Path]:
    """Write every file of the evaluation in ``out``; returns them (what the MLflow run holds)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "predictions.json", result.predictions)
    write_json(out / "evaluation.json", summary)
    if result.metrics is None:
        return [out / "predictions.json", out / "evaluation.json"]
    write_json(out / "metrics.json", result.metrics.to_json())
    write_per_class_csv(out / "per_class_ap.csv", result.metrics)
    name = summary["model"]
    plot_map_per_tiou(out / "map_per_tiou.png", result.metrics, f"{name} on {summary['subset']}")
    plot_per_class_ap(out / "per_class_ap.png", result.metrics, f"{name} on {summary['subset']}: per class")
    return [
        out / file
        for file in (
            "predictions.json",
            "evaluation.json",
            "metrics.json",
            "per_class_ap.csv",
            "map_per_tiou.png",
            "per_class_ap.png",
        )
    ]


def log_evaluation_run(
    client: MlflowClient, ref: registry.ModelRef, files: list[Path], result: api.EvalResult, summary: dict[str, Any]
) -> str:
    """An MLflow run holding the evaluation, in the experiment of the model's training run."""
    experiment_id = None
    if ref.source_run_id is not None:
        try:
            experiment_id = client.get_run(ref.source_run_id).info.experiment_id
        except MlflowException:
            experiment_id = None  # the training run was deleted: the default experiment
    tags = {
        ROLE: ROLE_EVALUATION,
        MODEL_URI: ref.uri,
        SUBSET: summary["subset"],
        MODEL_NAME: ref.name or "",
        MODEL_VERSION: ref.version or "",
        MODEL_ALIAS: ref.alias or "",
        SOURCE_RUN_ID: ref.source_run_id or "",
        SELECTION_SUBSET: summary["selected_on_subset"] or "unknown",
        SELECTION: summary["selected_on"] or "unknown",
    }
    if summary["warning"]:
        tags[SELECTION_WARNING] = summary["warning"]
    label = f"{ref.name} v{ref.version}" if ref.version else ref.uri
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"evaluate {label} on {summary['subset']}", tags=tags
    ) as run:
        mlflow.log_params(
            {"model_uri": ref.uri, "subset": summary["subset"], "overrides": json.dumps(summary["overrides"])}
        )
        if result.metrics is not None:
            mlflow.log_metrics(metrics_as_floats(result.metrics), model_id=ref.model_id)
        for path in files:
            mlflow.log_artifact(str(path))
    return run.info.run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.evaluate", description=__doc__.split("\n\n")[1])
    parser.add_argument("model_uri", help="models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-ID or runs:/ID/PATH")
    parser.add_argument("--subset", default="validation", help="subset to evaluate (default: validation)")
    add_set_argument(parser)
    parser.add_argument("--out", required=True, type=Path, help="folder for the evaluation files")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the embedded store mlflow/mlflow.db)",
    )
    args = parser.parse_args(argv)

    run_overrides, tracking_uri = split_overrides(args.overrides, args.tracking_uri)
    client = registry.use_store(resolve_store(tracking_uri, Path.cwd()))
    uri = client.tracking_uri
    ref = registry.resolve_model(client, args.model_uri)
    with tempfile.TemporaryDirectory(prefix="evaluate-") as tmp:
        files = registry.download_model(ref, Path(tmp), uri)
        cfg = model_config(files, run_overrides)
        if cfg.train.num_threads > 0:  # as the trial ran: float sums, hence mAP, match to the last digit
            set_torch_threads(cfg.train.num_threads)
        result = api.evaluate_checkpoint(cfg, files.weights, args.subset)  # EMA weights, the model's post-processing

    selection = selection_of(client, ref)
    warning = selection.warning_for(args.subset) if selection else None
    summary = {
        "model": f"{ref.name} v{ref.version}" if ref.version else ref.uri,
        "model_uri": ref.uri,
        "model_name": ref.name,
        "model_version": ref.version,
        "model_alias": ref.alias,
        "source_run_id": ref.source_run_id,
        "subset": args.subset,
        "overrides": run_overrides,
        "selected_on_subset": selection.subset if selection else None,
        "selected_on": selection.description if selection else None,
        "warning": warning,
        "average_mAP": result.metrics.average_mAP if result.metrics else None,
    }
    files_written = write_outputs(args.out, result, summary)
    run_id = log_evaluation_run(client, ref, files_written, result, summary)

    print(f"model {summary['model']} ({ref.uri}, trained in MLflow run {ref.source_run_id}) on {args.subset!r}")
    print(f"selected on: {summary['selected_on'] or 'unknown (no training run recorded)'}")
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if result.metrics is None:
        print(
            f"{args.subset!r} has no labelled instances: wrote the submission file "
            f"{args.out / 'predictions.json'}; no mAP can be computed"
        )
    else:
        print(format_table(result.metrics))
    print(f"files in {args.out}; MLflow evaluation run {run_id}")
    return 0


if __name__ == "__main__":
    run_command(main)
