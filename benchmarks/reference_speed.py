"""The model's own compute beside the reference ActionFormer release, interleaved step by step.

    git clone https://github.com/happyharrycn/actionformer_release /some/where   # not built, not vendored
    python benchmarks/reference_speed.py --reference-dir /some/where --threads 2 --pairs 8 \\
        [--cases train,infer2304,infer14400] [--json out.json]

Both models hold the same parameters (the reference's state dict loaded into ours), THUMOS dims
(input 2048, 512-d, window 19, 20 classes, max_seq_len 2304). Cases: a training step (forward,
targets, losses, backward) of 2 full-length videos at T 2304 (the losses are compared first with
stochastic depth off); inference of one video at T 2304 and 14,400 (forward to the heads; the
reference needs a multiple of 576 there, and an enlarged point buffer). One step of each
implementation in turn, the order alternating; wall and process-CPU medians. The reference's NMS
extension is post-processing only: a stub module stands in for it, nothing is compiled.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from collections.abc import Callable

import torch

from localization.config.schema import ModelConfig
from localization.model import ActionFormer, make_points
from localization.training.losses import LossNormalizer, compute_losses
from localization.training.targets import assign_targets

T_TRAIN, BATCH, NUM_CLASSES, INPUT = 2304, 2, 20, 2048


def load_reference(reference_dir: str) -> tuple[torch.nn.Module, dict]:
    """The reference's THUMOS model (its own config file), built from its checkout as it is."""
    sys.modules.setdefault("nms_1d_cpu", types.ModuleType("nms_1d_cpu"))  # NMS: post-processing only
    sys.path.insert(0, reference_dir)
    from libs.core.config import load_config
    from libs.modeling import make_meta_arch

    cfg = load_config(f"{reference_dir}/configs/thumos_i3d.yaml")
    cfg["model"]["max_buffer_len_factor"] = 8.0  # 2304 * 8 >= 14,400: the default 6 fails there
    return make_meta_arch(cfg["model_name"], **cfg["model"]), cfg


def training_videos(gen: torch.Generator) -> list[dict]:
    videos = []
    for _ in range(BATCH):
        starts = torch.rand(6, generator=gen) * (T_TRAIN - 60)
        segments = torch.stack([starts, starts + 4 + torch.rand(6, generator=gen) * 50], 1)
        videos.append(
            {
                "video_id": "v",
                "feats": torch.randn(INPUT, T_TRAIN, generator=gen),
                "segments": segments,
                "labels": torch.randint(0, NUM_CLASSES, (6,), generator=gen),
                "fps": 30.0,
                "duration": T_TRAIN * 4 / 30,
                "feat_stride": 4,
                "feat_num_frames": 16,
            }
        )
    return videos


def set_drop_path(model: torch.nn.Module, prob: float) -> None:
    for module in model.modules():
        if hasattr(module, "drop_prob"):
            module.drop_prob = prob


