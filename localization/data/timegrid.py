"""Seconds <-> feature-grid conversion (ActionFormer convention, reference section 4.3), and how
each sampling rule sets a video's grid.

Feature step ``i`` sees frames ``[i*feat_stride, i*feat_stride + num_frames)``, so its grid
coordinate is the centre of that clip: grid 0 lies ``0.5*num_frames`` frames after time 0. Small
negative grid values (an action that starts before the first clip's centre) are valid.
The formulas are plain arithmetic, so floats, numpy arrays and torch tensors all work.

A :class:`Grid` is the (stride, clip) pair of one video's features in frames; both may be
fractional. The sampling rules:

- native: ``feat_stride`` and ``num_frames`` as configured;
- ``downsample: k`` keeps every k-th step: stride x k, same clip;
- ``feat_stride: auto`` (fixed-length features such as ``i3d_feature_100``): a video of F frames
  and T steps has stride = clip = F / T (ActionFormer's convention for resized features);
- ``data.resize_length: N`` resamples T steps to N by linear interpolation with
  ``align_corners=False`` (OpenTAD's resize recipe): new stride s' = s*T/N and clip c + s' - s, so
  the first and last step still span the same frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np

Times = TypeVar("Times", float, np.ndarray)


@dataclass(frozen=True)
class Grid:
    """Where one video's feature steps sit: step i is centred at frame ``i*stride + clip/2``."""

    stride: float  # frames between consecutive steps
    clip: float  # frames seen by one step

    def downsampled(self, k: int) -> Grid:
        """Every k-th step kept."""
        return Grid(self.stride * k, self.clip)

    def resized(self, steps: int, length: int) -> Grid:
        """``steps`` steps linearly resampled to ``length`` (align_corners=False)."""
        stride = self.stride * steps / length
        return Grid(stride, self.clip + stride - self.stride)

    def span(self, steps: int) -> float:
        """Frames covered from the first step's start to the last step's end."""
        return (steps - 1) * self.stride + self.clip


def auto_grid(frames: float, steps: int) -> Grid:
    """Fixed-length features: F frames in T steps, stride = clip = F / T."""
    return Grid(frames / steps, frames / steps)


def feat_offset(feat_stride: float, num_frames: float) -> float:
    """Half a clip in grid units: the distance of the first feature's centre from time 0."""
    return 0.5 * num_frames / feat_stride


def seconds_to_grid(t: Times, fps: float, feat_stride: float, num_frames: float) -> Times:
    """Seconds -> feature-grid units: ``(t*fps - 0.5*num_frames) / feat_stride``."""
    return (t * fps - 0.5 * num_frames) / feat_stride


def grid_to_seconds(g: Times, fps: float, feat_stride: float, num_frames: float) -> Times:
    """Feature-grid units -> seconds: ``(g*feat_stride + 0.5*num_frames) / fps``."""
    return (g * feat_stride + 0.5 * num_frames) / fps
