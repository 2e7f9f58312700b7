"""Training-loader throughput and memory on a FineAction-sized synthetic feature set.

    python benchmarks/data_loading.py [--videos 200] [--epochs 2] [--batch-size 4] [--dir DIR]

Writes ``--videos`` videos of random I3D-like [T, 2048] and SlowFast-like [T-1, 2304] float32
features (T log-normal, median ~180 steps, tail to a few thousand, like FineAction at stride 16)
into a temporary folder (about 17 KB per step, so ~1 GB for 200 videos; removed afterwards unless
``--dir`` is given), then, for each of {no cache, cache} x {0, 2 workers}, times full epochs of
the training loader (random crops to max_seq_len 2304, collate) in a fresh process and reports
videos per second per epoch and the peak RSS of the main process and of the largest worker.

The files were just written, so they are in the OS page cache: the numbers are for a warm disk.
Torch runs one intra-op thread in every process. One markdown table row per setting is printed,
with the 1-minute load average before it (the numbers mean little on a busy machine).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STREAMS = {"i3d": (2048, 16), "slowfast": (2304, 32)}  # dim, frames per clip
FPS = 30.0


def write_dataset(root: Path, videos: int, seed: int = 0) -> dict:
    """Random features + a FineAction-style annotation file; returns size facts."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(180), 1.0, size=videos)), 16, 5000).astype(int)
    widest = max(dim for dim, _ in STREAMS.values())
    block = rng.standard_normal((int(lengths.max()) + 1, widest), dtype=np.float32)  # (T_max, C)
    for name in STREAMS:
        (root / name).mkdir(parents=True, exist_ok=True)
    database = {}
    for i, steps in enumerate(lengths.tolist()):
        video_id = f"v_{i:08d}"
        offset = int(rng.integers(0, 64))  # different content per video without generating it anew
        for name, (dim, frames) in STREAMS.items():
            rows = steps - (frames // 16 - 1)  # a 32-frame stream has one step fewer
            np.save(root / name / f"{video_id}.npy", np.roll(block[:rows, :dim], offset, axis=0))
        duration = (steps * 16 + 16) / FPS
        starts = np.sort(rng.uniform(0, duration * 0.8, size=3))
        database[video_id] = {
            "subset": "training",
            "duration": duration,
            "fps": FPS,
            "annotations": [
                {"segment": [float(s), float(min(s + rng.uniform(0.5, 15), duration))], "label": f"c{k}", "label_id": k}
                for k, s in enumerate(starts)
            ],
        }
    (root / "annotations.json").write_text(json.dumps({"database": database}))
    size = sum(f.stat().st_size for f in root.rglob("*.npy"))
    return {
        "videos": videos,
        "median_steps": float(np.median(lengths)),
        "max_steps": int(lengths.max()),
        "disk_gb": size / 1e9,
    }


def run_setting(root: Path, cache: bool, workers: int, epochs: int, batch_size: int) -> dict:
    """Time `epochs` epochs of the training loader in this process (call in a fresh process)."""
    import torch

    from localization.config import DataConfig, StreamConfig
    from localization.data.annotations import load_subset
    from localization.data.dataset import TrainingDataset, build_loader

    torch.set_num_threads(1)  # as inside a DataLoader worker; intra-op threads only add noise here
    streams = {
        name: StreamConfig(dir=str(root / name), dim=dim, num_frames=frames) for name, (dim, frames) in STREAMS.items()
    }
    cfg = DataConfig(
        annotations=str(root / "annotations.json"),
        streams=streams,
        features=list(STREAMS),
        max_seq_len=2304,
        cache_features=cache,
    )
    started = time.perf_counter()
    dataset = TrainingDataset(cfg, load_subset(cfg, "training"), seed=0)
    build_s = time.perf_counter() - started
    loader = build_loader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, seed=0, pad_multiple=32, drop_last=False
    )
    rates = []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        started = time.perf_counter()
        for _ in loader:
            pass
        rates.append(len(dataset) / (time.perf_counter() - started))
    del loader  # joins the persistent workers, so their peak RSS is counted in RUSAGE_CHILDREN
    gc.collect()
    return {
        "build_s": build_s,
        "videos_per_s": rates,
        "main_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per setting (the 1st fills the cache)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dir", type=Path, help="write the data here and keep it (default: a temp dir)")
    parser.add_argument("--run", nargs=2, metavar=("CACHE", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # child process: one setting
        result = run_setting(args.dir, args.run[0] == "1", int(args.run[1]), args.epochs, args.batch_size)
        print(json.dumps(result))
        return
    root = args.dir or Path(tempfile.mkdtemp(prefix="data_loading_"))
    try:
        started = time.perf_counter()
        facts = write_dataset(root, args.videos)
        print(
            f"# {facts['videos']} videos, median {facts['median_steps']:g} steps, "
            f"max {facts['max_steps']}, {facts['disk_gb']:.2f} GB on disk, "
            f"written in {time.perf_counter() - started:.1f} s ({root})"
        )
        epochs_head = " | ".join(f"epoch {e + 1} videos/s" for e in range(args.epochs))
        print(
            f"| videos | cache | workers | dataset build s | {epochs_head} | main peak RSS MB | "
            "worker peak RSS MB | load avg |"
        )
        print("|---" * (7 + args.epochs) + "|")
        for cache in (False, True):
            for workers in (0, 2):
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--run",
                        str(int(cache)),
                        str(workers),
                        "--dir",
                        str(root),
                        "--epochs",
                        str(args.epochs),
                        "--batch-size",
                        str(args.batch_size),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                r = json.loads(out.strip().splitlines()[-1])
                load = os.getloadavg()[0]
                rates = " | ".join(f"{v:.1f}" for v in r["videos_per_s"])
                worker = f"{r['worker_peak_mb']:.0f}" if workers else "-"
                print(
                    f"| {args.videos} | {'on' if cache else 'off'} | {workers} | {r['build_s']:.2f} | "
                    f"{rates} | {r['main_peak_mb']:.0f} | {worker} | {load:.1f} |",
                    flush=True,
                )
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
