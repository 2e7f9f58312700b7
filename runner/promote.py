"""``python -m runner.promote SEARCH.yaml [--set KEY=VALUE] [--run-id ID] [--parent ID] [--alias A] [--allow-partial]``

Promotes the best trial of a finished search, read from MLflow itself (not from Ray's files): its
best checkpoint becomes a pickle-free MLflow model (``runner.registry``), registered as a new
version of ``tracking.model_name`` with lineage tags, and the alias (default ``champion``) is
pointed at it. Prints the model URI, e.g. ``models:/actionformer-fineaction@champion``.

A search that is still running, stopped short of ``num_samples`` trials, or has failed trials is
refused (one line saying what is missing, exit 2) unless ``--allow-partial``: a model promoted
from half a search is rarely what anyone meant.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Experiment, Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from localization.api import InputError, add_set_argument, config_from_dict, read_yaml, run_command
from runner import registry
from runner.names import (
    BEST_EPOCH,
    CHECKPOINT_ARTIFACT,
    CONFIG_ARTIFACT,
    FAILURE,
    METRIC,
    MODE,
    NUM_SAMPLES,
    PARENT,
    REPEAT_OF,
    ROLE,
    ROLE_SEARCH,
    ROLE_TRIAL,
    SEARCH_FILE,
    STATUS,
    TRIAL_ID,
    best_metric,
)
from runner.searchfile.selection import describe_selection
from runner.searchfile.spec import SearchFile, load_search_file
from runner.tracking.mlflow_store import resolve_store
from runner.tracking.report import mean_and_spread, repeat_scores

DONE = ("finished", "pruned")  # runner.status values of trials that count towards num_samples


class PromotionRefused(InputError):
    """The search or run cannot be promoted (unfinished, no runs, no checkpoint)."""


@dataclass
class RecordedSearch:
    """One search as MLflow recorded it: its parent run and the trial (child) runs."""

    experiment: Experiment
    parent: Run
    children: list[Run]
    metric: str  # e.g. "average_mAP"; trial runs carry it as the summary metric best_<metric>
    mode: str  # "max" | "min"
    num_samples: int

    @property
    def summary_metric(self) -> str:
        return best_metric(self.metric)


def _status(run: Run) -> str:
    """The trial's end status per the layout contract (tag runner.status), else MLflow's."""
    return run.data.tags.get(STATUS, run.info.status.lower())


def find_search(client: MlflowClient, spec: SearchFile, parent_id: str | None = None) -> RecordedSearch:
    """The latest search (parent run) of the file's experiment, or ``parent_id``, with its trials."""
    experiment = _get_experiment(client, spec)
    if parent_id is not None:
        parent = _get_run(client, parent_id, experiment)
        if parent.data.tags.get(ROLE) != ROLE_SEARCH:
            raise PromotionRefused(f"run {parent_id}: not a search's parent run (tag runner.role != search)")
    else:
        parents = client.search_runs(
            [experiment.experiment_id],
            f"tags.`{ROLE}` = '{ROLE_SEARCH}'",
            order_by=["attribute.start_time DESC"],
            max_results=1,
        )
        if not parents:
            raise PromotionRefused(
                f"{spec.source}: experiment {spec.experiment!r} has no search run "
                f"in {client.tracking_uri} (run the search first)"
            )
        parent = parents[0]
    trials = f"tags.`{PARENT}` = '{parent.info.run_id}' and tags.`{ROLE}` = '{ROLE_TRIAL}'"
    children = _search_all(client, experiment.experiment_id, trials)
    tags = parent.data.tags
    # The parent's tags record what the search actually ran (--num-samples may override the file).
    num_samples = int(tags.get(NUM_SAMPLES, spec.search.num_samples))
    return RecordedSearch(
        experiment,
        parent,
        children,
        tags.get(METRIC, spec.search.metric),
        tags.get(MODE, spec.search.mode),
        num_samples,
    )


def _get_experiment(client: MlflowClient, spec: SearchFile) -> Experiment:
    experiment = client.get_experiment_by_name(spec.experiment)
    if experiment is None:
        raise PromotionRefused(
            f"{spec.source}: experiment {spec.experiment!r} has no runs in {client.tracking_uri} (run the search first)"
        )
    return experiment


