"""Does the search spend its trial-epochs well? TPE and random, with and without ASHA, against the recipe.

``python benchmarks/search_quality.py [--seeds 0 1 2] [--epochs 6] [--budget 24] [--videos 96]
[--postprocess-trials N] [--out DIR]`` generates a synthetic dataset and runs, per search seed:

- ``recipe``: the base config alone (``seed_configs: [{}]``, one trial);
- ``random``: random search without early stopping, ``budget / epochs`` full-length trials;
- ``random+asha``, ``tpe+asha``: ``--asha-samples`` trials (default ``2 x budget / epochs``), ASHA
  stopping the weak ones at ``epochs / 3`` and ``2 epochs / 3``;
- ``tpe+asha+post`` (only with ``--postprocess-trials N``): as ``tpe+asha``, with the demo's
  ``search.postprocess`` keys (``test.nms_sigma``) tuned on each evaluation's raw candidates; every
  other variant searches them in the training space, one retraining per setting.

Three data roles, as a real search should have them: trials train on the training subset minus a
held-out quarter (``search.selection``), are selected on that held-out quarter, and the selected
trial's best checkpoint (with its config, tuned post-processing included) is then scored once on the
validation subset, which no search decision saw: the "test" column. Cost is counted in trial-epochs
(GPU-equivalent work) and wall time. The markdown table goes to stdout, every number to
``DIR/results.json``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

from localization.api import config_from_dict, evaluate_checkpoint, make_synthetic, read_yaml
from runner import search
from runner.names import BEST_CHECKPOINT_DIR, CHECKPOINT_FILE, CONFIG_FILE
from runner.tune import cluster

TEST_SUBSET = "validation"  # never seen by a search decision: selection uses a slice of training


def base_search(data_dir: Path, out: Path, epochs: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The demo search, shrunk to a benchmark: small model, short training, selection on a holdout.

    Returns it with the demo's post-processing space moved into the training space, and that space.
    """
    raw = read_yaml(Path("search_spaces/demo.yaml"))
    raw.pop("synthetic", None)
    post_space = raw["search"].pop("postprocess")["space"]
    raw["search"]["space"].update(post_space)
    raw["data"] = yaml.safe_load((data_dir / "config.yaml").read_text())["data"]  # absolute paths
    raw["model"] = {**raw["model"], "embd_dim": 32, "fpn_dim": 32, "head_dim": 32}
    raw["train"] = {**raw["train"], "epochs": epochs, "warmup_epochs": 1, "eval_every": 1}
    third = max(1, epochs // 3)
    raw["search"].update(
        max_concurrent=2,
        selection={"holdout_fraction": 0.25, "seed": 0},
        scheduler={"type": "asha", "grace_period": third, "reduction_factor": 2},
    )
    raw["resources"] = {"gpu": 1, "cpu": 1}
    raw["tracking"] = {"uri": f"sqlite:///{out / 'mlflow.db'}", "model_name": "quality"}
    return raw, post_space


def variants(args: argparse.Namespace, post_space: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per variant, the ``search`` keys it changes."""
    full = args.budget // args.epochs
    found = {
        "recipe": {"sampler": "random", "num_samples": 1, "seed_configs": [{}], "scheduler": {"type": "fifo"}},
        "random": {"sampler": "random", "num_samples": full, "scheduler": {"type": "fifo"}},
        "random+asha": {"sampler": "random", "num_samples": args.asha_samples or 2 * full},
        "tpe+asha": {"sampler": "tpe", "num_samples": args.asha_samples or 2 * full},
    }
    if args.postprocess_trials:
        found["tpe+asha+post"] = {
            **found["tpe+asha"],
            "postprocess": {"trials": args.postprocess_trials, "space": post_space},
        }
    return found


def run_one(base: dict[str, Any], name: str, change: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    """One search; the selected trial's selection and test mAP, and what it cost."""
    raw = copy.deepcopy(base)
    raw["experiment"] = f"quality-{name.replace('+', '-')}-s{seed}"
    raw["search"].update(copy.deepcopy(change), seed=seed)
    if "postprocess" in change:  # tuned on raw candidates instead of by retraining
        for key in change["postprocess"]["space"]:
            raw["search"]["space"].pop(key)
    path = out / f"{raw['experiment']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    started = time.perf_counter()
    outcome = search.run(path, storage_path=out / "ray", echo=lambda _: None)
    wall = time.perf_counter() - started
    best = outcome.best
    result = {
        "variant": name,
        "seed": seed,
        "status": outcome.status,
        "trials": len(outcome.rows),
        "trial_epochs": sum(r.epochs for r in outcome.rows),
        "wall_s": round(wall, 1),
        "selection_mAP": best.best if best else None,
        "test_mAP": None,
    }
    if best is not None:  # its best checkpoint and config (tuned post-processing included), from MLflow
        client = MlflowClient(tracking_uri=raw["tracking"]["uri"])
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(client.download_artifacts(best.run_id, BEST_CHECKPOINT_DIR, tmp))
            cfg = config_from_dict(read_yaml(directory / CONFIG_FILE), str(directory / CONFIG_FILE))
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val_subset=TEST_SUBSET, val_videos=None))
            scored = evaluate_checkpoint(cfg, directory / CHECKPOINT_FILE, TEST_SUBSET)
        result["test_mAP"] = float(scored.metrics.average_mAP) if scored.metrics is not None else None
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def summary(results: list[dict[str, Any]], names: list[str]) -> list[str]:
    """Markdown: per variant, mean +- sd over the seeds, and every seed's numbers."""

    def stat(values: list[float | None], digits: int = 2) -> str:
        given = [v for v in values if v is not None]
        if not given:
            return "-"
        spread = f" ± {statistics.stdev(given):.{digits}f}" if len(given) > 1 else ""
        return f"{statistics.mean(given):.{digits}f}{spread}"

    lines = [
        "| variant | selection mAP (holdout) | test mAP (validation) | trial-epochs | wall s | per seed: test mAP |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        mine = [r for r in results if r["variant"] == name]
        per_seed = ", ".join(f"s{r['seed']} {r['test_mAP']:.2f}" if r["test_mAP"] is not None else "-" for r in mine)
        lines.append(
            f"| {name} | {stat([r['selection_mAP'] for r in mine])} | {stat([r['test_mAP'] for r in mine])} "
            f"| {stat([r['trial_epochs'] for r in mine], 0)} | {stat([r['wall_s'] for r in mine], 0)} | {per_seed} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6, help="train.epochs of every trial")
    parser.add_argument("--budget", type=int, default=24, help="trial-epochs of the random (no early stop) search")
    parser.add_argument("--asha-samples", type=int, help="trials of the ASHA searches (default 2 x budget / epochs)")
    parser.add_argument("--videos", type=int, default=96, help="synthetic dataset size")
    parser.add_argument("--postprocess-trials", type=int, default=0, help="add tpe+asha+post with N inner trials")
    parser.add_argument("--out", type=Path, default=Path("bench_search_quality"))
    args = parser.parse_args(argv)

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    if not (data_dir / "config.yaml").is_file():
        make_synthetic(data_dir, seed=0, videos=args.videos)
    base, post_space = base_search(data_dir, out, args.epochs)
    chosen = variants(args, post_space)
    info = cluster.start(num_cpus=2, object_store_bytes=256 * 1024**2)  # one Ray for every search
    try:
        results = [run_one(base, name, change, seed, out) for seed in args.seeds for name, change in chosen.items()]
    finally:
        cluster.stop(info)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    given = argv if argv is not None else sys.argv[1:]
    print(f"\n### Search quality: `python benchmarks/search_quality.py {' '.join(given)}`\n")
    print("\n".join(summary(results, list(chosen))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
