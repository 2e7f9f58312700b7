"""Frame geometry and the backbone's input: short-side resize, centre crop, normalisation, two pathways.

Frames travel as uint8 RGB ``[H, W, 3]`` (a quarter of float32's bytes between decoder and model);
they become floats only in :func:`to_pathways`, on the model's device.
"""

from __future__ import annotations

import numpy as np
import torch

from localization.video.slowfast import ALPHA

MEAN = 0.45  # Kinetics-400 SlowFast's input normalisation, per channel
STD = 0.225


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``short_side`` and the aspect ratio kept (rounded)."""
    if width <= height:
        return short_side, max(short_side, round(height * short_side / width))
    return max(short_side, round(width * short_side / height)), short_side


def centre_crop(frame: np.ndarray, crop: int) -> np.ndarray:
    """The central ``crop`` x ``crop`` window of an ``[H, W, C]`` frame (a view, no copy)."""
    top = (frame.shape[0] - crop) // 2
    left = (frame.shape[1] - crop) // 2
    return frame[top : top + crop, left : left + crop]


def to_pathways(clips: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[B, T, H, W, 3]`` -> (slow ``[B, 3, T/4, H, W]``, fast ``[B, 3, T, H, W]``): RGB in [0, 1],
    normalised with mean 0.45 / std 0.225; slow is every 4th fast frame."""
    fast = clips.permute(0, 4, 1, 2, 3).to(dtype).div_(255.0).sub_(MEAN).div_(STD)
    return fast[:, :, ::ALPHA].contiguous(), fast
