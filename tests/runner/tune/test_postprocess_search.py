"""The post-processing search inside a trial (runner.tune.postprocess_search), with real Optuna on real
raw candidates from a real (tiny) training run: it is seeded, it starts from the file's settings,
and it scores only the videos the trial is scored on (the held-out slice under search.selection),
never a training video."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from localization.api import SubsetScorer, metrics_as_floats, train
from localization.config.loading import load_config
from localization.data.annotations import load_subset
from localization.data.synthetic import generate
from runner.searchfile.selection import holdout_split, write_selection
from runner.searchfile.space import parse_space
from runner.searchfile.spec import PostprocessSpec
from runner.tune.postprocess_search import PostprocessSearch

SPACE = {"test.nms_sigma": {"uniform": [0.05, 0.95]}, "test.min_score": {"loguniform": [0.001, 0.2]}}
TRAIN = [
    "train.epochs=3",
    "train.warmup_epochs=0",
    "train.batch_size=4",
    "train.lr=2.0e-3",
    "train.ema_decay=0.9",
    "train.eval_every=1",
]


def inner_search(cfg, trials: int = 6, seed: int = 0) -> PostprocessSearch:
    spec = PostprocessSpec(trials, parse_space(SPACE, "test"), SPACE)
    return PostprocessSearch(spec, cfg.test, "average_mAP", "max", seed)


def train_keeping_scorers(cfg, out: Path, chooser: PostprocessSearch) -> tuple[list[SubsetScorer], list]:
    """Train ``cfg``; every evaluation's raw candidates (what the inner search receives) are kept."""
    scorers: list[SubsetScorer] = []

    def choose(scorer: SubsetScorer):
        scorers.append(scorer)
        return chooser(scorer)

    reports: list = []
    train(cfg, out, on_epoch=reports.append, log=lambda _: None, choose_test=choose)
    return scorers, reports


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("postprocess_search"), seed=0, videos=32)


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three epochs scored on validation: mAP > 0, so choices are told apart."""
    cfg = load_config(data, TRAIN)
    chooser = inner_search(cfg)
    scorers, reports = train_keeping_scorers(cfg, tmp_path_factory.mktemp("run"), chooser)
    return {"cfg": cfg, "scorers": scorers, "reports": reports, "chooser": chooser}


def test_the_inner_study_scores_the_held_out_slice_only(data: Path, tmp_path: Path) -> None:
    overrides = write_selection(load_config(data).data, 0.25, 1, tmp_path / "selection")
    tiny = ["model.embd_dim=16", "model.fpn_dim=16", "model.head_dim=16", "model.n_head=2", "train.epochs=2"]
    cfg = load_config(data, [*TRAIN, *tiny, *overrides])  # what is scored matters here, not how well
    scorers, _ = train_keeping_scorers(cfg, tmp_path / "run", inner_search(cfg, trials=2))
    train_ids = Path(cfg.data.train_videos).read_text().split()
    held_out = Path(cfg.data.val_videos).read_text().split()
    training_subset = [v.video_id for v in load_subset(cfg.data, cfg.data.train_subset).videos]
    assert (train_ids, held_out) == holdout_split(training_subset, 0.25, 1)
    assert held_out and not set(held_out) & set(train_ids)
    assert len(scorers) == 2  # one model run per evaluated epoch
    for scorer in scorers:
        assert scorer.video_ids == held_out  # never a training video, never a validation one


def test_the_epoch_reports_the_chosen_settings_and_their_map(trained: dict) -> None:
    chooser, scorer, report = trained["chooser"], trained["scorers"][-1], trained["reports"][-1]
    assert report.evaluated and report.test == chooser.settings(chooser.chosen)
    assert set(chooser.chosen) == set(SPACE)
    picked = metrics_as_floats(scorer.metrics(report.test))
    assert report.metrics["average_mAP"] == picked["average_mAP"]
    base = metrics_as_floats(scorer.metrics(trained["cfg"].test))["average_mAP"]
    assert picked["average_mAP"] >= base  # the file's own settings were tried first
    assert picked["average_mAP"] > 0  # a real score: the choice is not among all-zero ties


def test_the_inner_study_is_seeded(trained: dict) -> None:
    scorer, cfg = trained["scorers"][-1], trained["cfg"]
    first, second = inner_search(cfg), inner_search(cfg)
    assert first(scorer) == second(scorer)
    assert first.chosen == second.chosen
    other = inner_search(cfg, seed=1)
    other(scorer)
    assert other.chosen != first.chosen  # the seed matters (the samplers differ)


def test_the_next_evaluation_starts_from_the_last_choice(trained: dict) -> None:
    scorer, cfg = trained["scorers"][-1], trained["cfg"]
    search = inner_search(cfg, trials=6)
    best = metrics_as_floats(scorer.metrics(search(scorer)))["average_mAP"]
    short = inner_search(cfg, trials=1)  # one trial: only the warm start runs
    short.restore(search.chosen)
    assert short._warm_starts()[1] == search.chosen
    assert metrics_as_floats(scorer.metrics(short(scorer)))["average_mAP"] <= best
    again = inner_search(cfg, trials=2)  # the file's settings, then the restored choice
    again.restore(search.chosen)
    assert metrics_as_floats(scorer.metrics(again(scorer)))["average_mAP"] == best


def test_rescoring_refuses_settings_the_candidates_were_not_made_with(trained: dict) -> None:
    scorer, cfg = trained["scorers"][-1], trained["cfg"]
    with pytest.raises(ValueError, match=r"test\.pre_nms_topk: cannot change"):
        scorer.metrics(dataclasses.replace(cfg.test, pre_nms_topk=10))
