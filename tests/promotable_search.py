"""A search small enough for promotion and evaluation tests (shared by the tests of promotion, final
evaluation, selection and the MLflow servers)."""

from __future__ import annotations

from pathlib import Path

import yaml

from localization.data.synthetic import generate

# Tuned at every evaluation; the file's own sigma (0.5) is far from most of the range
POSTPROCESS = {"trials": 4, "space": {"test.nms_sigma": {"uniform": [0.05, 0.95]}}}


def write_promotable_search(root: Path, tracking_uri: str, experiment: str, model_name: str) -> Path:
    """A 2-trial x 2-epoch search over the learning rate on a 32-video synthetic dataset, with
    Soft-NMS sigma tuned on each evaluation's raw candidates (``search.postprocess``).

    ``ema_decay`` 0.9: with the recipe's 0.999 the EMA weights barely move in so few steps and
    every trial scores mAP 0, which would make "the best trial" and "reproduces its mAP" vacuous.
    """
    raw = yaml.safe_load(generate(root / "synthetic", seed=0, videos=32).read_text())
    raw["train"].update(epochs=2, warmup_epochs=0, batch_size=4, ema_decay=0.9)
    raw.update(
        experiment=experiment,
        search={
            "metric": "average_mAP",
            "mode": "max",
            "num_samples": 2,
            "seed": 0,
            "sampler": "random",
            "scheduler": {"type": "fifo"},
            "space": {"train.lr": {"loguniform": [1.0e-3, 4.0e-3]}},
            "postprocess": POSTPROCESS,
        },
        resources={"gpu": 0, "cpu": 1},
        tracking={"uri": tracking_uri, "model_name": model_name},
    )
    path = root / "search.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