def interleave(name: str, fns: dict[str, Callable[[], object]], pairs: int) -> dict:
    """One call of each function in turn (the order alternating), ``pairs`` rounds after a warm-up."""
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    labels = list(fns)
    for i in range(pairs):
        for label in labels if i % 2 == 0 else labels[::-1]:
            w0, c0 = time.perf_counter(), time.process_time()
            fns[label]()
            wall[label].append(time.perf_counter() - w0)
            cpu[label].append(time.process_time() - c0)
    for kind, values in (("wall", wall), ("CPU", cpu)):
        med = {k: statistics.median(v) for k, v in values.items()}
        print(
            f"{name}: {kind} median ours {med['ours']:.3f} s, reference {med['ref']:.3f} s, "
            f"{med['ours'] / med['ref']:.2f}x"
        )
    return {"wall": wall, "cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-dir", required=True, help="a checkout of actionformer_release")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--cases", default="train,infer2304,infer14400")
    parser.add_argument("--json", default="", help="also write every timing here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ref, ref_cfg = load_reference(args.reference_dir)
    train_cfg = ref_cfg["model"]["train_cfg"]
    cfg = ModelConfig(embd_dim=512, fpn_dim=512, head_dim=512, n_mha_win_size=19, droppath=train_cfg["droppath"])
    ours = ActionFormer(cfg, INPUT, NUM_CLASSES, T_TRAIN)
    ours.load_state_dict(ref.state_dict(), strict=True)
    print(
        f"parameters: ours {sum(p.numel() for p in ours.parameters()):,}, reference "
        f"{sum(p.numel() for p in ref.parameters()):,}; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    gen = torch.Generator().manual_seed(1)
    videos = training_videos(gen)
    feats = torch.stack([v["feats"] for v in videos])
    masks = torch.ones(BATCH, 1, T_TRAIN, dtype=torch.bool)

    def ours_train() -> dict[str, float]:
        out = ours(feats, masks)
        points = make_points([m.shape[1] for m in out.masks], ours.strides, cfg.regression_range)
        segments, labels = [v["segments"] for v in videos], [v["labels"] for v in videos]
        cls_t, reg_t = assign_targets(
            points, segments, labels, NUM_CLASSES, cfg.center_sample, cfg.center_sample_radius
        )
        losses = compute_losses(out, cls_t, reg_t, LossNormalizer(cfg.init_loss_norm), cfg)
        losses["final_loss"].backward()
        ours.zero_grad(set_to_none=True)
        return {k: float(losses[k].detach()) for k in ("cls_loss", "reg_loss", "final_loss")}

    def ref_train() -> dict[str, float]:
        ref.loss_normalizer = train_cfg["init_loss_norm"]  # the same normaliser every step
        losses = ref(videos)
        losses["final_loss"].backward()
        ref.zero_grad(set_to_none=True)
        return {k: float(losses[k].detach()) for k in ("cls_loss", "reg_loss", "final_loss")}

    def ours_infer(x: torch.Tensor, m: torch.Tensor) -> list[torch.Tensor]:
        out = ours(x, m)
        make_points([k.shape[1] for k in out.masks], ours.strides, cfg.regression_range)
        return out.cls_logits + out.offsets

    def ref_infer(x: torch.Tensor, m: torch.Tensor) -> list[torch.Tensor]:
        f, k = ref.neck(*ref.backbone(x, m))  # its forward up to the heads
        ref.point_generator(f)
        return [t.transpose(1, 2) for t in list(ref.cls_head(f, k)) + list(ref.reg_head(f, k))]

    results: dict = {}
    cases = args.cases.split(",")
    if "train" in cases:
        ours.train(), ref.train()
        set_drop_path(ours, 0.0), set_drop_path(ref, 0.0)
        results["losses"] = {"ours": ours_train(), "ref": ref_train()}
        print(f"losses without stochastic depth: {results['losses']}")
        set_drop_path(ours, cfg.droppath), set_drop_path(ref, cfg.droppath)
        results["train"] = interleave("train step T 2304 batch 2", {"ours": ours_train, "ref": ref_train}, args.pairs)
    ours.eval(), ref.eval()
    for length in (2304, 14400):
        if f"infer{length}" not in cases:
            continue
        x = torch.randn(1, INPUT, length, generator=gen)
        m = torch.ones(1, 1, length, dtype=torch.bool)
        with torch.no_grad():
            diff = max((a - b).abs().max().item() for a, b in zip(ours_infer(x, m), ref_infer(x, m), strict=True))
            print(f"inference T {length}: max |ours - reference| over logits and offsets {diff:.2e}")
            timings = interleave(
                f"inference T {length}",
                {"ours": lambda x=x, m=m: ours_infer(x, m), "ref": lambda x=x, m=m: ref_infer(x, m)},
                args.pairs,
            )
        results[f"infer{length}"] = {**timings, "max_abs_diff": diff}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
