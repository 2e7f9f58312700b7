"""``python -m localization.data CONFIG [--set key=value ...] [--json]``: what the data looks like.

Per subset (``data.train_subset`` and ``data.val_subset``): videos, videos with features, clean
instances, instances dropped per dirty rule, feature lengths and dims. It builds the same datasets
training does, so every file is probed and a bad one fails here first (one line, exit 2).
Prints one JSON object with ``--json`` (subset -> videos, instances, dropped, ...; plus classes).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from localization import cli
from localization.config import load_config
from localization.data.annotations import load_subset
from localization.data.dataset import InferenceDataset
from localization.data.features import FeatureReader


def summarize(dataset: InferenceDataset) -> dict[str, Any]:
    """Counts and feature statistics of one subset."""
    lengths = np.array(dataset.lengths)
    return {
        "videos": len(dataset.annotations.videos),
        "videos_with_features": len(dataset),
        "skipped_without_features": len(dataset.skipped),
        "instances": int(sum(len(v.segments) for v in dataset.annotations.videos)),
        "dropped": dict(dataset.annotations.dropped),
        "feature_length": {"min": int(lengths.min()), "median": float(np.median(lengths)), "max": int(lengths.max())},
        "dims": dict(dataset.reader.dims),
        "dim": dataset.reader.dim,
    }


def format_summary(subset: str, s: dict[str, Any]) -> str:
    dropped = ", ".join(f"{reason} {n}" for reason, n in s["dropped"].items())
    length = s["feature_length"]
    dims = " + ".join(f"{name} {dim}" for name, dim in s["dims"].items())
    return (
        f"{subset}: {s['videos']} videos, {s['videos_with_features']} with features "
        f"({s['skipped_without_features']} skipped)\n"
        f"  instances kept {s['instances']}; dropped: {dropped}\n"
        f"  feature length (steps): min {length['min']}, median {length['median']:g}, "
        f"max {length['max']}\n"
        f"  dims: {dims} = {s['dim']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localization.data", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="run config YAML")
    cli.add_set_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    reader = FeatureReader(cfg.data)
    datasets = {
        subset: InferenceDataset(cfg.data, load_subset(cfg.data, subset), reader)
        for subset in dict.fromkeys([cfg.data.train_subset, cfg.data.val_subset])
    }
    report: dict[str, Any] = {subset: summarize(dataset) for subset, dataset in datasets.items()}
    report["classes"] = next(iter(datasets.values())).class_names
    if args.json:
        print(json.dumps(report))
    else:
        for subset in datasets:
            print(format_summary(subset, report[subset]))
        print(f"classes: {len(report['classes'])}")
    return 0


if __name__ == "__main__":
    cli.run(main)
