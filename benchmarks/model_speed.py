"""Training-step speed of ActionFormer: batches padded to their longest video vs to max_seq_len.

    python benchmarks/model_speed.py                     # CPU, FineAction-size model (4352 -> 512)
    python benchmarks/model_speed.py --device cuda --bf16
    python benchmarks/model_speed.py --attention         # also: banded vs SDPA blocks vs dense band attention

A step is forward + backward of a surrogate loss over every output (no targets needed).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from localization.config.schema import ModelConfig, inference_div_factor
from localization.model import ActionFormer
from localization.model.attention import blocked_attention, local_attention


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--input-dim", type=int, default=4352, help="i3d 2048 + slowfast 2304")
    parser.add_argument("--dim", type=int, default=512, help="embedding / FPN / head width")
    parser.add_argument("--max-seq-len", type=int, default=2304)
    parser.add_argument(
        "--lengths",
        default="300,520,910,1400",
        help="valid lengths of the videos in one batch (batch size = their count)",
    )
    parser.add_argument("--classes", type=int, default=106)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--attention", action="store_true", help="also time the attention kernel")
    return parser.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model: ActionFormer, feats: torch.Tensor, masks: torch.Tensor, args) -> float:
    """Seconds per forward + backward step (mean over args.iters after args.warmup)."""
    device = feats.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    times = []
    for step in range(args.warmup + args.iters):
        sync(device)
        start = time.perf_counter()
        with autocast:
            out = model(feats, masks)
            loss = sum(x.float().square().mean() for x in out.cls_logits + out.offsets)
        loss.backward()
        model.zero_grad(set_to_none=True)
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def model_speed(args, device: torch.device) -> None:
    cfg = ModelConfig(embd_dim=args.dim, fpn_dim=args.dim, head_dim=args.dim)
    model = ActionFormer(cfg, args.input_dim, args.classes, args.max_seq_len).to(device).train()
    lengths = [int(n) for n in args.lengths.split(",")]
    div = inference_div_factor(cfg)
    padded_max = math.ceil(max(lengths) / div) * div
    print(
        f"model: {sum(p.numel() for p in model.parameters()):,} params, input {args.input_dim}, "
        f"batch {len(lengths)} with valid lengths {lengths}, device {device}, bf16 {args.bf16}"
    )
    for name, total in (("pad to max_seq_len", args.max_seq_len), ("pad to batch max", padded_max)):
        feats = torch.zeros(len(lengths), args.input_dim, total, device=device)
        masks = torch.arange(total, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
        for i, n in enumerate(lengths):
            feats[i, :, :n] = torch.randn(args.input_dim, n, device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = time_steps(model, feats, masks[:, None, :], args)
        memory = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda" else ""
        print(f"  {name:<20} T={total:5d}: {seconds:.3f} s/step, {1 / seconds:.3f} steps/s{memory}")


def attention_speed(args, device: torch.device) -> None:
    """Level-0 attention of one block: banded O(T*w) kernel vs dense attention with a band mask."""
    batch, heads, length, dim, window = 4, 4, args.max_seq_len, args.dim // 4, 19
    q, k, v = (torch.randn(batch, heads, length, dim, device=device, requires_grad=True) for _ in range(3))
    kv_mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    idx = torch.arange(length, device=device)
    band = (idx[:, None] - idx[None, :]).abs() <= window // 2  # (T, T)

    def local() -> torch.Tensor:
        return local_attention(q, k, v, kv_mask, window)

    def blocks() -> torch.Tensor:
        return blocked_attention(q, k, v, kv_mask, window)

    def dense() -> torch.Tensor:
        mask = band & kv_mask[:, None, None]  # (B, 1, T, T)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    for name, fn in (("local (banded)", local), ("SDPA blocks", blocks), ("dense band", dense)):
        times = []
        for step in range(args.warmup + args.iters):
            sync(device)
            start = time.perf_counter()
            fn().sum().backward()
            sync(device)
            if step >= args.warmup:
                times.append(time.perf_counter() - start)
        print(
            f"  attention {name:<15} B={batch} H={heads} T={length} d={dim} w={window}: "
            f"{sum(times) / len(times) * 1000:.1f} ms fwd+bwd"
        )


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model_speed(args, device)
    if args.attention:
        attention_speed(args, device)


if __name__ == "__main__":
    main()
