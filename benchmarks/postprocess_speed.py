"""Post-processing speed per video on a FineAction-sized case (no model, synthetic outputs).

Videos of 180..2304 feature steps (padded to a multiple of 32), 6 levels with strides 1..32,
106 classes, pre_nms_topk 5000 per level, max_seg_num 100. Two score regimes:

* dense: logits near the classifier prior (an early-training model): every position passes
  pre_nms_thresh, so every level hands 5000 candidates (up to ~30k per video) to NMS;
* sparse: logits mostly far below the threshold (a trained model).

Reports the median milliseconds per video of ``select_candidates`` and ``batched_nms``: wall
clock, and CPU time of this process (steadier on a shared machine; equal to wall clock with one
thread on an idle one).

    python benchmarks/postprocess_speed.py [--videos 40] [--device cpu] [--threads 1] [--agnostic]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from localization.config import TestConfig
from localization.inference.postprocess import batched_nms, select_candidates

STRIDES = [1, 2, 4, 8, 16, 32]
NUM_CLASSES = 106


def fake_outputs(length: int, regime: str, gen: torch.Generator, device: str):
    """Per-level (logits (T_l, K), offsets (T_l, 2), masks (T_l,)) and points (P, 4) of one video."""
    padded = -(-length // STRIDES[-1]) * STRIDES[-1]
    mean, spread = (-4.6, 1.0) if regime == "dense" else (-12.0, 2.0)
    logits, offsets, masks, points = [], [], [], []
    for stride in STRIDES:
        t_l = padded // stride
        logits.append(mean + spread * torch.randn(t_l, NUM_CLASSES, generator=gen))
        offsets.append(torch.exp(0.5 + 0.8 * torch.randn(t_l, 2, generator=gen)))
        masks.append(torch.arange(t_l) * stride < length)
        t = torch.arange(t_l, dtype=torch.float32) * stride
        lo, hi, st = torch.zeros_like(t), torch.full_like(t, 1e4), torch.full_like(t, stride)
        points.append(torch.stack([t, lo, hi, st], 1))  # (T_l, 4); the ranges are not used here
    move = [[x.to(device) for x in group] for group in (logits, offsets, masks)]
    return (*move, torch.cat(points).to(device))


def timed(fn):
    """(result, wall ms, CPU ms)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--agnostic", action="store_true", help="class-agnostic Soft-NMS + voting 0.75")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(TestConfig(), multiclass_nms=not args.agnostic)
    gen = torch.Generator().manual_seed(args.seed)
    lengths = torch.randint(180, 2305, (args.videos,), generator=gen).tolist()
    print(
        f"device={args.device} torch_threads={torch.get_num_threads()} videos={args.videos} "
        f"classes={NUM_CLASSES} nms={cfg.nms_method} multiclass={cfg.multiclass_nms} "
        f"topk={cfg.pre_nms_topk} max_seg_num={cfg.max_seg_num}"
    )
    for regime in ("dense", "sparse"):
        rows, counts = [], []  # per video: select wall, select cpu, nms wall, nms cpu
        for i, length in enumerate(lengths):
            outputs = fake_outputs(length, regime, gen, args.device)
            cands, *t_select = timed(lambda o=outputs: select_candidates(*o, cfg))
            _, *t_nms = timed(lambda c=cands: batched_nms(c, cfg))
            if i:  # the first video warms up allocators / kernels
                rows.append([*t_select, *t_nms, t_select[0] + t_nms[0], t_select[1] + t_nms[1]])
                counts.append(len(cands))
        med = [statistics.median(col) for col in zip(*rows, strict=True)]
        print(
            f"{regime:6s} candidates/video median {statistics.median(counts):6.0f} | median ms/video "
            f"wall (cpu): select {med[0]:6.2f} ({med[1]:6.2f})  nms {med[2]:6.2f} ({med[3]:6.2f})  "
            f"total {med[4]:6.2f} ({med[5]:6.2f})"
        )


if __name__ == "__main__":
    main()
