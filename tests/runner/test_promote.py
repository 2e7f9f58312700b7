"""runner.promote against a real SQLite MLflow store holding a search recorded per the layout
contract, with a real checkpoint from a tiny training run; and the holdout split
of runner.searchfile.selection.

The search records are written here by hand (not by runner.search), so each refusal can be set up
exactly: a running search, missing trials, a failed trial, no runs at all.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.entities import Param

from localization import cli
from localization.config.loading import dump_yaml, flatten, load_config
from localization.config.schema import RunConfig
from localization.data.synthetic import generate
from localization.errors import ConfigError
from localization.inference.evaluation import evaluate_checkpoint
from localization.training.loop import load_training_subset, train
from runner import promote
from runner.registry import CLASS_NAMES, CONFIG, WEIGHTS
from runner.searchfile.selection import describe_selection, holdout_split, write_selection

EXPERIMENT = "promote-test"
MODEL = "af-test"
# ema_decay 0.9: with the recipe's 0.999 the EMA weights barely move in a few steps (mAP 0).
TINY = [
    "train.epochs=2",
    "train.warmup_epochs=0",
    "train.num_threads=1",
    "train.batch_size=4",
    "train.lr=3.0e-3",
    "train.ema_decay=0.9",
]


@dataclass
class Trained:
    """One real tiny training run: what a trial's artifacts hold."""

    cfg: RunConfig
    config_path: Path  # the synthetic dataset's run config
    checkpoint: Path
    config_yaml: Path  # the resolved config, as checkpoints/best/config.yaml


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("trained")
    config_path = generate(root / "synthetic", seed=0, videos=32)
    cfg = load_config(config_path, TINY)
    result = train(cfg, root / "run", log=lambda _: None)
    config_yaml = root / "run" / "config.yaml"
    config_yaml.write_text(dump_yaml(cfg))
    return Trained(cfg, config_path, result.checkpoint, config_yaml)


@dataclass
class Store:
    uri: str
    search_file: Path


@pytest.fixture(scope="module")
def empty_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly created MLflow SQLite database (creating the schema takes seconds: done once)."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path: Path, trained: Trained, empty_database: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """An empty SQLite store and a search file pointing at it (run from tmp_path)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlflow").mkdir()
    shutil.copyfile(empty_database, tmp_path / "mlflow" / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    raw = yaml.safe_load(trained.config_path.read_text())
    space = {"train.lr": {"loguniform": [5.0e-4, 3.0e-3]}}
    raw.update(
        experiment=EXPERIMENT,
        search={"metric": "average_mAP", "mode": "max", "num_samples": 3, "space": space},
        tracking={"uri": uri, "model_name": MODEL},
    )
    search_file = tmp_path / "search.yaml"
    search_file.write_text(yaml.safe_dump(raw))
    return Store(uri, search_file)


def record_search(
    store: Store,
    trained: Trained,
    trials: list[tuple[str, float | None]],
    *,
    parent_status: str = "FINISHED",
    search_status: str = "finished",
    num_samples: int = 3,
    params: dict[str, str] | None = None,
    parent_tags: dict[str, str] | None = None,
) -> tuple[str, list[str]]:
    """Write one search per the layout contract; ``trials`` are (runner.status, best value).

    runner.status "running" leaves the trial's MLflow run RUNNING; "failed" ends it FAILED,
    "interrupted" KILLED, the others FINISHED.
    """
    client = MlflowClient(store.uri, store.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    artifacts = Path(store.uri.removeprefix("sqlite:///")).parent / "artifacts"
    exp_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri())
    )
    parent = client.create_run(
        exp_id,
        tags={
            "runner.role": "search",
            "runner.metric": "average_mAP",
            "runner.mode": "max",
            "runner.num_samples": str(num_samples),
            "runner.status": search_status,
            "runner.search_file": str(store.search_file),
            **(parent_tags or {}),
        },
    ).info.run_id
    children = []
    for index, (status, value) in enumerate(trials):
        run_id = client.create_run(
            exp_id,
            tags={
                "mlflow.parentRunId": parent,
                "runner.role": "trial",
                "runner.trial_id": f"trial_{index}",
                "runner.status": status,
                "runner.best_epoch": "2",
            },
        ).info.run_id
        values = {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in flatten(trained.cfg).items()}
        logged = [Param(k, v) for k, v in {**values, **(params or {})}.items()]
        for start in range(0, len(logged), 100):
            client.log_batch(run_id, params=logged[start : start + 100])
        if value is not None:
            client.log_metric(run_id, "best_average_mAP", value)
            client.log_artifact(run_id, str(trained.checkpoint), "checkpoints/best")
            client.log_artifact(run_id, str(trained.config_yaml), "checkpoints/best")
        if status != "running":
            end = {"failed": "FAILED", "interrupted": "KILLED"}.get(status, "FINISHED")
            client.set_terminated(run_id, end)
        children.append(run_id)
    if parent_status != "RUNNING":
        client.set_terminated(parent, parent_status)
    return parent, children


