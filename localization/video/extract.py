"""One video -> its ``[T, 2304]`` SlowFast features, in two halves that can run in different processes.

:class:`ClipStream` (CPU: decode, resize, crop, cut the clip grid) yields uint8 clip batches;
:class:`ClipEncoder` (the model, once per device) turns a batch into features. A distributed job
runs many streams against one encoder per GPU; :func:`extract_video` chains them in one process.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from localization.device import autocast
from localization.errors import DataError
from localization.video.clips import batched, cut_clips, num_steps
from localization.video.decoding import VideoReader
from localization.video.settings import BackboneSettings, StreamSettings
from localization.video.slowfast import FAST_FRAMES
from localization.video.transforms import to_pathways
from localization.video.weights import load_backbone


@dataclass
class StreamInfo:
    """What a decoded video turned out to be: frames at ``fps`` (after resampling) and the steps cut."""

    frames: int
    fps: float
    native_fps: float
    steps: int


class ClipStream:
    """The clip batches of one video (uint8 ``[B, 32, crop, crop, 3]``); opening checks the file
    (VideoError), and :meth:`info` tells what was decoded once the batches are exhausted."""

    def __init__(self, path: str | Path, settings: StreamSettings, batch_size: int, threads: int = 1) -> None:
        self.reader = VideoReader(path, settings.frames, settings.clip.fps, threads=threads)
        self.clip = settings.clip
        self.batch_size = batch_size
        self.steps = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        clips = cut_clips(self.reader, self.clip.num_frames, self.clip.stride, FAST_FRAMES)
        for batch in batched(clips, self.batch_size):
            self.steps += len(batch)
            yield batch

    def info(self) -> StreamInfo:
        frames = self.reader.frames
        expected = num_steps(frames, self.clip.num_frames, self.clip.stride)
        if self.steps != expected:  # the grid's contract with data.streams; never expected to fire
            raise DataError(f"{self.reader.path}: {self.steps} clips cut from {frames} frames, expected {expected}")
        return StreamInfo(frames=frames, fps=self.reader.fps, native_fps=self.reader.native_fps, steps=self.steps)


class ClipEncoder:
    """The backbone on one device, loaded once: uint8 clip batches -> float32 ``[B, 2304]``; bf16 on CUDA."""

    def __init__(self, backbone: BackboneSettings, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = load_backbone(backbone.name, backbone.weights).to(self.device)

    @torch.inference_mode()
    def __call__(self, clips: np.ndarray) -> np.ndarray:
        # batches from Ray's object store are read-only views; torch wants its own memory
        batch = torch.from_numpy(clips if clips.flags.writeable else clips.copy()).to(self.device, non_blocking=True)
        on_cuda = self.device.type == "cuda"
        with autocast(self.device, bf16=True):
            slow, fast = to_pathways(batch, torch.bfloat16 if on_cuda else torch.float32)
            features = self.model(slow, fast)
        return features.float().cpu().numpy()


def as_dtype(features: np.ndarray, dtype: str, path: str | Path) -> np.ndarray:
    """``features`` in the stream's dtype; DataError if float16 cannot hold them (untrained weights can)."""
    out = features.astype(dtype)
    if not np.isfinite(out).all():
        peak = float(np.abs(features).max())
        raise DataError(f"{path}: features reach {peak:.3g}, beyond {dtype}'s range (use dtype: float32)")
    return out


def extract_video(
    path: str | Path, settings: StreamSettings, encoder: ClipEncoder, batch_size: int = 8
) -> tuple[np.ndarray, StreamInfo]:
    """``[T, 2304]`` features of one video in ``settings.dtype``, and what was decoded."""
    stream = ClipStream(path, settings, batch_size)
    features = np.concatenate([encoder(batch) for batch in stream])
    return as_dtype(features, settings.dtype, path), stream.info()
