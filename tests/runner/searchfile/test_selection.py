"""Honest selection end to end: ``search.selection`` makes a real search train on part of
the training subset and score trials on the held-out rest; promotion and evaluation say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from localization.api import exit_status
from localization.data.synthetic import generate
from runner import evaluate, promote, search
from runner.searchfile.selection import holdout_split
from tests.promotable_search import POSTPROCESS

SELECTION = {"holdout_fraction": 0.25, "seed": 3}


@pytest.fixture(scope="module")
def selected(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("selection")
    raw = yaml.safe_load(generate(root / "data", seed=0, videos=16).read_text())
    raw["model"].update(embd_dim=16, fpn_dim=16, head_dim=16)
    raw["train"].update(epochs=2, warmup_epochs=0, batch_size=4, ema_decay=0.9)
    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    raw.update(
        experiment="selection",
        resources={"cpu": 1, "gpu": 0},
        tracking={"uri": uri, "model_name": "af-selection"},
        search={
            "num_samples": 2,
            "max_concurrent": 2,
            "sampler": "random",
            "scheduler": {"type": "fifo"},
            "selection": SELECTION,
            "space": {"train.lr": {"loguniform": [1.0e-3, 4.0e-3]}},
            "postprocess": POSTPROCESS,  # chosen on the held-out slice too (the trial's scored videos)
        },
    )
    path = root / "search.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    lines: list[str] = []
    outcome = search.run(path, storage_path=root / "ray_results", echo=lines.append)
    return {
        "root": root,
        "path": path,
        "uri": uri,
        "outcome": outcome,
        "out": "\n".join(lines),
        "annotations": Path(raw["data"]["annotations"]),
    }


def test_trials_train_on_the_rest_and_are_scored_on_the_held_out_slice(selected: dict) -> None:
    outcome = selected["outcome"]
    assert outcome.status == "finished"
    database = json.loads(selected["annotations"].read_text())["database"]
    training = [vid for vid, entry in database.items() if entry["subset"] == "training"]
    expected_train, expected_holdout = holdout_split(training, SELECTION["holdout_fraction"], SELECTION["seed"])

    client = MlflowClient(selected["uri"])
    parent = client.get_run(outcome.parent_run_id)
    assert json.loads(parent.data.tags["runner.selection"]) == SELECTION
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'")
    assert len(children) == 2
    folder = outcome.ray_path / "selection"
    for child in children:
        params = child.data.params
        assert params["data.val_subset"] == "training"  # scored on training videos ...
        assert Path(params["data.train_videos"]) == folder / "train_videos.txt"
        assert Path(params["data.val_videos"]) == folder / "val_videos.txt"
        history = client.get_metric_history(child.info.run_id, "average_mAP")  # the evaluated epochs
        assert history and child.data.metrics["best_average_mAP"] == max(m.value for m in history)
        assert "postprocess.test.nms_sigma" in child.data.tags  # chosen on the held-out slice
    trained = Path(children[0].data.params["data.train_videos"]).read_text().split()
    held_out = Path(children[0].data.params["data.val_videos"]).read_text().split()
    assert trained == expected_train and held_out == expected_holdout  # ... never trained on
    assert held_out and not set(held_out) & set(trained) and sorted(trained + held_out) == sorted(training)
    assert "selection: trials are scored on 25% of 'training' held out" in selected["out"]


def test_promotion_and_evaluation_state_the_selection(
    selected: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_status(promote.main, [str(selected["path"])]) == 0
    client = MlflowClient(selected["uri"], selected["uri"])
    version = client.get_model_version_by_alias("af-selection", "champion")
    assert version.tags["selection_subset"] == "training"
    assert version.tags["selection"] == "a held-out slice of 'training' (25%, seed 3), not trained on"
    capsys.readouterr()

    argv = [
        "models:/af-selection@champion",
        "--subset",
        "validation",
        "--out",
        str(tmp_path / "val"),
        "--tracking-uri",
        selected["uri"],
    ]
    assert exit_status(evaluate.main, argv) == 0
    captured = capsys.readouterr()
    assert "selected on: a held-out slice of 'training' (25%, seed 3), not trained on" in captured.out
    assert "warning" not in captured.err  # validation was left untouched by the selection

    argv = [
        "models:/af-selection@champion",
        "--subset",
        "training",
        "--out",
        str(tmp_path / "train"),
        "--tracking-uri",
        selected["uri"],
    ]
    assert exit_status(evaluate.main, argv) == 0
    assert "the videos being evaluated: this mAP is optimistic" in capsys.readouterr().err
