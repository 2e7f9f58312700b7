"""Seconds <-> feature-grid conversion (ActionFormer convention, reference section 4.3).

Feature step ``i`` sees frames ``[i*feat_stride, i*feat_stride + num_frames)``, so its grid
coordinate is the centre of that clip: grid 0 lies ``0.5*num_frames`` frames after time 0. Small
negative grid values (an action that starts before the first clip's centre) are valid.
The formulas are plain arithmetic, so floats, numpy arrays and torch tensors all work.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

Times = TypeVar("Times", float, np.ndarray)


def feat_offset(feat_stride: int, num_frames: int) -> float:
    """Half a clip in grid units: the distance of the first feature's centre from time 0."""
    return 0.5 * num_frames / feat_stride


def seconds_to_grid(t: Times, fps: float, feat_stride: int, num_frames: int) -> Times:
    """Seconds -> feature-grid units: ``(t*fps - 0.5*num_frames) / feat_stride``."""
    return (t * fps - 0.5 * num_frames) / feat_stride


def grid_to_seconds(g: Times, fps: float, feat_stride: int, num_frames: int) -> Times:
    """Feature-grid units -> seconds: ``(g*feat_stride + 0.5*num_frames) / fps``."""
    return (g * feat_stride + 0.5 * num_frames) / fps
