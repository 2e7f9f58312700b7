"""``python -m runner.extract EXTRACT.yaml [--set KEY=VALUE ...] [--address HOST:PORT]``: videos -> features.

Writes one ``<video_id>.npy`` ([T, 2304]) per video of ``videos`` into ``out``, with the settings
(``extraction.json``) and a manifest; runs on Ray (runner.extraction) and records one MLflow run.
Exit 0 when every video was extracted, 1 when some failed (listed), 2 on bad input (nothing written).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from localization.api import add_set_argument, run_command
from runner import console
from runner.extraction.job import run
from runner.extraction.spec import load_extract_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.extract", description=__doc__.split("\n")[0])
    parser.add_argument("file", type=Path, help="extraction YAML (see docs/extraction.md)")
    add_set_argument(parser, "override a key, e.g. --set clip.stride=8 --set backbone.name=slowfast_r101; repeatable")
    parser.add_argument("--address", help="join this Ray cluster (host:port) instead of starting one")
    parser.add_argument("--overwrite", action="store_true", help="replace the stream in out (other settings)")
    match_help = "clip.stride and clip.num_frames such that every video's steps equal FOLDER/<video_id>.npy's"
    parser.add_argument("--match-stream", type=Path, metavar="FOLDER", help=match_help)
    parser.add_argument("--verbose", action="store_true", help="show Ray's and the workers' output here too")
    args = parser.parse_args(argv)
    spec = load_extract_file(args.file, args.overrides)
    command = "python -m runner.extract " + shlex.join(sys.argv[1:] if argv is None else argv)
    outcome = run(
        spec, args.address, args.overwrite, args.match_stream, command, log_to_file=True, verbose=args.verbose
    )
    grid = spec.stream.clip
    console.say(
        f"extracted {len(outcome.ok)} videos ({outcome.skipped} skipped, {len(outcome.failed)} failed) "
        f"into {spec.out}; "
        f"read them with data.streams.NAME: {{dir: {spec.out}, dim: 2304, feat_stride: {grid.stride}, "
        f"num_frames: {grid.num_frames}}}" + ("" if grid.fps is None else f" at {grid.fps:g} fps")
    )
    for video_id, reason in sorted(outcome.failed.items()):
        console.say(f"failed: {video_id}: {reason}")
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    run_command(main)
