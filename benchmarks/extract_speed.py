"""Feature extraction speed on the same files: decoding, the model, and the whole Ray pipeline.

    python benchmarks/extract_speed.py                      # the synthetic videos, seeded R50 at 32 x 32
    python benchmarks/extract_speed.py --hd-decode          # also: decoding 1280 x 720 H.264 to 224 x 224
    python benchmarks/extract_speed.py --model-only --crop 224 --batch 2 --clips 4   # the real frame size, CPU
    python benchmarks/extract_speed.py --device cuda --model-only --crop 224 --batch 16   # a GPU's clips/s (bf16)

- decode: frames/s of one decoding worker (one process, one FFmpeg thread): decode, resize, crop,
  cut the clip grid; this is what one CPU core gives the model;
- model: clips/s of the backbone on pre-decoded clips, on CPU with 1 and 2 torch threads (bf16 on CUDA);
- pipeline: ``runner.extraction`` on a local Ray of 2 CPUs (one decoding worker, one model thread),
  videos/s and clips/s from the model loaded to the last file written. Decoding and the model
  overlap, so the pipeline should keep within 20 % of the slower of the two (both on one core).

Rounds alternate (decode, model, pipeline, then again), each figure is the median over ``--repeat``
rounds; ``uptime``'s load is printed before and after, since other work on the machine skews all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from localization.video.extract import ClipEncoder, ClipStream
from localization.video.settings import BackboneSettings, FrameSettings, StreamSettings
from localization.video.synthetic import EXTRACTION, generate_videos
from runner.extraction.job import run as run_extraction
from runner.extraction.spec import ExtractFile, ExtractionResources, ExtractionTracking
from runner.tune import cluster

HD_SIZE, HD_FRAMES = (1280, 720), 150
# FineAction: ~16,732 videos x 152.9 s mean ~ 711 hours; at 30 fps, 32-frame clips every 16 frames
FINEACTION_SECONDS = 16_732 * 152.9
FINEACTION_CLIPS = FINEACTION_SECONDS * 30 / 16


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def time_decode(files: list[Path], settings: StreamSettings, batch: int) -> tuple[float, int, int]:
    """(seconds, frames, clips) to decode every file into clip batches, one process, one FFmpeg thread."""
    started = time.perf_counter()
    frames = clips = 0
    for path in files:
        stream = ClipStream(path, settings, batch)
        clips += sum(len(b) for b in stream)
        frames += stream.reader.frames
    return time.perf_counter() - started, frames, clips


def time_model(encoder: ClipEncoder, batches: list[np.ndarray], threads: int) -> float:
    """Seconds for the encoder to turn every batch into features (after one warm-up batch)."""
    torch.set_num_threads(threads)
    encoder(batches[0])
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for batch in batches:
        encoder(batch)
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def time_pipeline(files_dir: Path, settings: StreamSettings, batch: int, root: Path, round_: int) -> tuple[float, int]:
    """(seconds, clips) of runner.extraction on all files: one decoding worker, one model thread."""
    spec = ExtractFile(
        videos=files_dir,
        out=root / f"out{round_}",
        stream=replace(settings),
        resources=ExtractionResources(gpu=0, cpu=1, model_threads=1, batch_size=batch),
        tracking=ExtractionTracking(uri=f"sqlite:///{root / 'mlflow.db'}"),
    )
    outcome = run_extraction(spec, echo=lambda _: None)
    assert not outcome.failed, outcome.failed
    return outcome.seconds, outcome.clips


def hd_video(path: Path, frames: int = HD_FRAMES) -> Path:
    """A 1280 x 720, 30 fps H.264 clip of moving noise blocks (decoding cost near a real video's)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(HD_SIZE[1] // 8, HD_SIZE[0] // 8, 3), dtype=np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(30))
        stream.width, stream.height, stream.pix_fmt = *HD_SIZE, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for i in range(frames):
            frame = np.kron(np.roll(base, i, axis=1), np.ones((8, 8, 1), dtype=np.uint8))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=12, help="synthetic videos (5-10 s each)")
    parser.add_argument("--repeat", type=int, default=3, help="alternated rounds; figures are medians")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--clips", type=int, default=64, help="clips the model is timed on, per round")
    parser.add_argument("--crop", type=int, default=EXTRACTION.frames.crop, help="short side = crop")
    parser.add_argument("--backbone", default="slowfast_r50", choices=["slowfast_r50", "slowfast_r101"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model-only", action="store_true", help="only the model's clips/s (e.g. on a GPU)")
    parser.add_argument("--hd-decode", action="store_true", help="also decode a 1280 x 720 video to 256 / 224")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    settings = replace(EXTRACTION, frames=FrameSettings(args.crop, args.crop), backbone=BackboneSettings(args.backbone))
    report: dict[str, Any] = {
        "command": " ".join(["python benchmarks/extract_speed.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": load(),
    }
    root = Path(tempfile.mkdtemp(prefix="extract-speed-"))
    generate_videos(root, seed=0, videos=args.videos)
    files = sorted((root / "videos").iterdir())
    encoder = ClipEncoder(settings.backbone, args.device)
    batches = list(ClipStream(files[0], settings, args.batch))
    while sum(len(b) for b in batches) < args.clips:  # enough clips to time, whatever the file
        batches += batches
    batches = batches[: max(1, -(-args.clips // args.batch))]
    rounds: dict[str, list[float]] = {}
    info = None if args.model_only else cluster.start(num_cpus=2)
    try:
        for round_ in range(args.repeat):
            if not args.model_only:
                seconds, frames, clips = time_decode(files, settings, args.batch)
                rounds.setdefault("decode_frames_per_s", []).append(frames / seconds)
                rounds.setdefault("decode_s", []).append(seconds)
                report["frames"], report["clips"] = frames, clips
            clips_timed = sum(len(b) for b in batches)
            for threads in (1, 2) if args.device == "cpu" else (0,):
                seconds = time_model(encoder, batches, threads or torch.get_num_threads())
                rounds.setdefault(f"model_clips_per_s_{threads or 'gpu'}", []).append(clips_timed / seconds)
            if not args.model_only:
                seconds, clips = time_pipeline(root / "videos", settings, args.batch, root, round_)
                rounds.setdefault("pipeline_s", []).append(seconds)
                rounds.setdefault("pipeline_videos_per_s", []).append(len(files) / seconds)
                rounds.setdefault("pipeline_clips_per_s", []).append(clips / seconds)
            print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in rounds.items()), flush=True)
    finally:
        if info is not None:
            cluster.stop(info)
    report["medians"] = {key: statistics.median(values) for key, values in rounds.items()}
    report["rounds"] = rounds
    m = report["medians"]
    if not args.model_only:
        decode_s = report["frames"] / m["decode_frames_per_s"]
        model_s = report["clips"] / m["model_clips_per_s_1"]
        report["slower_stage_s"] = max(decode_s, model_s)
        report["pipeline_over_slower"] = m["pipeline_s"] / report["slower_stage_s"]
    if args.hd_decode:
        hd = hd_video(root / "hd.mp4")
        hd_settings = replace(settings, frames=FrameSettings(256, 224))
        seconds = statistics.median(time_decode([hd], hd_settings, args.batch)[0] for _ in range(args.repeat))
        report["hd_decode_frames_per_s"] = HD_FRAMES / seconds
    report["load_after"] = load()
    print(json.dumps({k: v for k, v in report.items() if k != "rounds"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
