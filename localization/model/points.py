"""Candidate points of the feature pyramid, generated for any lengths (no fixed buffer)."""

from __future__ import annotations

import torch
from torch import Tensor


def make_points(
    lengths: list[int],
    strides: list[int],
    regression_range: list[list[float]],
    device: torch.device | str | None = None,
) -> Tensor:
    """(sum T_l, 4) float32 rows [t, lo, hi, stride] for every pyramid location, level by level.

    t = i * stride_l is in level-0 grid units (no half-stride offset, as the reference); lo/hi are
    the level's regression range, also in level-0 grid units. Unlike the reference's buffered
    generator (max_seq_len * max_buffer_len_factor points), nothing caps the video length.
    """
    if not len(lengths) == len(strides) == len(regression_range):
        raise ValueError(
            f"make_points: {len(lengths)} lengths, {len(strides)} strides and "
            f"{len(regression_range)} regression ranges must match"
        )
    levels = []
    for length, stride, (lo, hi) in zip(lengths, strides, regression_range, strict=True):
        t = torch.arange(length, dtype=torch.float32, device=device) * stride  # (T_l,)
        info = torch.tensor([lo, hi, stride], dtype=torch.float32, device=device)  # (3,)
        levels.append(torch.cat([t[:, None], info.expand(length, 3)], dim=1))  # (T_l, 4)
    return torch.cat(levels, dim=0)  # (sum T_l, 4)
