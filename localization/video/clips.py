"""The clip grid: a video of F frames gives T = floor((F - clip) / stride) + 1 clips (at least 1).

Step t covers frames [t * stride, t * stride + clip): ActionFormer's convention for its SlowFast
and I3D features, so ``data.streams.NAME: {feat_stride: stride, num_frames: clip}`` places every
step at its true time. A video shorter than one clip still gives one step, its last frame repeated.
Clips are cut from a stream of frames, holding only the last ``clip`` frames. The backbone sees a
fixed number of frames per clip (32 for SlowFast 8x8): ``sample_indices`` spreads them evenly over
the clip (every frame of a 32-frame clip, every 2nd of a 64-frame clip, each twice in a 16-frame
one), so any grid, such as one matched to another stream, can be extracted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np

from localization.errors import DataError


def num_steps(num_frames: int, clip: int, stride: int) -> int:
    """T = floor((F - clip) / stride) + 1, at least 1 (a short video is padded to one clip)."""
    return max(1, (num_frames - clip) // stride + 1)


def clip_starts(num_frames: int, clip: int, stride: int) -> np.ndarray:
    """First frame of each step."""
    return np.arange(num_steps(num_frames, clip, stride)) * stride


def sample_indices(clip: int, samples: int) -> np.ndarray:
    """``samples`` frame offsets spread evenly over a clip of ``clip`` frames (floor(i * clip / samples))."""
    return np.arange(samples) * clip // samples


def cut_clips(frames: Iterable[np.ndarray], clip: int, stride: int, samples: int) -> Iterator[np.ndarray]:
    """``[samples, H, W, C]`` arrays, one per step of the grid, as the frames stream in; a video shorter
    than a clip gives one clip padded with its last frame. DataError if there is no frame at all."""
    picks = sample_indices(clip, samples)
    window: deque[np.ndarray] = deque(maxlen=clip)
    count = 0
    for frame in frames:
        window.append(frame)
        count += 1
        start = count - clip
        if start >= 0 and start % stride == 0:
            yield np.stack([window[i] for i in picks])
    if count == 0:
        raise DataError("no frames decoded")
    if count < clip:
        padded = list(window) + [window[-1]] * (clip - count)
        yield np.stack([padded[i] for i in picks])


def batched(clips: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Stacks of up to ``batch_size`` clips: ``[B, clip, H, W, C]``."""
    batch: list[np.ndarray] = []
    for clip in clips:
        batch.append(clip)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)