def run_promote(store: Store, *extra: str) -> int:
    """``python -m runner.promote`` in-process; returns the exit status."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run(promote.main, [str(store.search_file), *extra])
    return exit_info.value.code


def refusal(store: Store, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """Run a promotion that must be refused: exit 2, one line on stderr, no model registered."""
    assert run_promote(store, *extra) == 2
    err = capsys.readouterr().err.strip()  # MLflow may log INFO lines first (creating a store)
    assert "Traceback" not in err
    line = err.splitlines()[-1]
    assert line.startswith("error: ")
    assert not MlflowClient(store.uri, store.uri).search_registered_models()
    return line


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


def test_refuses_when_there_are_no_runs(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert "has no runs" in refusal(store, capsys)  # the experiment does not exist
    MlflowClient(store.uri, store.uri).create_experiment(EXPERIMENT)
    assert "has no search run" in refusal(store, capsys)  # the experiment holds no search
    client = MlflowClient(store.uri, store.uri)
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    empty = client.create_run(
        exp_id, tags={"runner.role": "search", "runner.status": "finished", "runner.num_samples": "0"}
    )
    client.set_terminated(empty.info.run_id)
    assert "no finished trial has the metric best_average_mAP" in refusal(store, capsys)


def test_refuses_a_running_search(store: Store, trained: Trained, capsys: pytest.CaptureFixture[str]) -> None:
    record_search(
        store,
        trained,
        [("finished", 10.0), ("running", None)],
        parent_status="RUNNING",
        search_status="running",
        num_samples=3,
    )
    err = refusal(store, capsys)
    assert "the search is still running" in err
    assert "1 trial(s) still running (trial_1)" in err
    assert "only 1 of 3 trials finished or pruned" in err
    assert "--allow-partial" in err


def test_refuses_missing_and_failed_trials_unless_allowed(
    store: Store, trained: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    _, children = record_search(
        store,
        trained,
        [("finished", 10.0), ("failed", None), ("interrupted", None)],
        search_status="interrupted",
        parent_status="KILLED",
        num_samples=4,
    )
    client = MlflowClient(store.uri, store.uri)
    client.set_tag(children[1], "runner.failure", "loss became nan at epoch 1")
    err = refusal(store, capsys)
    assert "the search ended interrupted" in err
    assert "1 trial(s) failed (trial_1: loss became nan at epoch 1)" in err
    assert "1 trial(s) ended interrupted (trial_2)" in err
    assert "only 1 of 4 trials finished or pruned" in err
    # a failed trial cannot be promoted even by id
    assert "trial is failed" in refusal(store, capsys, "--run-id", children[1], "--allow-partial")

    assert run_promote(store, "--allow-partial") == 0
    captured = capsys.readouterr()
    assert "warning: promoting from a partial search" in captured.err
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert version.run_id == children[0]
    assert version.tags["search_complete"] == "false"


# ---------------------------------------------------------------------------------------------
# Promotion: best trial, lineage, alias
# ---------------------------------------------------------------------------------------------


def test_promotes_the_best_trial_with_lineage_tags(
    store: Store, trained: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    trials = [("finished", 12.5), ("pruned", 31.25), ("finished", 20.0)]
    parent, children = record_search(store, trained, trials)
    assert run_promote(store) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"models:/{MODEL}@champion"

    client = MlflowClient(store.uri, store.uri)
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert str(version.version) == "1"
    assert version.run_id == children[1]  # the pruned trial had the best value: it still counts
    experiment = client.get_experiment_by_name(EXPERIMENT)
    annotations = Path(trained.cfg.data.annotations)
    assert version.tags == {
        "experiment_id": experiment.experiment_id,
        "experiment_name": EXPERIMENT,
        "parent_run_id": parent,
        "child_run_id": children[1],
        "trial_id": "trial_1",
        "metric": "best_average_mAP",
        "metric_value": "31.25",
        "best_epoch": "2",
        "data.features": json.dumps(trained.cfg.data.features),
        "data.annotations": str(annotations),
        "data.annotations_sha256": hashlib.sha256(annotations.read_bytes()).hexdigest(),
        "selection_subset": "validation",
        "selection": "the whole 'validation' subset",
        "search_file": str(store.search_file),
        "search_complete": "true",
    }
    # the trial run lists the model among its outputs and is still FINISHED
    child = client.get_run(children[1])
    assert child.info.status == "FINISHED"
    outputs = [output.model_id for output in child.outputs.model_outputs]
    assert outputs == [version.source.removeprefix("models:/")]

    # promoting again (another trial, another alias) adds versions; aliases move independently
    assert run_promote(store, "--run-id", children[2], "--alias", "challenger") == 0
    assert client.get_model_version_by_alias(MODEL, "challenger").run_id == children[2]
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert run_promote(store, "--run-id", children[2]) == 0
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "3"
    assert all(v.current_stage == "None" for v in client.search_model_versions(f"name = '{MODEL}'"))


def test_lineage_records_a_holdout_selection(store: Store, trained: Trained) -> None:
    params = {"data.val_subset": "training", "data.val_videos": "/runs/selection/val_videos.txt"}
    record_search(
        store,
        trained,
        [("finished", 1.0), ("finished", 2.0), ("finished", 3.0)],
        params=params,
        parent_tags={"runner.selection": json.dumps({"holdout_fraction": 0.1, "seed": 0})},
    )
    assert run_promote(store) == 0
    version = MlflowClient(store.uri, store.uri).get_model_version_by_alias(MODEL, "champion")
    assert version.tags["selection_subset"] == "training"
    assert version.tags["selection"] == "a held-out slice of 'training' (10%, seed 0), not trained on"


def test_min_mode_picks_the_lowest(store: Store, trained: Trained) -> None:
    raw = yaml.safe_load(store.search_file.read_text())
    raw["search"].update(metric="loss", mode="min")
    store.search_file.write_text(yaml.safe_dump(raw))
    _, children = record_search(store, trained, [("finished", None), ("finished", None), ("finished", None)])
    client = MlflowClient(store.uri, store.uri)
    parent = client.get_run(children[0]).data.tags["mlflow.parentRunId"]
    for tag in ("runner.metric", "runner.mode"):  # the parent's tags say what the search optimised
        client.set_tag(parent, tag, {"runner.metric": "loss", "runner.mode": "min"}[tag])
    for run_id, value in zip(children, (0.9, 0.4, 0.7), strict=True):
        client.log_metric(run_id, "best_loss", value)
        client.log_artifact(run_id, str(trained.checkpoint), "checkpoints/best")
        client.log_artifact(run_id, str(trained.config_yaml), "checkpoints/best")
    assert run_promote(store) == 0
    assert client.get_model_version_by_alias(MODEL, "champion").run_id == children[1]


# ---------------------------------------------------------------------------------------------
# The model loads without unpickling code, and predicts what the checkpoint predicts
# ---------------------------------------------------------------------------------------------


def _only_plain_values(value: object) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _only_plain_values(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_only_plain_values(v) for v in value)
    return isinstance(value, torch.Tensor | int | float | str | bool | type(None))


def test_model_loads_without_pickle(
    store: Store, trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_search(store, trained, [("finished", 1.0), ("finished", 2.0), ("finished", 3.0)])
    assert run_promote(store) == 0
    mlflow.set_tracking_uri(store.uri)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/1", dst_path=str(tmp_path / "model")))

    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert "python_model" not in flavor  # the cloudpickled-object key of non-code pyfunc models
    assert flavor["model_code_path"].endswith("actionformer_pyfunc.py")
    assert set(flavor["artifacts"]) == {WEIGHTS, CONFIG, CLASS_NAMES}

    weights = torch.load(local / flavor["artifacts"][WEIGHTS]["path"], weights_only=True)
    assert set(weights) == {"model", "ema", "config", "class_names", "input_dim", "epoch"}
    assert _only_plain_values(weights)
    original = torch.load(trained.checkpoint, weights_only=True)
    for key, tensor in original["ema"].items():
        assert torch.equal(weights["ema"][key], tensor)

    # MLflow refuses pickled pyfunc models unless this is true: keep it false and load.
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion", model_config={"subset": "validation"})
    expected = evaluate_checkpoint(trained.cfg, trained.checkpoint, "validation").predictions["results"]
    video_ids = sorted(expected)[:3]
    detections = pd.DataFrame([d.model_dump() for d in model.predict(video_ids)])
    assert len(detections)
    for video_id in video_ids:
        got = detections[detections.video_id == video_id]
        want = expected[video_id]
        assert len(got) == len(want)
        np.testing.assert_allclose(got[["t_start", "t_end"]].to_numpy(), [d["segment"] for d in want])
        np.testing.assert_allclose(got["score"].to_numpy(), [d["score"] for d in want])
        assert list(got["label"]) == [d["label"] for d in want]


# ---------------------------------------------------------------------------------------------
# Honest selection: the holdout split
# ---------------------------------------------------------------------------------------------


def test_holdout_split_is_disjoint_deterministic_and_sized() -> None:
    ids = [f"v_{i:08d}" for i in range(8440)]
    train_ids, holdout = holdout_split(ids, 0.1, seed=0)
    assert not set(train_ids) & set(holdout)
    assert sorted(train_ids + holdout) == ids
    assert len(holdout) == 844
    assert train_ids == [v for v in ids if v in set(train_ids)]  # input order kept
    # the same split from the same ids in any order; another seed gives another split
    shuffled = list(np.random.default_rng(1).permutation(ids))
    assert set(holdout_split(shuffled, 0.1, seed=0)[1]) == set(holdout)
    other = set(holdout_split(ids, 0.1, seed=1)[1])
    assert len(other) == 844 and other != set(holdout)
    # held-out videos stay held out when the subset grows (the hash ranks each id on its own)
    grown = holdout_split([*ids, *(f"w_{i}" for i in range(100))], 0.1, seed=0)[1]
    assert len(set(grown) & set(holdout)) > 0.9 * len(holdout)
    assert holdout_split(["a", "b"], 0.1, seed=0)[1] in (["a"], ["b"])  # at least one each side


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_holdout_split_rejects_bad_fractions(fraction: float) -> None:
    with pytest.raises(ConfigError, match="holdout_fraction"):
        holdout_split(["a", "b", "c"], fraction, seed=0)


def test_write_selection_splits_the_training_subset(trained: Trained, tmp_path: Path) -> None:
    overrides = write_selection(trained.cfg.data, 0.25, seed=3, out_dir=tmp_path / "selection")
    train_ids = (tmp_path / "selection" / "train_videos.txt").read_text().split()
    holdout = (tmp_path / "selection" / "val_videos.txt").read_text().split()
    annotations = json.loads(Path(trained.cfg.data.annotations).read_text())["database"]
    training = [vid for vid, entry in annotations.items() if entry["subset"] == "training"]
    assert (train_ids, holdout) == holdout_split(training, 0.25, seed=3)
    assert len(holdout) == round(0.25 * len(training)) and not set(holdout) & set(train_ids)
    assert overrides == [
        "data.val_subset=training",
        f"data.train_videos={(tmp_path / 'selection' / 'train_videos.txt').resolve()}",
        f"data.val_videos={(tmp_path / 'selection' / 'val_videos.txt').resolve()}",
    ]
    # the training loop trains on the one list and selects on the other
    cfg = load_config(trained.config_path, overrides)
    assert [v.video_id for v in load_training_subset(cfg).videos] == train_ids
    assert cfg.data.val_subset == "training" and Path(cfg.data.val_videos).read_text().split() == holdout


def test_selection_description_and_warnings() -> None:
    plain = describe_selection({"data.val_subset": "validation"}, {})
    assert plain.warning_for("validation") is not None and "optimistic" in plain.warning_for("validation")
    assert plain.warning_for("test") is None
    honest = describe_selection(
        {"data.val_subset": "training", "data.val_videos": "/x/val_videos.txt"},
        {"runner.selection": json.dumps({"holdout_fraction": 0.1, "seed": 0})},
    )
    assert honest.holdout
    assert honest.description == "a held-out slice of 'training' (10%, seed 0), not trained on"
    assert honest.warning_for("validation") is None
    assert honest.warning_for("training").startswith("the model was selected on a held-out slice of 'training'")
