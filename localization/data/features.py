"""Per-video feature streams on disk -> one aligned (C, T) float32 array.

Each stream (I3D, SlowFast, ...) is one ``.npy`` file per video, float32 or float16, stored
[T, C] or [C, T]. Streams are concatenated on channels in ``data.features`` order on the grid of
the first stream. Streams rarely have the same length: a 32-frame SlowFast clip fits one step
fewer than a 16-frame I3D clip, so lengths within ``data.align_tolerance`` are trimmed to the
shortest; larger gaps mean a different sampling, and the other streams are resampled onto the
first stream's clip centres (logged once).

Files are opened with ``np.load(mmap_mode="r")``: a header probe is cheap, and a training crop
of a 14,000-step video reads only the rows it needs.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from localization.config import DataConfig, StreamConfig
from localization.errors import DataError

logger = logging.getLogger(__name__)


class FeatureReader:
    """Reads, checks, aligns and concatenates the feature streams of ``data.features``.

    The optional cache (``data.cache_features``) keeps whole (C, T) float32 videos per process:
    about 17 KB per step for I3D + SlowFast, so ~44 GB for FineAction's training subset; each
    DataLoader worker holds its own. Use it when the data fits in memory.
    """

    def __init__(self, data_cfg: DataConfig) -> None:
        self._streams: dict[str, StreamConfig] = {n: data_cfg.streams[n] for n in data_cfg.features}
        for name, stream in self._streams.items():
            if not Path(stream.dir).is_dir():
                raise DataError(f"{stream.dir}: feature directory not found (data.streams.{name}.dir)")
        self.dims: dict[str, int] = {name: stream.dim for name, stream in self._streams.items()}
        self.dim: int = sum(self.dims.values())
        self._grid = data_cfg.streams[data_cfg.features[0]]  # the common grid is the first stream's
        self.feat_stride: int = self._grid.feat_stride
        self.num_frames: int = self._grid.num_frames
        self._align_tolerance = data_cfg.align_tolerance
        self._cache: dict[str, np.ndarray] | None = {} if data_cfg.cache_features else None
        self._warned_resample = False

    def path(self, stream_name: str, video_id: str) -> Path:
        """The file of one stream for one video."""
        stream = self._streams[stream_name]
        return Path(stream.dir) / stream.file_pattern.format(video_id=video_id)

    def has(self, video_id: str) -> bool:
        """Whether every stream has a file for this video (contents are checked by `probe`)."""
        return all(self.path(name, video_id).is_file() for name in self._streams)

    def probe(self, video_id: str) -> int:
        """Check every stream's header (readable, 2-D, float, right dim); return the aligned length."""
        return self._align(video_id, [self._open(name, video_id).shape[0] for name in self._streams])[0]

    def load(self, video_id: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Aligned, concatenated features of steps ``[start, stop)``: (C, stop - start) float32."""
        if self._cache is None:
            return self._read(video_id, start, stop)
        if video_id not in self._cache:
            self._cache[video_id] = self._read(video_id, 0, None)
        return self._cache[video_id][:, start:stop].copy()  # a copy: callers may write into it

    def _read(self, video_id: str, start: int, stop: int | None) -> np.ndarray:
        arrays = {name: self._open(name, video_id) for name in self._streams}  # (T_s, C_s) lazy views
        length, resample = self._align(video_id, [a.shape[0] for a in arrays.values()])
        start, stop, _ = slice(start, stop).indices(length)
        out = np.empty((self.dim, stop - start), dtype=np.float32)  # (C, T)
        row = 0
        for name, array in arrays.items():
            stream = self._streams[name]
            if resample and array.shape[0] != length:
                block = resample_to_grid(array, stream, self._grid, np.arange(start, stop))  # (T, C_s)
            else:
                block = array[start:stop]  # (T, C_s), read from disk here
            _transpose_into(out[row : row + stream.dim], block)  # (C_s, T) float32
            row += stream.dim
        return out

    def _open(self, name: str, video_id: str) -> np.ndarray:
        """A lazily read (T, C) view of one stream's file, after checking its header."""
        stream = self._streams[name]
        path = self.path(name, video_id)
        if not path.is_file():
            raise DataError(
                f"{path}: feature file not found (data.streams.{name}.dir; "
                "set data.on_missing=skip to skip such videos)"
            )
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"{path}: cannot read as .npy (data.streams.{name}): {exc}") from None
        shape = array.shape
        if array.ndim != 2:
            raise DataError(f"{path}: expected a 2-D array (data.streams.{name}.layout), got shape {shape}")
        if array.dtype not in (np.float32, np.float16):
            raise DataError(f"{path}: expected float32 or float16 (data.streams.{name}), got {array.dtype}")
        array = array if stream.layout == "tc" else array.T  # (T, C)
        if array.shape[1] != stream.dim:
            raise DataError(
                f"{path}: expected dim {stream.dim} (data.streams.{name}.dim), got "
                f"{array.shape[1]} (shape {shape}, data.streams.{name}.layout={stream.layout})"
            )
        if array.shape[0] == 0:
            raise DataError(f"{path}: no time steps (data.streams.{name})")
        return array

    def _align(self, video_id: str, lengths: list[int]) -> tuple[int, bool]:
        """(common length, resample?): the shortest within tolerance, else the first stream's."""
        if max(lengths) - min(lengths) <= self._align_tolerance:
            return min(lengths), False
        if not self._warned_resample:
            self._warned_resample = True
            detail = ", ".join(f"{name} {n}" for name, n in zip(self._streams, lengths, strict=True))
            logger.warning(
                "feature streams of %s differ by more than data.align_tolerance=%d steps (%s): "
                "resampling the other streams onto the %s grid (shown once)",
                video_id,
                self._align_tolerance,
                detail,
                next(iter(self._streams)),
            )
        return lengths[0], True


def _transpose_into(dst: np.ndarray, src: np.ndarray) -> None:
    """dst (C, T) float32 <- src (T, C) of any float dtype.

    torch's blocked transpose copy is 2-7x faster than numpy's strided one here (a row of 2048
    float32 is 8 KB, a worst case for cache associativity).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a read-only memmap; torch only reads it
        torch.from_numpy(dst).copy_(torch.from_numpy(src).T)


def resample_to_grid(feats: np.ndarray, src: StreamConfig, dst: StreamConfig, steps: np.ndarray) -> np.ndarray:
    """Linear interpolation in time of a (T_src, C) stream at the clip centres of ``dst`` steps.

    Step i of a stream is centred at frame ``i*feat_stride + 0.5*num_frames``; positions before the
    first or after the last source centre take the edge value. Returns (len(steps), C) float32.
    """
    centres = steps * dst.feat_stride + 0.5 * dst.num_frames  # (T,) frames
    position = (centres - 0.5 * src.num_frames) / src.feat_stride  # (T,) fractional source index
    last = feats.shape[0] - 1
    lower = np.clip(np.floor(position), 0, last).astype(np.int64)  # (T,)
    upper = np.minimum(lower + 1, last)
    weight = np.clip(position - lower, 0.0, 1.0)[:, None].astype(np.float32)  # (T, 1)
    below = np.asarray(feats[lower], dtype=np.float32)  # (T, C)
    above = np.asarray(feats[upper], dtype=np.float32)
    return below + weight * (above - below)
