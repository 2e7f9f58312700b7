"""Training iterations per second and peak memory for the recipe's FineAction-sized config, and
inference time for the longest FineAction video.

    python benchmarks/training_speed.py                      # CPU
    python benchmarks/training_speed.py --device cuda        # bf16 autocast as configured

The config is configs/fineaction.yaml (I3D + SlowFast: input 4352, 512-d, window 19, batch 4,
max_seq_len 2304, 106 classes). Batches hold videos whose lengths follow FineAction's (median
about 180 feature steps, long tail, cropped at 2304) with ~6 random actions each. A step is the
real training step (forward, label assignment, losses, backward, clipping, AdamW, EMA). Two
paddings are timed on the same batches: "batch max" (this project: the longest video of the batch
rounded up to 32) and "max_seq_len" (the reference: every sample padded to 2304).
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable

import numpy as np
import torch

from localization.config.loading import load_config
from localization.config.schema import inference_div_factor
from localization.data.dataset import collate
from localization.device import autocast, resolve_device
from localization.inference.postprocess import postprocess, select_candidates
from localization.model import ActionFormer, make_points
from localization.training.loop import train_step
from localization.training.losses import LossNormalizer
from localization.training.optim import ModelEma, param_groups

NUM_CLASSES = 106
LONGEST_VIDEO_STEPS = 14_208  # ~7,600 s at 30 fps, stride 16, rounded to 32


def fineaction_lengths(rng: np.random.Generator, count: int, max_len: int) -> list[int]:
    """Lognormal lengths with FineAction's median (~180 steps) and long tail, cropped at max_len."""
    return [int(min(max(rng.lognormal(np.log(180), 0.9), 16), max_len)) for _ in range(count)]


def make_batch(
    rng: np.random.Generator, lengths: list[int], dim: int, pad_multiple: int, num_classes: int = NUM_CLASSES
) -> dict:
    items = []
    for length in lengths:
        starts = rng.uniform(0, length - 2, size=6)
        ends = np.minimum(starts + rng.uniform(1, 40, size=6), length - 1)
        items.append(
            {
                "video_id": "v",
                "feats": torch.randn(dim, length),
                "segments": torch.tensor(np.stack([starts, ends], 1), dtype=torch.float32),
                "labels": torch.from_numpy(rng.integers(0, num_classes, size=6)),
                "fps": 30.0,
                "duration": length * 16 / 30,
                "feat_stride": 16,
                "num_frames": 16,
            }
        )
    return collate(items, pad_multiple)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_training(
    cfg,
    device,
    batches: list[dict],
    warmup: int,
    input_dim: int = 4352,
    num_classes: int = NUM_CLASSES,
    wrap: Callable[[torch.nn.Module], Callable] | None = None,
) -> tuple[float, list[float]]:
    """(seconds per step after ``warmup`` untimed steps, every step's final loss) over ``batches``.

    ``wrap`` turns the model into the forward callable (for example ``torch.compile``)."""
    torch.manual_seed(0)
    model = ActionFormer(cfg.model, input_dim, num_classes, cfg.data.max_seq_len).to(device).train()
    forward = wrap(model) if wrap is not None else model
    optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr)
    ema = ModelEma(model, cfg.train.ema_decay)
    normalizer = LossNormalizer(cfg.model.init_loss_norm)
    losses = []
    for i, batch in enumerate(batches):
        if i == warmup:
            sync(device)
            started = time.perf_counter()
        losses.append(train_step(forward, model, batch, device, cfg, optimizer, normalizer, num_classes)[2])
        ema.update()
    sync(device)
    return (time.perf_counter() - started) / (len(batches) - warmup), losses


@torch.no_grad()
def time_longest_video(
    cfg, device, input_dim: int = 4352, steps: int = LONGEST_VIDEO_STEPS, num_classes: int = NUM_CLASSES
) -> tuple[float, float, int]:
    """(forward seconds, post-processing seconds, segments kept) for one whole long video."""
    model = ActionFormer(cfg.model, input_dim, num_classes, cfg.data.max_seq_len).to(device).eval()
    feats = torch.randn(1, input_dim, steps, device=device)
    masks = torch.ones(1, 1, steps, dtype=torch.bool, device=device)
    with autocast(device, cfg.train.bf16):
        model(feats[:, :, :1024], masks[:, :, :1024])  # warm-up
    sync(device)
    started = time.perf_counter()
    with autocast(device, cfg.train.bf16):
        out = model(feats, masks)
    sync(device)
    forward_s = time.perf_counter() - started
    started = time.perf_counter()
    points = make_points([m.shape[1] for m in out.masks], model.strides, cfg.model.regression_range, device)
    candidates = select_candidates(
        [x[0].float() for x in out.cls_logits],
        [x[0].float() for x in out.offsets],
        [m[0] for m in out.masks],
        points,
        cfg.test,
    )
    detections = postprocess(candidates, cfg.test, 30.0, steps * 16 / 30, 16, 16)
    return forward_s, time.perf_counter() - started, len(detections.scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fineaction.yaml")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per padding mode")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--skip-reference", action="store_true", help="do not time max_seq_len padding")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [f"train.device={args.device}"])
    device = resolve_device(cfg.train.device)
    rng = np.random.default_rng(0)
    length_sets = [
        fineaction_lengths(rng, cfg.train.batch_size, cfg.data.max_seq_len) for _ in range(args.steps + args.warmup)
    ]
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch lengths {length_sets}")
    modes = {"batch max": inference_div_factor(cfg.model)}
    if not args.skip_reference:
        modes["max_seq_len"] = cfg.data.max_seq_len
    print("| padding | padded T (mean) | s/step | steps/s | FineAction epoch (2,110 steps) |")
    print("|---|---|---|---|---|")
    for name, multiple in modes.items():
        batch_rng = np.random.default_rng(1)
        batches = [make_batch(batch_rng, lengths, 4352, multiple) for lengths in length_sets]
        seconds, _ = time_training(cfg, device, batches, args.warmup)
        padded = np.mean([b["feats"].shape[-1] for b in batches])
        print(f"| {name} | {padded:.0f} | {seconds:.3f} | {1 / seconds:.2f} | {2110 * seconds / 60:.1f} min |")
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    print(f"peak memory: {peak:.2f} GiB ({'CUDA allocated' if device.type == 'cuda' else 'process RSS'})")
    forward_s, post_s, kept = time_longest_video(cfg, device)
    print(
        f"longest video ({LONGEST_VIDEO_STEPS} steps): forward {forward_s:.2f} s, "
        f"selection + Soft-NMS {post_s * 1000:.0f} ms, {kept} segments kept"
    )


if __name__ == "__main__":
    main()