def _search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _get_run(client: MlflowClient, run_id: str, experiment: Experiment) -> Run:
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise PromotionRefused(f"run {run_id}: not found in {client.tracking_uri}") from None
    if run.info.experiment_id != experiment.experiment_id:
        raise PromotionRefused(f"run {run_id}: belongs to another experiment than {experiment.name!r}")
    return run


def unfinished_reasons(record: RecordedSearch) -> list[str]:
    """What keeps the search from counting as finished; empty when it is complete."""
    reasons = []
    parent_status = record.parent.data.tags.get(STATUS)
    if record.parent.info.status == "RUNNING":
        reasons.append("the search is still running")
    elif parent_status not in (None, "finished"):
        reasons.append(f"the search ended {parent_status}")
    running = [r for r in record.children if r.info.status == "RUNNING"]
    ended = [r for r in record.children if r.info.status != "RUNNING"]
    failed = [r for r in ended if _status(r) == "failed" or r.info.status == "FAILED"]
    stopped = [r for r in ended if r not in failed and _status(r) not in DONE]  # e.g. interrupted
    done = len(ended) - len(failed) - len(stopped)
    if running:
        reasons.append(f"{len(running)} trial(s) still running ({_trial_ids(running)})")
    if failed:
        reasons.append(f"{len(failed)} trial(s) failed ({_trial_ids(failed, with_reason=True)})")
    if stopped:
        reasons.append(f"{len(stopped)} trial(s) ended {_status(stopped[0])} ({_trial_ids(stopped)})")
    if done < record.num_samples:
        reasons.append(f"only {done} of {record.num_samples} trials finished or pruned")
    return reasons


def _trial_ids(runs: list[Run], with_reason: bool = False) -> str:
    items = []
    for run in runs[:5]:
        item = run.data.tags.get(TRIAL_ID, run.info.run_id)
        if with_reason and FAILURE in run.data.tags:
            item += f": {run.data.tags[FAILURE][:80]}"
        items.append(item)
    return ", ".join(items) + (", ..." if len(runs) > 5 else "")


def best_child(record: RecordedSearch) -> Run:
    """The finished or pruned trial with the best ``best_<metric>`` (ties: the earlier trial).

    With ``search.repeat_top`` repeats, the repeated trial whose config has the best mean over its
    seeds instead: one lucky seed should not pick the model.
    """
    candidates = [
        r
        for r in record.children
        if _status(r) in DONE and r.info.status != "RUNNING" and record.summary_metric in r.data.metrics
    ]
    if not candidates:
        raise PromotionRefused(
            f"search run {record.parent.info.run_id}: no finished trial has the metric "
            f"{record.summary_metric} (nothing to promote)"
        )
    sign = -1.0 if record.mode == "max" else 1.0
    scores = repeat_scores(
        [
            (r.data.tags.get(TRIAL_ID, ""), r.data.tags.get(REPEAT_OF), r.data.metrics[record.summary_metric])
            for r in candidates
        ]
    )
    if scores:
        repeated = [r for r in candidates if r.data.tags.get(TRIAL_ID) in scores and REPEAT_OF not in r.data.tags]
        return min(
            repeated, key=lambda r: (sign * mean_and_spread(scores[r.data.tags[TRIAL_ID]])[0], r.info.start_time)
        )
    return min(candidates, key=lambda r: (sign * r.data.metrics[record.summary_metric], r.info.start_time))


def lineage_tags(record: RecordedSearch, run: Run, config_yaml: Path, partial: bool) -> dict[str, str]:
    """Where the promoted weights come from: enough to find the search, the trial and the data."""
    cfg = config_from_dict(read_yaml(config_yaml), str(config_yaml))
    annotations = Path(cfg.data.annotations)
    # The annotation file is hashed where this command runs (paths are relative to the cwd); a
    # missing file is recorded rather than fatal, since promotion may run away from the data.
    digest = (
        registry.sha256_file(annotations) if annotations.is_file() else "unavailable (file not found where promoted)"
    )
    selection = describe_selection(run.data.params, record.parent.data.tags)
    return {
        "experiment_id": record.experiment.experiment_id,
        "experiment_name": record.experiment.name,
        "parent_run_id": record.parent.info.run_id,
        "child_run_id": run.info.run_id,
        "trial_id": run.data.tags.get(TRIAL_ID, ""),
        "metric": record.summary_metric,
        "metric_value": repr(run.data.metrics[record.summary_metric]),
        "best_epoch": run.data.tags.get(BEST_EPOCH, ""),
        "data.features": json.dumps(cfg.data.features),
        "data.annotations": str(annotations),
        "data.annotations_sha256": digest,
        "selection_subset": selection.subset,
        "selection": selection.description,
        "search_file": record.parent.data.tags.get(SEARCH_FILE, ""),
        "search_complete": str(not partial).lower(),
    }


