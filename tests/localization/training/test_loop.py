"""The training loop: schedule, EMA, exact resume, early stop, divergence, train -> evaluate."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from localization import cli
from localization import evaluate as evaluate_cli
from localization import train as train_cli
from localization.config.loading import load_config
from localization.data.synthetic import generate
from localization.inference.evaluation import evaluate_checkpoint, rescore
from localization.metrics import metrics_as_floats
from localization.training.loop import TrainingDiverged, train
from localization.training.optim import ModelEma, warmup_cosine_lr

TINY = [
    "model.embd_dim=16",
    "model.fpn_dim=16",
    "model.head_dim=16",
    "model.n_head=2",
    "train.epochs=3",
    "train.warmup_epochs=1",
    "train.batch_size=4",
    "train.lr=1.0e-3",
    "train.ema_decay=0.9",
]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    """A 24-video synthetic set (18 training, 6 validation): an epoch takes well under a second."""
    return generate(tmp_path_factory.mktemp("loop_data"), seed=3, videos=24)


def tiny_config(path, *extra):
    return load_config(path, [*TINY, *extra])


def test_lr_schedule_shape():
    base, warm, total, eta_min = 1.0, 10, 110, 1e-8
    lrs = [warmup_cosine_lr(k, base, warm, total, eta_min) for k in range(total + 1)]
    assert lrs[0] == 0.0
    assert lrs[5] == pytest.approx(5 / 9)  # linear: k * base / (warmup - 1)
    assert lrs[9] == pytest.approx(base) and lrs[10] == pytest.approx(base)
    assert lrs[60] == pytest.approx(eta_min + 0.5 * (base - eta_min))  # half way down the cosine
    assert lrs[110] == pytest.approx(eta_min)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))  # decays monotonically


def test_ema_blends_every_float_entry():
    model = torch.nn.Linear(2, 1)
    ema = ModelEma(model, decay=0.9)
    before = ema.module.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    assert torch.allclose(ema.module.weight, 0.9 * before + 0.1 * model.weight)
    assert not ema.module.weight.requires_grad


def test_resume_equals_uninterrupted_training(small_dataset, tmp_path):
    cfg = tiny_config(small_dataset)
    full = train(cfg, tmp_path / "full", log=lambda _: None)

    stopped = train(cfg, tmp_path / "part", on_epoch=lambda report: report.epoch == 2, log=lambda _: None)
    assert stopped.epochs_completed == 2 and stopped.stopped_early
    resumed = train(cfg, tmp_path / "resumed", resume=stopped.checkpoint, log=lambda _: None)
    assert resumed.epochs_completed == 3

    a = torch.load(full.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    assert a["loss_norm"] == b["loss_norm"]
    assert full.metrics["loss"] == resumed.metrics["loss"]
    assert full.metrics["average_mAP"] == resumed.metrics["average_mAP"]


def test_same_seed_same_result(small_dataset, tmp_path):
    cfg = tiny_config(small_dataset, "train.epochs=2")
    first = train(cfg, tmp_path / "a", log=lambda _: None)
    second = train(cfg, tmp_path / "b", log=lambda _: None)
    assert first.metrics["loss"] == second.metrics["loss"]
    assert first.last_eval.predictions == second.last_eval.predictions


def test_callback_sees_every_epoch_and_evaluation_cadence(small_dataset, tmp_path):
    cfg = tiny_config(small_dataset, "train.epochs=4", "train.eval_every=2")
    reports = []
    train(cfg, tmp_path / "run", on_epoch=reports.append, log=lambda _: None)
    assert [r.epoch for r in reports] == [1, 2, 3, 4]
    assert [r.evaluated for r in reports] == [False, True, False, True]
    for report in reports:
        assert {"loss", "cls_loss", "reg_loss", "lr", "epoch_time_s"} <= set(report.metrics)
        assert ("average_mAP" in report.metrics) == report.evaluated
        assert (report.predictions is not None) == report.evaluated
        assert report.checkpoint.is_file()
    assert {"mAP_0.50", "mAP_0.75", "mAP_0.95"} <= set(reports[-1].metrics)


def test_evaluate_reproduces_the_last_epoch_metrics(small_dataset, tmp_path):
    cfg = tiny_config(small_dataset)
    result = train(cfg, tmp_path / "run", log=lambda _: None)
    again = evaluate_checkpoint(cfg, result.checkpoint, cfg.data.val_subset, raw_out=tmp_path / "raw.npz")
    assert metrics_as_floats(again.metrics) == metrics_as_floats(result.last_eval.metrics)
    assert again.predictions == result.last_eval.predictions
    assert (tmp_path / "raw.npz").is_file()


def test_nan_loss_stops_with_epoch_and_step(small_dataset, tmp_path):
    cfg = tiny_config(small_dataset)
    folder = tmp_path / "poisoned"
    folder.mkdir()
    stream = cfg.data.streams["i3d"]
    for path in sorted(Path(stream.dir).glob("*.npy")):
        array = np.load(path)
        array[:] = np.nan
        np.save(folder / path.name, array)
    cfg = tiny_config(small_dataset, f"data.streams.i3d.dir={folder}")
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 1, step 1 "):
        train(cfg, tmp_path / "run", log=lambda _: None)


def test_train_cli_writes_checkpoint_predictions_and_metrics(small_dataset, tmp_path, capsys):
    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as exit_info:
        train_cli_run([str(small_dataset), "--out", str(out), *[arg for s in TINY for arg in ("--set", s)]])
    assert exit_info.value.code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["mAP"]) == {f"{t:.2f}" for t in np.linspace(0.5, 0.95, 10)}
    assert math.isfinite(metrics["average_mAP"])
    predictions = json.loads((out / "predictions.json").read_text())
    first = next(iter(predictions["results"].values()))[0]
    assert set(first) == {"segment", "label", "score"}
    assert (out / "checkpoint.pt").is_file() and (out / "config.yaml").is_file()
    assert re.search(r"^epoch   3/3 ", capsys.readouterr().out, re.M)


def test_train_cli_dry_run_prints_parameters(small_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_cli_run([str(small_dataset), "--out", str(tmp_path / "x"), "--dry-run"])
    assert exit_info.value.code == 0
    assert re.search(r"^parameters: \d+$", capsys.readouterr().out, re.M)
    assert not (tmp_path / "x").exists()


def test_train_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: nope}\n")
    with pytest.raises(SystemExit) as exit_info:
        train_cli_run([str(bad), "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {bad}: train.lr: expected a number, got 'nope'"


def train_cli_run(argv):
    cli.run(train_cli.main, argv)


def test_raw_candidates_rescore_without_the_model(small_dataset, tmp_path, capsys):
    cfg = tiny_config(small_dataset)
    result = train(cfg, tmp_path / "run", log=lambda _: None)
    raw = tmp_path / "raw.npz"
    base = evaluate_checkpoint(cfg, result.checkpoint, cfg.data.val_subset, raw_out=raw)
    assert metrics_as_floats(rescore(cfg, raw, cfg.data.val_subset).metrics) == metrics_as_floats(base.metrics)

    hard = tiny_config(small_dataset, "test.nms_method=hard", "test.iou_threshold=0.3")
    assert (
        rescore(hard, raw, cfg.data.val_subset).predictions
        == evaluate_checkpoint(hard, result.checkpoint, cfg.data.val_subset).predictions
    )

    # the command: --from-raw with another sigma writes exactly what rescore gives for that sigma
    out, metrics_out = tmp_path / "pred.json", tmp_path / "metrics.json"
    argv = [
        str(small_dataset),
        "--from-raw",
        str(raw),
        "--out",
        str(out),
        "--metrics",
        str(metrics_out),
        *[arg for s in TINY for arg in ("--set", s)],
        "--set",
        "test.nms_sigma=0.9",
    ]
    assert cli.exit_status(evaluate_cli.main, argv) == 0
    wide = rescore(tiny_config(small_dataset, "test.nms_sigma=0.9"), raw, cfg.data.val_subset)
    assert json.loads(out.read_text()) == json.loads(json.dumps(wide.predictions))
    assert json.loads(metrics_out.read_text()) == json.loads(json.dumps(wide.metrics.to_json()))
    assert wide.predictions != base.predictions  # the override reached the post-processing
    assert f"{wide.metrics.average_mAP:.2f}" in capsys.readouterr().out  # the printed table is this one

    # --out as a folder, as in every other command: the same two files, named as runner.evaluate names them
    folder = tmp_path / "eval"
    assert cli.exit_status(evaluate_cli.main, [*argv[:3], "--out", str(folder), *argv[7:]]) == 0
    assert (folder / "predictions.json").read_text() == out.read_text()
    assert (folder / "metrics.json").read_text() == metrics_out.read_text()
