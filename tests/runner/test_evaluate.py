"""End to end: a tiny real search (Ray + Optuna, SQLite MLflow), runner.promote, runner.evaluate.

The must-show of the promotion issue: promotion registers version 1 with the alias ``champion``
pointing at the best trial run, and evaluating ``models:/...@champion`` on the same subset with
the same post-processing reproduces that run's logged validation mAP (to 1e-6), with its files in
MLflow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from localization.api import exit_status
from runner import evaluate, promote, search
from tests.promotable_search import write_promotable_search

EXPERIMENT = "e2e-promote"
MODEL = "af-e2e"
EVALUATION_FILES = {
    "predictions.json",
    "metrics.json",
    "per_class_ap.csv",
    "map_per_tiou.png",
    "per_class_ap.png",
    "evaluation.json",
}


@dataclass
class Promoted:
    root: Path
    uri: str
    search_file: Path
    parent_id: str
    best_run_id: str  # the search's own answer (parent tag runner.best_run_id)


@pytest.fixture(scope="module")
def promoted(tmp_path_factory: pytest.TempPathFactory) -> Promoted:
    root = tmp_path_factory.mktemp("e2e")
    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    search_file = write_promotable_search(root, uri, EXPERIMENT, MODEL)
    outcome = search.run(search_file, storage_path=root / "ray_results", echo=lambda _: None)
    assert outcome.status == "finished"
    assert exit_status(promote.main, [str(search_file)]) == 0
    return Promoted(root, uri, search_file, outcome.parent_run_id, outcome.best.run_id)


def test_promotion_registers_version_1_of_the_best_trial(promoted: Promoted) -> None:
    client = MlflowClient(promoted.uri, promoted.uri)
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert str(version.version) == "1"
    children = client.search_runs(
        [client.get_experiment_by_name(EXPERIMENT).experiment_id], f"tags.`mlflow.parentRunId` = '{promoted.parent_id}'"
    )
    assert len(children) == 2
    best = max(children, key=lambda run: run.data.metrics["best_average_mAP"])
    assert version.run_id == best.info.run_id == promoted.best_run_id
    assert version.tags["parent_run_id"] == promoted.parent_id
    assert float(version.tags["metric_value"]) == best.data.metrics["best_average_mAP"]


def test_evaluation_reproduces_the_logged_map_and_is_in_mlflow(
    promoted: Promoted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    argv = [f"models:/{MODEL}@champion", "--subset", "validation", "--out", str(out), "--tracking-uri", promoted.uri]
    assert exit_status(evaluate.main, argv) == 0
    captured = capsys.readouterr()
    assert "selected on: the whole 'validation' subset" in captured.out
    assert "mAP" in captured.out and "0.50" in captured.out  # the table
    assert "selected on the whole 'validation' subset, the videos being evaluated" in captured.err

    client = MlflowClient(promoted.uri, promoted.uri)
    trial = client.get_run(promoted.best_run_id)
    # the tuned post-processing: tagged on the run, in the promoted model's config, used here
    sigma = float(trial.data.tags["postprocess.test.nms_sigma"])
    assert 0.05 <= sigma <= 0.95 and sigma != 0.5
    stored = Path(client.download_artifacts(trial.info.run_id, "checkpoints/best/config.yaml", str(tmp_path)))
    assert yaml.safe_load(stored.read_text())["test"]["nms_sigma"] == sigma
    assert client.get_metric_history(trial.info.run_id, "postprocess_search_s")  # the inner search's time
    metrics = json.loads((out / "metrics.json").read_text())
    assert trial.data.metrics["best_average_mAP"] > 0  # a real score, not "no detections" on both sides
    assert abs(metrics["average_mAP"] - trial.data.metrics["best_average_mAP"]) < 1e-6
    best_epoch = int(trial.data.tags["runner.best_epoch"])
    at_best = {m.step: m.value for m in client.get_metric_history(trial.info.run_id, "mAP_0.50")}
    assert abs(metrics["mAP"]["0.50"] - at_best[best_epoch]) < 1e-6
    # the detections are the trial's own (submission file logged by the search)
    logged = client.download_artifacts(trial.info.run_id, "predictions/validation_best.json", str(tmp_path))
    ours = json.loads((out / "predictions.json").read_text())["results"]
    theirs = json.loads(Path(logged).read_text())["results"]
    assert ours.keys() == theirs.keys()
    for video_id, detections in theirs.items():
        assert [d["label"] for d in ours[video_id]] == [d["label"] for d in detections]
        for a, b in zip(ours[video_id], detections, strict=True):
            assert a["segment"] == pytest.approx(b["segment"], abs=1e-6)
            assert a["score"] == pytest.approx(b["score"], abs=1e-6)

    assert set(path.name for path in out.iterdir()) == EVALUATION_FILES
    lines = (out / "per_class_ap.csv").read_text().splitlines()
    assert lines[0].startswith("class,AP@0.50,") and len(lines) == 1 + len(metrics["per_class_AP"])

    mine = (
        "tags.`runner.role` = 'evaluation' and tags.`runner.model_alias` = 'champion' "
        "and tags.`runner.subset` = 'validation'"
    )
    runs = client.search_runs([trial.info.experiment_id], mine)
    assert len(runs) == 1
    run = runs[0]
    assert {
        k: run.data.tags[k]
        for k in (
            "runner.model_name",
            "runner.model_version",
            "runner.model_alias",
            "runner.subset",
            "runner.selection_subset",
        )
    } == {
        "runner.model_name": MODEL,
        "runner.model_version": "1",
        "runner.model_alias": "champion",
        "runner.subset": "validation",
        "runner.selection_subset": "validation",
    }
    assert run.data.metrics["average_mAP"] == pytest.approx(metrics["average_mAP"], abs=1e-9)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == EVALUATION_FILES


def test_version_and_run_uris_load_the_same_model(
    promoted: Promoted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = MlflowClient(promoted.uri, promoted.uri)
    results = []
    # the store named both ways: --tracking-uri, and --set tracking.uri (run from another folder,
    # so the default embedded store would not find the model)
    for uri, store in (
        (f"models:/{MODEL}/1", ["--tracking-uri", promoted.uri]),
        (f"runs:/{promoted.best_run_id}/actionformer", ["--set", f"tracking.uri={promoted.uri}"]),
    ):
        out = tmp_path / uri.replace("/", "_").replace(":", "")
        assert exit_status(evaluate.main, [uri, "--out", str(out), *store]) == 0
        results.append(json.loads((out / "metrics.json").read_text())["average_mAP"])
    assert results[0] == results[1]
    assert results[0] == pytest.approx(client.get_run(promoted.best_run_id).data.metrics["best_average_mAP"], abs=1e-6)


CHAMPION = f"models:/{MODEL}@champion"


@pytest.mark.parametrize(
    ("args", "prefix", "message"),
    [
        (
            [f"models:/{MODEL}@nope"],
            f"models:/{MODEL}@nope: ",
            f"model '{MODEL}' has no alias 'nope' (aliases: ['champion'])",
        ),
        ([f"models:/{MODEL}/7"], f"models:/{MODEL}/7: ", f"model '{MODEL}' has no version 7"),
        (
            ["models:/no-such-model@champion"],
            "models:/no-such-model@champion: ",
            "no registered model named 'no-such-model'",
        ),
        (["champion"], "champion: ", "not a model URI"),
        # --set tracking.uri wins over --tracking-uri; evaluation takes no other tracking key
        ([CHAMPION, "--set", "tracking.uri=not-a-uri"], "--set: tracking.uri: ", "expected a URI such as sqlite:////"),
        ([CHAMPION, "--set", "tracking.model_name=x"], "--set: tracking.model_name: ", "takes only tracking.uri"),
    ],
)
def test_unknown_models_and_bad_tracking_settings_are_refused(
    promoted: Promoted, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], prefix: str, message: str
) -> None:
    out = tmp_path / "never"
    assert exit_status(evaluate.main, [*args, "--out", str(out), "--tracking-uri", promoted.uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {prefix}") and message in err and "\n" not in err
    assert not out.exists()


def test_promote_takes_the_store_and_model_name_from_set(promoted: Promoted, tmp_path: Path) -> None:
    """The search file names another (empty) store; --set points promotion at the search's own."""
    raw = yaml.safe_load(promoted.search_file.read_text())
    raw["tracking"]["uri"] = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    moved = tmp_path / "search.yaml"
    moved.write_text(yaml.safe_dump(raw))
    argv = [str(moved), "--set", f"tracking.uri={promoted.uri}", "--set", "tracking.model_name=via-set"]
    assert exit_status(promote.main, argv) == 0
    client = MlflowClient(promoted.uri, promoted.uri)
    version = client.get_model_version_by_alias("via-set", "champion")
    assert version.run_id == promoted.best_run_id
    assert not (tmp_path / "elsewhere").exists()  # the file's own store was never opened


