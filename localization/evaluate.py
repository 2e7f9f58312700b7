"""``python -m localization.evaluate CONFIG --checkpoint CKPT [--set ...] --out DIR``

Runs inference on whole videos of a subset (default: ``data.val_subset``), writes the detections
in the ActivityNet submission format and prints the mAP table. ``--out`` is a folder, as for every
other command (``predictions.json`` and ``metrics.json`` in it, the names ``runner.evaluate``
writes), or, as before, a ``.json`` file for the detections alone (``--metrics`` then names the
metrics file). ``--raw RAW.npz`` also saves the
pre-NMS candidates; ``--from-raw RAW.npz`` (instead of ``--checkpoint``) re-scores them with other
post-processing settings (``--set test.nms_sigma=0.9``) without running the model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from localization import cli
from localization.api import evaluate_checkpoint, format_table, load_config, rescore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localization.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="run config YAML (data and test sections are used)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="checkpoint to run (EMA weights by default)")
    source.add_argument("--from-raw", type=Path, help="re-score raw candidates saved with --raw")
    cli.add_set_argument(parser)
    parser.add_argument("--subset", help="subset to score (default: data.val_subset)")
    parser.add_argument(
        "--out", required=True, type=Path, help="output folder, or a .json file for the detections alone"
    )
    parser.add_argument("--metrics", type=Path, help="also write metrics JSON here (default with a folder: in it)")
    parser.add_argument("--raw", type=Path, help="also save raw pre-NMS candidates (.npz)")
    parser.add_argument("--no-ema", action="store_true", help="use the live weights instead of the EMA")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)

    subset = args.subset or cfg.data.val_subset
    if args.from_raw is not None:
        result = rescore(cfg, args.from_raw, subset)
    else:
        result = evaluate_checkpoint(cfg, args.checkpoint, subset, raw_out=args.raw, use_ema=not args.no_ema)
    predictions, metrics = output_files(args.out, args.metrics)
    cli.write_json(predictions, result.predictions)
    if result.metrics is None:
        print(f"{subset}: no labelled instances; wrote the submission file {predictions}, no mAP can be computed")
        return 0
    if metrics is not None:
        cli.write_json(metrics, result.metrics.to_json())
    print(format_table(result.metrics))
    return 0


def output_files(out: Path, metrics: Path | None) -> tuple[Path, Path | None]:
    """Where the detections and the metrics go: in the folder ``out``, or ``out`` itself as a .json file."""
    if out.suffix == ".json":
        return out, metrics
    return out / "predictions.json", metrics or out / "metrics.json"


if __name__ == "__main__":
    cli.run(main)
