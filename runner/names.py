"""The MLflow layout contract: every tag, param, metric and artifact name the runner writes or reads.

(The keys inside a checkpoint belong to the science: localization/training/checkpoints.py.)

The search (runner.recorder, runner.search_run, runner.search) writes these names; promotion,
final evaluation, the leaderboard and the pyfunc model read them. Spelling a name only here means
a writer and its readers cannot drift apart. Changing a value changes the layout of every store
written from then on: stores written before keep the old names.
"""

from __future__ import annotations

from pathlib import Path

# ---- Tags ---------------------------------------------------------------------------------------
PARENT = "mlflow.parentRunId"  # MLflow's own nesting tag
ROLE = "runner.role"  # "search" (parent), "trial" (child), "evaluation" (runner.evaluate)
STATUS = "runner.status"  # running | finished | pruned | failed | interrupted (and the parent's outcome)
FAILURE = "runner.failure"  # last line of a failed trial's error
TRIAL_ID = "runner.trial_id"
TRIAL_DIR = "runner.trial_dir"
SEARCHED_KEYS = "runner.searched_keys"  # comma-separated dotted keys the sampler chose
BEST_EPOCH = "runner.best_epoch"
POSTPROCESS_PREFIX = "postprocess."  # + test.<key>: the tuned post-processing of the best checkpoint
RETRIES = "runner.retries"
LAST_ERROR = "runner.last_error"
REPEAT_OF = "runner.repeat_of"  # a search.repeat_top run: the trial id whose config it re-trains
PLACEMENT_PREFIX = "runner."  # + each key of PLACEMENT: where a trial's worker ran
PLACEMENT = ("ray_node_id", "cuda_visible_devices")  # reported by each trial

# On the search's parent run
SEARCH_FILE = "runner.search_file"
RAY_PATH = "runner.ray_experiment_path"
SEARCHER = "runner.searcher"
METRIC = "runner.metric"
MODE = "runner.mode"
NUM_SAMPLES = "runner.num_samples"
SPEC_HASH = "runner.spec_hash"
SELECTION = "runner.selection"  # JSON of search.selection (honest selection settings)
BEST_TRIAL_ID = "runner.best_trial_id"
BEST_RUN_ID = "runner.best_run_id"

# On an evaluation run (runner.evaluate) and a registered model version (runner.promote)
MODEL_URI = "runner.model_uri"
SUBSET = "runner.subset"
MODEL_NAME = "runner.model_name"
MODEL_VERSION = "runner.model_version"
MODEL_ALIAS = "runner.model_alias"
SOURCE_RUN_ID = "runner.source_run_id"
SELECTION_SUBSET = "runner.selection_subset"
SELECTION_WARNING = "runner.selection_warning"

# On the experiment: what MLflow 3's UI shows for it. The value is the one the UI's own experiment-type
# selector writes for "custom model development" (mlflow/server/js: ExperimentKind.CUSTOM_MODEL_DEVELOPMENT);
# without it MLflow 3.17 opens the experiment on the GenAI overview (traces, latency, tokens).
EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_MODEL_TRAINING = "custom_model_development"
DATASET_CONTEXT = "mlflow.data.context"  # tag of a run's dataset input: "training"
SOURCE_NAME, SOURCE_TYPE = "mlflow.source.name", "mlflow.source.type"  # the runs table's Source column
NOTE = "mlflow.note.content"  # a run's Description in the UI: the parent's summary


def source_tags(search_file: Path | str) -> dict[str, str]:
    """Source of a search's runs as the UI shows it: the command that made them."""
    return {SOURCE_NAME: f"python -m runner.search {search_file}", SOURCE_TYPE: "LOCAL"}


# Values of ROLE
ROLE_SEARCH, ROLE_TRIAL, ROLE_EVALUATION = "search", "trial", "evaluation"

# ---- Params -------------------------------------------------------------------------------------
SEARCH_PARAM_PREFIX = "search."  # the parent's params: search.<option>, search.space.<key>
# A trial's params are its flattened run config: data.*, model.*, train.*, test.*

# ---- Metrics ------------------------------------------------------------------------------------
AVERAGE_MAP = "average_mAP"  # percent, as localization.api.metrics_as_floats names it (+ metric_key(tiou))
LOSS_METRICS = ("loss", "cls_loss", "reg_loss")
EPOCH_METRICS = (*LOSS_METRICS, "lr", "epoch_time_s")  # logged every epoch at step=epoch
POSTPROCESS_SECONDS = "postprocess_search_s"  # evaluated epochs: time of the post-processing search
# evaluated epochs: the epoch the training loop was on when that search ended (past the evaluated one:
# training went on meanwhile; one past the last: training had ended)
POSTPROCESS_TRAINING_EPOCH = "postprocess_training_epoch"
LOSS_HISTORY = "loss"  # the metric whose history says which epochs a run already logged


def best_metric(metric: str) -> str:
    """``best_<metric>``: a trial's summary metric (its best evaluated epoch), also on the parent."""
    return f"best_{metric}"


# ---- Artifacts ----------------------------------------------------------------------------------
SEARCH_SPACE_DIR = "search_space"  # the parent run's copy of the search file
BEST_CHECKPOINT_DIR = "checkpoints/best"  # a trial's best checkpoint.pt and config.yaml
PREDICTIONS_DIR = "predictions"
IMPORTANCE_DIR = "importance"  # the parent run's param_importance.json and .png (runner.importance)
BEST_PREDICTIONS_FILE = "validation_best.json"  # predictions/validation_best.json

# Files in a trial's checkpoint folder (Ray's checkpoint_NNNNNN/) and in checkpoints/best
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.yaml"
REPORT_FILE = "report.json"
PREDICTIONS_FILE = "predictions.json"
CHECKPOINT_ARTIFACT = f"{BEST_CHECKPOINT_DIR}/{CHECKPOINT_FILE}"
CONFIG_ARTIFACT = f"{BEST_CHECKPOINT_DIR}/{CONFIG_FILE}"

# ---- The logged model ---------------------------------------------------------------------------
LOGGED_MODEL_NAME = "actionformer"  # name of the model inside its source run
# Keys of the pyfunc model's artifacts (``context.artifacts``) and their file names.
WEIGHTS, CONFIG, CLASS_NAMES = "weights", "config", "class_names"
MODEL_FILE_NAMES = {WEIGHTS: "weights.pt", CONFIG: "config.yaml", CLASS_NAMES: "class_names.json"}

# ---- A feature extraction (runner.extract): one run per extraction --------------------------------
# params: the flattened extraction.json of the stream's folder (clip.stride, ..., backbone.weights_sha256:
# the checkpoint by content, "seeded" without one), videos and out
ROLE_EXTRACTION = "extraction"
EXTRACTION_METRICS = ("videos_ok", "videos_failed", "videos_skipped", "clips", "seconds", "videos_per_s", "clips_per_s")
EXTRACTION_DIR = "extraction"  # artifacts: the manifest and the settings file
