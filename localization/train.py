"""``python -m localization.train CONFIG [--set ...] --out DIR [--dry-run] [--resume CKPT]``

Trains one model (no Ray, Optuna or MLflow), then writes ``DIR/checkpoint.pt``,
``DIR/predictions.json`` (validation detections, ActivityNet submission format),
``DIR/metrics.json`` (percent) and ``DIR/config.yaml`` (the resolved config).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from localization import cli
from localization.config.loading import dump_yaml, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localization.train", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="run config YAML")
    cli.add_set_argument(parser)
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--dry-run", action="store_true", help="build data and model, print parameters: N")
    parser.add_argument("--resume", type=Path, help="continue from this checkpoint")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        from localization.training.loop import build_model_for_data

        model, summary = build_model_for_data(cfg)
        print(summary)
        print(f"parameters: {sum(p.numel() for p in model.parameters())}")
        return 0

    from localization.training.loop import train

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.yaml").write_text(dump_yaml(cfg))
    result = train(cfg, args.out, resume=args.resume)
    if result.last_eval is not None:
        cli.write_json(args.out / "predictions.json", result.last_eval.predictions)
        if result.last_eval.metrics is not None:
            cli.write_json(args.out / "metrics.json", result.last_eval.metrics.to_json())
            from localization.metrics import format_table

            print(format_table(result.last_eval.metrics))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