def promote_run(
    client: MlflowClient, record: RecordedSearch, run: Run, *, model_name: str, alias: str, partial: bool
) -> ModelVersion:
    """Log ``run``'s best checkpoint as a model, register it under ``model_name``, set ``alias``."""
    if run.info.status == "RUNNING" or _status(run) not in DONE:
        raise PromotionRefused(
            f"run {run.info.run_id}: trial is {_status(run)}, only finished or pruned trials can be promoted"
        )
    if record.summary_metric not in run.data.metrics:
        raise PromotionRefused(f"run {run.info.run_id}: has no metric {record.summary_metric}")
    with tempfile.TemporaryDirectory(prefix="promote-") as tmp:
        work = Path(tmp)
        downloaded = {}
        for artifact in (CHECKPOINT_ARTIFACT, CONFIG_ARTIFACT):
            try:
                downloaded[artifact] = Path(
                    mlflow.artifacts.download_artifacts(
                        run_id=run.info.run_id,
                        artifact_path=artifact,
                        dst_path=str(work / "download"),
                        tracking_uri=client.tracking_uri,
                    )
                )
            except (MlflowException, OSError):
                raise PromotionRefused(f"run {run.info.run_id}: has no artifact {artifact}") from None
        tags = lineage_tags(record, run, downloaded[CONFIG_ARTIFACT], partial)
        files = registry.export_model_files(
            downloaded[CHECKPOINT_ARTIFACT], downloaded[CONFIG_ARTIFACT], work / "model"
        )
        model_uri = registry.log_model(
            client, files, experiment_id=record.experiment.experiment_id, source_run_id=run.info.run_id, tags=tags
        )
        return registry.register(client, model_uri, model_name, alias, tags)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.promote", description=__doc__.split("\n\n")[1])
    parser.add_argument("search_file", type=Path, help="the search-space YAML the search ran")
    parser.add_argument("--run-id", help="promote this trial run instead of the best one")
    parser.add_argument("--parent", help="the search's parent run id (default: the latest search)")
    parser.add_argument("--alias", default="champion", help="alias to point at the new version")
    parser.add_argument(
        "--allow-partial", action="store_true", help="promote from an unfinished, interrupted or partly failed search"
    )
    add_set_argument(parser)  # any key of the search file, e.g. --set tracking.uri=http://host:5000
    args = parser.parse_args(argv)

    spec = load_search_file(args.search_file, args.overrides)
    client = registry.use_store(resolve_store(spec.tracking.uri, Path.cwd()))
    run = None
    parent_id = args.parent
    if args.run_id:
        run = _get_run(client, args.run_id, _get_experiment(client, spec))
        parent_id = run.data.tags.get(PARENT)
        if parent_id is None:
            raise PromotionRefused(f"run {args.run_id}: not a trial of a search (no parent run)")
    record = find_search(client, spec, parent_id)
    reasons = unfinished_reasons(record)
    if reasons and not args.allow_partial:
        raise PromotionRefused(
            f"search run {record.parent.info.run_id} of experiment "
            f"{record.experiment.name!r} is not finished: {'; '.join(reasons)} "
            f"(pass --allow-partial to promote anyway)"
        )
    if reasons:
        print(f"warning: promoting from a partial search: {'; '.join(reasons)}", file=sys.stderr)
    run = run or best_child(record)
    version = promote_run(
        client, record, run, model_name=spec.tracking.model_name, alias=args.alias, partial=bool(reasons)
    )
    print(
        f"promoted trial {run.data.tags.get(TRIAL_ID, '?')} (MLflow run {run.info.run_id}, "
        f"{record.summary_metric} {run.data.metrics[record.summary_metric]:.4f}) as "
        f"{spec.tracking.model_name} version {version.version}, alias {args.alias!r}"
    )
    print(f"models:/{spec.tracking.model_name}@{args.alias}")
    return 0


if __name__ == "__main__":
    run_command(main)
