"""``python -m localization.data CONFIG [--set key=value ...] [--json] [--pack]``: what the data looks like.

Per subset (``data.train_subset`` and ``data.val_subset``): videos, videos with features, clean
instances, instances dropped per dirty rule, feature lengths and dims, and per stream the
coverage of the videos by their features (min / median / max, ``localization.data.report``).
It builds the same datasets training does, so every file is probed and a bad one fails here first
(one line, exit 2). Prints one JSON object with ``--json`` (subset -> videos, instances, dropped,
feature_length, dims, dim, coverage; plus classes, class_map and warnings).
``--pack`` instead builds (or finds) the feature store of ``data.features`` under ``data.store_dir``
and prints where it is and its size (``--json``: a list, one object per stream).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from localization import cli
from localization.config.loading import load_config
from localization.data.annotations import load_subset
from localization.data.dataset import InferenceDataset
from localization.data.feature_store import describe, pack
from localization.data.features import FeatureReader
from localization.data.report import data_warnings, format_summary, summarize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localization.data", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="run config YAML")
    cli.add_set_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--pack", action="store_true", help="build the feature store (data.store_dir) and print it")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.pack:
        stores = pack(cfg.data)
        if args.json:
            print(
                json.dumps(
                    [
                        {
                            "stream": s.stream,
                            "path": str(s.path),
                            "videos": len(s),
                            "steps": s.steps,
                            "dtype": str(s.dtype),
                            "bytes": s.nbytes,
                            "built_s": s.built_s,
                        }
                        for s in stores
                    ]
                )
            )
        else:
            print(describe(stores))
        return 0
    reader = FeatureReader(cfg.data)
    datasets = {
        subset: InferenceDataset(cfg.data, load_subset(cfg.data, subset), reader)
        for subset in dict.fromkeys([cfg.data.train_subset, cfg.data.val_subset])
    }
    report: dict[str, Any] = {subset: summarize(dataset) for subset, dataset in datasets.items()}
    first = next(iter(datasets.values())).annotations
    report["classes"] = first.class_names
    report["class_map"] = first.class_map
    report["warnings"] = data_warnings(datasets)
    if args.json:
        print(json.dumps(report))
    else:
        for subset in datasets:
            print(format_summary(subset, report[subset]))
        print(f"classes: {len(report['classes'])} (from {report['class_map']})")
        for warning in report["warnings"]:
            print(f"warning: {warning}")
    return 0


if __name__ == "__main__":
    cli.run(main)
