"""``python -m localization.metrics GT.json PRED.json``: print the mAP table, or metrics JSON."""

from __future__ import annotations

import argparse
import json

from localization import cli
from localization.metrics.detection import evaluate_detections, format_table
from localization.metrics.inputs import GT_FILTERS, load_ground_truth, load_predictions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localization.metrics",
        description="ActivityNet-style detection mAP at tIoU 0.50:0.05:0.95 (official semantics).",
    )
    parser.add_argument("ground_truth", help='annotation JSON with a "database" mapping')
    parser.add_argument("predictions", help='submission JSON: {"results": {video_id: [detections]}}')
    parser.add_argument(
        "--subset",
        default="validation",
        help="subset to evaluate (case and surrounding spaces ignored, as in training)",
    )
    parser.add_argument(
        "--gt-filter",
        choices=GT_FILTERS,
        default="none",
        help="none: official; actionformer: drop GT shorter than 1e-3 s and duplicates",
    )
    parser.add_argument("--json", action="store_true", help="print the metrics.json object instead")
    args = parser.parse_args(argv)
    gt = load_ground_truth(args.ground_truth, args.subset, args.gt_filter)
    metrics = evaluate_detections(gt, load_predictions(args.predictions))
    print(json.dumps(metrics.to_json(), indent=2) if args.json else format_table(metrics))
    return 0


if __name__ == "__main__":
    cli.run(main)
