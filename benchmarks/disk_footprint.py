"""How much disk a search takes: the parts of a FineAction-size checkpoint, measured, and what a
trial keeps while it runs and once it has finished.

    python benchmarks/disk_footprint.py [--trials 32] [--concurrent 8] [--search RAY_PATH MLFLOW_ARTIFACTS]

Builds the recipe's model (configs/fineaction.yaml: input 4352, 106 classes), takes one AdamW step
so the optimizer holds its state, and saves the training loop's checkpoint and the part MLflow keeps
(``save_inference_checkpoint``, as the driver uploads it); validation predictions are written in the
submission format for FineAction's 4,174 validation videos x ``test.max_seg_num`` segments. With
``--search`` it also measures a finished search's Ray storage and MLflow artifacts per trial.

Per running trial: Ray's best and latest checkpoints (each checkpoint.pt + predictions.json) and
the training loop's scratch checkpoint in the temp dir. Per finished trial: MLflow's checkpoint.pt (no
optimizer state) and validation_best.json; its Ray copies keep only report.json and config.yaml.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from localization.config.loading import load_config
from localization.model import ActionFormer
from localization.model.weights import save_checkpoint, save_inference_checkpoint
from localization.training.checkpoints import checkpoint_state
from localization.training.optim import ModelEma, build_scheduler, param_groups

REPO = Path(__file__).resolve().parents[1]
VAL_VIDEOS = 4174  # FineAction's validation subset
CLASSES = [f"class_{i:03d}" for i in range(106)]


def checkpoint_parts(tmp: Path) -> dict[str, int]:
    """Bytes of the full training checkpoint, of its inference part and of each state dict alone."""
    cfg = load_config(REPO / "configs/fineaction.yaml")
    model = ActionFormer(cfg.model, 4352, len(CLASSES), cfg.data.max_seq_len)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # AdamW's exp_avg and exp_avg_sq exist from the first step on
    ema = ModelEma(model, cfg.train.ema_decay)
    scheduler = build_scheduler(optimizer, 10, 100, cfg.train.eta_min)
    state = checkpoint_state(
        model=model,
        ema=ema.module,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_norm=100.0,
        epoch=1,
        cfg=cfg,
        class_names=CLASSES,
        input_dim=4352,
    )
    sizes = {"parameters": sum(p.numel() for p in model.parameters())}
    save_checkpoint(tmp / "checkpoint.pt", state)
    save_inference_checkpoint(tmp / "checkpoint.pt", tmp / "inference.pt")  # what MLflow keeps
    for name in ("checkpoint", "inference"):
        sizes[f"{name}_bytes"] = (tmp / f"{name}.pt").stat().st_size
    for key in ("model", "ema", "optimizer"):
        torch.save(state[key], tmp / "part.pt")
        sizes[f"{key}_bytes"] = (tmp / "part.pt").stat().st_size
    sizes["predictions_bytes"] = predictions_bytes(tmp / "predictions.json", cfg.test.max_seg_num)
    return sizes


def predictions_bytes(path: Path, per_video: int) -> int:
    """Validation predictions in the submission format (runner.tune.trial writes them with json.dumps)."""
    rng = np.random.default_rng(0)
    results = {
        f"v_{i:08d}": [
            {"segment": [float(s), float(s + d)], "label": CLASSES[int(c)], "score": float(p)}
            for s, d, c, p in zip(
                rng.uniform(0, 150, per_video),
                rng.uniform(0.5, 20, per_video),
                rng.integers(0, len(CLASSES), per_video),
                rng.uniform(0, 1, per_video),
                strict=True,
            )
        ]
        for i in range(VAL_VIDEOS)
    }
    path.write_text(json.dumps({"results": results}))
    return path.stat().st_size


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def measured_search(ray_path: Path, artifacts: Path) -> dict[str, float]:
    """Bytes per trial of a finished search: Ray storage (trial folders) and MLflow artifacts (child runs)."""
    trials = list(ray_path.glob("trial_*"))
    runs = [d for d in artifacts.glob("*/*") if (d / "artifacts" / "checkpoints").is_dir()]
    return {
        "trials": len(trials),
        "ray_bytes_per_trial": sum(folder_bytes(t) for t in trials) / max(len(trials), 1),
        "mlflow_bytes_per_trial": sum(folder_bytes(r) for r in runs) / max(len(runs), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--concurrent", type=int, default=8, help="trials running at once (e.g. 8 GPUs)")
    parser.add_argument("--search", nargs=2, type=Path, metavar=("RAY_PATH", "MLFLOW_ARTIFACTS"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        parts = checkpoint_parts(Path(tmp))
    gb = 1e9
    full, weights, preds = parts["checkpoint_bytes"], parts["inference_bytes"], parts["predictions_bytes"]
    running = 2 * (full + preds) + full  # Ray best + latest, training-loop scratch
    finished = weights + preds  # MLflow; Ray keeps a few KB
    before = 2 * (full + preds) + full + preds  # before: finished trials kept both Ray copies + full MLflow copy
    print(f"FineAction-size model: {parts['parameters']:,} parameters")
    print("| part | size |\n|---|---|")
    for key in ("model", "ema", "optimizer", "checkpoint", "inference", "predictions"):
        print(f"| {key} | {parts[f'{key}_bytes'] / gb:.3f} GB |")
    print(f"| a running trial (Ray best + latest, training-loop scratch) | {running / gb:.2f} GB |")
    print(f"| a finished trial (MLflow weights + predictions) | {finished / gb:.2f} GB |")
    print(f"| a finished trial before this change (Ray 2 copies + MLflow full copy) | {before / gb:.2f} GB |")
    total = args.concurrent * running + args.trials * finished
    print(
        f"| {args.trials}-trial search, {args.concurrent} at once, at its peak | {total / gb:.1f} GB "
        f"(before: {(args.concurrent * running + args.trials * before) / gb:.1f} GB) |"
    )
    if args.search:
        measured = measured_search(*args.search)
        print(
            f"measured search ({measured['trials']} trials): Ray {measured['ray_bytes_per_trial'] / 1e3:.0f} kB "
            f"per trial, MLflow {measured['mlflow_bytes_per_trial'] / 1e3:.0f} kB per trial"
        )


if __name__ == "__main__":
    main()