def test_overrides_may_not_change_the_architecture(
    promoted: Promoted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        f"models:/{MODEL}@champion",
        "--set",
        "model.head_num_layers=2",
        "--out",
        str(tmp_path / "never"),
        "--tracking-uri",
        promoted.uri,
    ]
    assert exit_status(evaluate.main, argv) == 2
    assert "the model section cannot change" in capsys.readouterr().err


def test_subset_without_labels_gives_the_submission_only(
    promoted: Promoted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """FineAction's test subset has no labels: relabel some validation videos as such a subset."""
    annotations = json.loads((promoted.root / "synthetic" / "annotations_gt.json").read_text())
    database = annotations["database"]
    unlabelled = [vid for vid, entry in database.items() if entry["subset"] == "validation"][:3]
    for video_id in unlabelled:
        annotations["database"][video_id].update(subset="testing", annotations=[])
    path = tmp_path / "annotations_with_test.json"
    path.write_text(json.dumps(annotations))

    out = tmp_path / "test-eval"
    argv = [
        f"models:/{MODEL}@champion",
        "--subset",
        "testing",
        "--set",
        f"data.annotations={path}",
        "--out",
        str(out),
        "--tracking-uri",
        promoted.uri,
    ]
    assert exit_status(evaluate.main, argv) == 0
    captured = capsys.readouterr()
    assert "'testing' has no labelled instances" in captured.out and "no mAP can be computed" in captured.out
    assert "warning" not in captured.err  # selected on validation, evaluated on test: honest
    submission = json.loads((out / "predictions.json").read_text())
    assert sorted(submission["results"]) == sorted(unlabelled)
    assert {"version", "external_data"} <= submission.keys()
    assert set(path.name for path in out.iterdir()) == {"predictions.json", "evaluation.json"}
    client = MlflowClient(promoted.uri, promoted.uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(EXPERIMENT).experiment_id], "tags.`runner.subset` = 'testing'"
    )
    assert len(runs) == 1 and not runs[0].data.metrics
