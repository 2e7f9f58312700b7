"""Issue 11 end to end: one checkpoint scores the same on every public file layout; class-agnostic
training with an external classifier; wrong-grid warnings in training and in the search."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import yaml

from localization.api import exit_status
from localization.config.loading import load_config
from localization.data.annotations import load_subset
from localization.data.dataset import InferenceDataset
from localization.data.synthetic import CLASS_NAMES, generate
from localization.device import resolve_device
from localization.inference.evaluation import evaluate_checkpoint
from localization.inference.prediction import detect, predict
from localization.model.weights import load_checkpoint, model_from_checkpoint
from localization.training.loop import train
from runner import search

TINY = [
    "model.embd_dim=16",
    "model.fpn_dim=16",
    "model.head_dim=16",
    "model.n_head=2",
    "train.epochs=4",
    "train.warmup_epochs=1",
    "train.batch_size=4",
    "train.lr=1.0e-3",
    "train.ema_decay=0.9",
    "train.num_threads=1",
]
SEED, VIDEOS = 3, 24


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """The same synthetic videos in every layout of ``--format``: layout -> config.yaml."""
    root = tmp_path_factory.mktemp("layouts")
    return {
        name: generate(root / name, seed=SEED, videos=VIDEOS, layout=name)
        for name in ("native", "official", "pt", "npz", "fixed")
    }


@pytest.fixture(scope="module")
def checkpoint(layouts, tmp_path_factory) -> Path:
    cfg = load_config(layouts["native"], TINY)
    return train(cfg, tmp_path_factory.mktemp("run"), log=lambda _: None).checkpoint


def test_one_checkpoint_scores_the_same_on_every_layout(layouts, checkpoint):
    """.npy, .pt, .npz, and the JSON with or without label_id: the same mAP to 1e-9."""
    results = {
        name: evaluate_checkpoint(load_config(layouts[name], TINY), checkpoint, "validation")
        for name in ("native", "official", "pt", "npz")
    }
    assert load_subset(load_config(layouts["official"]).data, "validation").class_map == "sorted labels"
    reference = results["native"]
    assert reference.metrics.average_mAP > 0
    for name, result in results.items():
        assert abs(result.metrics.average_mAP - reference.metrics.average_mAP) <= 1e-9, name
        assert all(abs(a - b) <= 1e-9 for a, b in zip(result.metrics.mAP, reference.metrics.mAP, strict=True)), name
        assert result.predictions["results"] == reference.predictions["results"], name


def test_class_agnostic_segments_take_labels_and_scores_from_the_classifier(layouts, tmp_path):
    cfg_path = layouts["native"]
    data = load_config(cfg_path).data
    videos = load_subset(data, "validation").videos
    shuffled = CLASS_NAMES[::-1]  # the file's own class order, names with stray spaces
    hand = videos[0].video_id
    results = {v.video_id: [0.01] * len(shuffled) for v in videos}
    results[hand][shuffled.index("jump_forward")] = 0.64
    results[hand][shuffled.index("spin_backward")] = 0.25
    ext = tmp_path / "classifier.json"
    ext.write_text(json.dumps({"class": [f" {n} " for n in shuffled], "results": results}))
    extra = ["model.class_agnostic=true", f"test.ext_score_file={ext}", "test.ext_topk=2"]
    cfg = load_config(cfg_path, [*TINY, *extra])
    result = train(cfg, tmp_path / "run", log=lambda _: None)
    ckpt = load_checkpoint(result.checkpoint)
    assert list(ckpt["class_names"]) == CLASS_NAMES
    model, cfg, _ = model_from_checkpoint(ckpt, cfg=cfg)
    dataset = InferenceDataset(cfg.data, load_subset(cfg.data, "validation"))
    raw = predict(model, dataset, cfg, resolve_device("cpu"))
    assert max(int(c.labels.max()) for c in raw.values() if len(c)) == 0  # one foreground class
    plain = detect(raw, dataset, dataclasses.replace(cfg, test=dataclasses.replace(cfg.test, ext_score_file=None)))
    agnostic = plain[hand]
    submission = result.last_eval.predictions["results"][hand]
    n = len(agnostic.scores)
    assert n > 0 and len(submission) == 2 * n
    for rank, (label, p) in enumerate((("jump_forward", 0.64), ("spin_backward", 0.25))):
        for (start, end), s, det in zip(
            agnostic.segments, agnostic.scores, submission[rank * n : (rank + 1) * n], strict=True
        ):
            assert det["label"] == label
            assert det["segment"] == [float(start), float(end)]
            assert det["score"] == pytest.approx(math.sqrt(float(s) * p), rel=1e-12)
    other = result.last_eval.predictions["results"][videos[1].video_id]
    assert {det["label"] for det in other} <= set(CLASS_NAMES)  # ties at 0.01: the first two model classes


def test_resized_features_read_as_native_warn_in_training_and_search(layouts, tmp_path, capsys):
    wrong = ["data.streams.i3d.feat_stride=16", "data.streams.slowfast.feat_stride=16"]
    lines: list[str] = []
    train(load_config(layouts["fixed"], [*TINY, "train.epochs=2", *wrong]), tmp_path / "run", log=lines.append)
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert any("training: stream i3d: median coverage" in line for line in warnings)
    assert any("validation: stream slowfast: median coverage" in line for line in warnings)
    quiet: list[str] = []
    train(load_config(layouts["fixed"], [*TINY, "train.epochs=2"]), tmp_path / "auto", log=quiet.append)
    assert not [line for line in quiet if line.startswith("warning: ")]

    space = yaml.safe_load(Path("search_spaces/demo.yaml").read_text())
    space.pop("synthetic")
    space["data"] = yaml.safe_load(layouts["fixed"].read_text())["data"]
    for name in ("i3d", "slowfast"):
        space["data"]["streams"][name]["feat_stride"] = 16
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(space))
    assert exit_status(search.main, [str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "warning: training: stream i3d: median coverage" in out
