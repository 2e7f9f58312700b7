"""A trial's post-processing search runs beside its training (runner.tune.trial): in a real tiny
search, every epoch reports what a search run in line with training reports (the same mAP of the
same picks, epoch by epoch), and when each evaluation's search ended the training loop was
already on the next epoch."""

from __future__ import annotations

import pytest
import yaml

from localization.api import train
from localization.data.synthetic import generate
from runner import search
from runner.names import POSTPROCESS_SECONDS, POSTPROCESS_TRAINING_EPOCH
from runner.searchfile.spec import load_search_file
from runner.tune.postprocess_search import PostprocessSearch
from runner.tune.trial import TrialSetup, trial_run_config
from runner.tune.trial_results import reported_results
from tests.promotable_search import POSTPROCESS

EPOCHS = 3
VALUES = {"train.lr": 2.0e-3}


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("overlap")
    raw = yaml.safe_load(generate(root / "data", seed=0, videos=32).read_text())  # a model that scores above 0
    raw["train"].update(epochs=EPOCHS, warmup_epochs=0, batch_size=4, ema_decay=0.9, eval_every=1, num_threads=1)
    raw.update(
        experiment="overlap",
        resources={"cpu": 1, "gpu": 0},
        tracking={"uri": f"sqlite:///{root / 'mlflow.db'}", "model_name": "af-overlap"},
        search={
            "num_samples": 1,
            "seed": 0,
            "sampler": "random",
            "scheduler": {"type": "fifo"},
            "space": {"train.lr": {"choice": [VALUES["train.lr"]]}},
            "postprocess": POSTPROCESS,
        },
    )
    path = root / "search.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    outcome = search.run(path, storage_path=root / "ray_results", echo=lambda _: None)
    assert outcome.status == "finished"
    (trial_dir,) = outcome.ray_path.glob("trial_*")
    return {"path": path, "reported": reported_results(trial_dir), "root": root}  # its reports, in order


def test_each_evaluation_reports_what_a_search_in_line_reports(searched: dict) -> None:
    spec = load_search_file(searched["path"])
    cfg = trial_run_config(TrialSetup(spec, num_threads=1), VALUES)
    chooser = PostprocessSearch(spec.postprocess, cfg.test, spec.search.metric, spec.search.mode, spec.search.seed)
    in_line: list = []
    train(cfg, searched["root"] / "in_line", on_epoch=in_line.append, log=lambda _: None, choose_test=chooser)
    reported = searched["reported"]
    assert [r["epoch"] for r in reported] == list(range(1, EPOCHS + 1))
    assert all(r["evaluated"] for r in reported)
    assert [r["average_mAP"] for r in reported] == [r.metrics["average_mAP"] for r in in_line]
    assert max(r["average_mAP"] for r in reported) > 0  # real scores: the picks are told apart


def test_training_went_on_while_each_search_ran(searched: dict) -> None:
    for result in searched["reported"]:
        assert result[POSTPROCESS_SECONDS] > 0
        assert result[POSTPROCESS_TRAINING_EPOCH] == result["epoch"] + 1  # the last: training had ended
