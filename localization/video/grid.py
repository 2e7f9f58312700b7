"""Matching another stream's time grid: the clip length and stride whose step counts equal its lengths.

A stream concatenated with another must have the same steps at the same times. When the other
stream's sampling is not published (FineAction's official I3D features), it can still be read off
its files: a video of F frames has T = floor((F - clip) / stride) + 1 steps, so across many videos
of different lengths only the true (stride, clip) gives every video its observed T. Frame counts
come from the container's header (cheap: no decoding).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from localization.video.decoding import VideoError

MAX_STRIDE = 64
MAX_CLIP = 128


@dataclass(frozen=True)
class GridFit:
    """The best (stride, clip) and how many videos it explains exactly."""

    stride: int
    clip: int
    matched: int
    videos: int

    @property
    def share(self) -> float:
        return self.matched / self.videos if self.videos else 0.0


def header_frames(path: str | Path, fps: float | None) -> int:
    """Frames of a video at ``fps`` (None: its own rate), from its header: the frame count the
    container records where resampling is off, else duration x fps. VideoError if neither is known."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            if fps is None and stream.frames:
                return int(stream.frames)
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / av.time_base
            else:
                raise VideoError(f"{path}: the header records no duration")
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    target = fps if fps is not None else rate
    if not target:
        raise VideoError(f"{path}: the video stream has no frame rate")
    return round(seconds * target)


def fit_grid(frames: np.ndarray, lengths: np.ndarray) -> GridFit:
    """The (stride, clip) with stride <= MAX_STRIDE, clip <= MAX_CLIP whose T matches the most videos
    (ties: the smallest stride, then the largest clip)."""
    frames = np.asarray(frames, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    clips = np.arange(1, MAX_CLIP + 1)
    best = GridFit(stride=1, clip=1, matched=-1, videos=len(frames))
    for stride in range(1, MAX_STRIDE + 1):
        steps = np.maximum(1, (frames[None, :] - clips[:, None]) // stride + 1)  # (clips, videos)
        matched = (steps == lengths[None, :]).sum(axis=1)
        k = int(np.flatnonzero(matched == matched.max())[-1])
        if matched[k] > best.matched:
            best = GridFit(stride=stride, clip=int(clips[k]), matched=int(matched[k]), videos=len(frames))
    return best
