"""``python -m localization.synthetic --out DIR [--seed N] [--videos N] [--format F]``: the synthetic dataset.

FineAction's layout, two feature streams and a run config (see localization.data.synthetic);
``--format`` picks a public release's file layout (native, official, pt, npz, fixed), or ``video``:
short encoded videos and the extraction file that turns them into a feature stream
(localization.video.synthetic; 32 videos unless ``--videos`` says otherwise).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from localization import cli
from localization.data.synthetic import FORMATS, generate
from localization.errors import InputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localization.synthetic",
        description="A synthetic dataset in FineAction's layout: two feature streams, annotations and a run config.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed: the same seed writes the same dataset")
    parser.add_argument("--videos", type=int, help="number of videos (3/4 training; default 160, 32 with video)")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="native",
        help="file layout: native, a public FineAction release's (official, pt, npz, fixed), or video (short encoded "
        "videos and the extraction file that turns them into a feature stream)",
    )
    args = parser.parse_args(argv)
    if args.videos is None:
        args.videos = 32 if args.format == "video" else 160
    if args.videos < 2:
        parser.error("--videos must be >= 2")
    try:
        print(generate(args.out, args.seed, args.videos, args.format))
    except OSError as exc:
        raise InputError(f"{args.out}: cannot write the synthetic dataset: {exc.strerror}") from None
    return 0


if __name__ == "__main__":
    cli.run(main)
