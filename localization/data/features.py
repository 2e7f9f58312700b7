"""Per-video feature streams on disk -> one aligned (C, T) float32 array on a known time grid.

Each stream (I3D, SlowFast, VideoMAE, ...) is one file per video, its type chosen by the
extension of ``file_pattern``:

- ``.npy``: float16/32/64 (64 is cast to 32), memory-mapped, so a header probe is cheap and a
  training crop of a 14,000-step video reads only the rows it needs;
- ``.npz``: the array under the stream's ``key``; default the file's only array, else ``feats``;
- ``.pt`` / ``.pth``: a tensor, or a dict holding one under ``key`` (same default), always loaded
  with ``torch.load(weights_only=True)``: a feature file cannot run code.

Arrays are stored [T, C] or [C, T] (``layout``). Anything unreadable is one line naming the file
and the stream. :func:`read_stream` is the one function reading one video's stream as (C, T)
(what a shared feature store builds on); :func:`open_stream` is its lazy (T, C) form that training
crops slice. ``.npz`` and ``.pt`` files cannot be memory-mapped: every access reads the whole file,
so keep ``data.cache_features: true`` for them when the features fit in memory.

Each stream has its own time grid per video (:mod:`localization.data.timegrid`): native
``feat_stride`` / ``num_frames``, ``downsample: k``, or ``feat_stride: auto`` for fixed-length
features. Streams are concatenated on channels in ``data.features`` order on the grid of the first
stream. Streams rarely have the same length: a 32-frame SlowFast clip fits one step fewer than a
16-frame I3D clip, so lengths within ``data.align_tolerance`` are trimmed to the shortest; larger
gaps mean a different sampling, and the other streams are resampled onto the first stream's clip
centres (logged once). ``data.resize_length: N`` then resamples the whole video to N steps.

With ``data.store`` the streams come from the node's packed feature store instead
(``localization.data.feature_store``, built from :meth:`FeatureReader._open`'s arrays): crops are slices of
one memory-mapped array per stream, returned in the store's dtype (float16 by default).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from localization.config.schema import DataConfig, StreamConfig
from localization.data.feature_store import StreamStore, open_stores
from localization.data.timegrid import Grid, auto_grid
from localization.errors import DataError

logger = logging.getLogger(__name__)

FLOAT_DTYPES = (np.float16, np.float32, np.float64)
DEFAULT_KEY = "feats"  # the dict / npz entry read when a file holds several and no key is set


class TimedVideo(Protocol):
    """What the grid of a video needs (``VideoAnnotation`` fits): auto strides come from its frames."""

    video_id: str
    duration: float
    fps: float


@dataclass(frozen=True)
class VideoLayout:
    """How one video's streams map onto its model input (from the file headers)."""

    steps: dict[str, int]  # per stream: steps in the file after downsampling
    grids: dict[str, Grid]  # per stream: its own grid
    aligned: int  # steps on the first stream's grid, after trimming or resampling the others
    resample: bool  # the other streams are resampled onto the first (lengths differ too much)
    length: int  # model input steps (data.resize_length when set, else `aligned`)
    grid: Grid  # the model input's grid


def stream_grid(stream: StreamConfig, steps: int, video: TimedVideo) -> Grid:
    """One stream's grid for one video of ``steps`` (downsampled) steps."""
    if stream.feat_stride == "auto":
        return auto_grid(video.duration * video.fps, steps)
    return Grid(float(stream.feat_stride), float(stream.num_frames)).downsampled(stream.downsample)


def open_stream(path: Path, stream: StreamConfig, name: str) -> np.ndarray:
    """One stream's file as a checked (T, C) float array, downsampled; lazy (memory-mapped) for .npy."""
    where = f"data.streams.{name}"
    if not path.is_file():
        raise DataError(f"{path}: feature file not found ({where}.dir; set data.on_missing=skip to skip such videos)")
    suffix = path.suffix
    if suffix == ".npy":
        array = _load_npy(path, where)
    elif suffix == ".npz":
        array = _load_npz(path, stream.key, where)
    elif suffix in (".pt", ".pth"):
        array = _load_torch(path, stream.key, where)
    else:
        raise DataError(
            f"{path}: unsupported feature file type {suffix!r} ({where}.file_pattern; expected .npy, .npz, .pt or .pth)"
        )
    shape = array.shape
    if array.ndim != 2:
        raise DataError(f"{path}: expected a 2-D array ({where}.layout), got shape {shape}")
    if array.dtype not in FLOAT_DTYPES:
        raise DataError(f"{path}: expected float16, float32 or float64 ({where}), got {array.dtype}")
    array = array if stream.layout == "tc" else array.T  # (T, C)
    if array.shape[1] != stream.dim:
        raise DataError(
            f"{path}: expected dim {stream.dim} ({where}.dim), got {array.shape[1]} "
            f"(shape {shape}, {where}.layout={stream.layout})"
        )
    if array.shape[0] == 0:
        raise DataError(f"{path}: no time steps ({where})")
    return array[:: stream.downsample]


def read_stream(path: Path, stream: StreamConfig, name: str) -> np.ndarray:
    """One video's stream as a (C, T) float32 array (after layout and downsampling)."""
    array = open_stream(path, stream, name)  # (T, C)
    out = np.empty((array.shape[1], array.shape[0]), dtype=np.float32)  # (C, T)
    _transpose_into(out, array)
    return out


def _load_npy(path: Path, where: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot read as .npy ({where}): {_first_line(exc)}") from None


def _load_npz(path: Path, key: str | None, where: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            chosen = _pick_key(names, key, path, where)
            return archive[chosen]
    except DataError:
        raise
    except Exception as exc:  # zipfile, zlib and format errors of a damaged archive
        raise DataError(f"{path}: cannot read as .npz ({where}): {_first_line(exc)}") from None


def _load_torch(path: Path, key: str | None, where: str) -> np.ndarray:
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, zip and size errors (weights_only refuses code)
        raise DataError(f"{path}: cannot read as {path.suffix} ({where}): {_first_line(exc)}") from None
    if isinstance(content, dict):
        content = content[_pick_key([str(k) for k in content], key, path, where)]
    if not isinstance(content, torch.Tensor):
        raise DataError(f"{path}: expected a tensor ({where}), got {type(content).__name__}")
    if content.dtype == torch.bfloat16:
        content = content.float()
    return content.detach().numpy()


def _pick_key(names: list[str], key: str | None, path: Path, where: str) -> str:
    """The configured key, else the only entry, else DEFAULT_KEY; missing is an error listing the entries."""
    chosen = key if key is not None else (names[0] if len(names) == 1 else DEFAULT_KEY)
    if chosen not in names:
        raise DataError(f"{path}: no entry {chosen!r} ({where}.key; the file holds {names})")
    return chosen


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class FeatureReader:
    """Reads, checks, aligns and concatenates the feature streams of ``data.features``.

    The optional cache (``data.cache_features``) keeps whole (C, T) float32 videos per process:
    about 17 KB per step for I3D + SlowFast, so ~44 GB for FineAction's training subset; each
    DataLoader worker holds its own. Use it when the data fits in memory. ``data.store`` replaces
    it: one shared copy per node, so the cache is off then.
    """

    def __init__(self, data_cfg: DataConfig) -> None:
        self._streams: dict[str, StreamConfig] = {n: data_cfg.streams[n] for n in data_cfg.features}
        for name, stream in self._streams.items():
            if not Path(stream.dir).is_dir():
                raise DataError(f"{stream.dir}: feature directory not found (data.streams.{name}.dir)")
        self.dims: dict[str, int] = {name: stream.dim for name, stream in self._streams.items()}
        self.dim: int = sum(self.dims.values())
        self._first = data_cfg.features[0]  # the common grid is the first stream's
        self._align_tolerance = data_cfg.align_tolerance
        self._resize_length = data_cfg.resize_length
        self._cache: dict[str, np.ndarray] | None = {} if data_cfg.cache_features and not data_cfg.store else None
        self._warned_resample = False
        self.stores: dict[str, StreamStore] | None = None  # None while open_stores packs the files
        if data_cfg.store:
            self.stores = open_stores(data_cfg, self._open)
        self.dtype = np.dtype(data_cfg.store_dtype if data_cfg.store else np.float32)  # of `load`'s arrays

    @property
    def stream_names(self) -> list[str]:
        return list(self._streams)

    def path(self, stream_name: str, video_id: str) -> Path:
        """The file of one stream for one video."""
        stream = self._streams[stream_name]
        return Path(stream.dir) / stream.file_pattern.format(video_id=video_id)

    def has(self, video_id: str) -> bool:
        """Whether every stream has a file for this video (contents are checked by `probe`)."""
        if self.stores is not None:
            return all(video_id in store for store in self.stores.values())
        return all(self.path(name, video_id).is_file() for name in self._streams)

    def probe(self, video: TimedVideo) -> VideoLayout:
        """Check every stream's file (readable, 2-D, float, right dim); return the video's layout."""
        return self._layout(video, {name: self._open(name, video.video_id).shape[0] for name in self._streams})

    def load(
        self, video: TimedVideo, start: int = 0, stop: int | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Aligned, concatenated features of steps ``[start, stop)``: (C, stop - start) of ``self.dtype``,
        written into ``out`` when given (a batch's row: one copy from the store, not two)."""
        if self._cache is None:
            return self._read(video, start, stop, out)
        if video.video_id not in self._cache:
            self._cache[video.video_id] = self._read(video, 0, None, None)
        cached = self._cache[video.video_id][:, start:stop]
        return cached.copy() if out is None else _write(out, cached)  # a copy: callers may write into it

    def _read(self, video: TimedVideo, start: int, stop: int | None, out: np.ndarray | None) -> np.ndarray:
        arrays = {name: self._open(name, video.video_id) for name in self._streams}  # (T_s, C_s) lazy views
        layout = self._layout(video, {name: a.shape[0] for name, a in arrays.items()})
        if self._resize_length is not None:
            whole = self._aligned(arrays, layout, 0, layout.aligned, None)  # (C, T)
            first = layout.grids[self._first]
            resized = resample_to_grid(whole.T, first, layout.grid, np.arange(layout.length))  # (N, C)
            window = resized.T[:, start:stop]
            return np.ascontiguousarray(window, dtype=self.dtype) if out is None else _write(out, window)
        start, stop, _ = slice(start, stop).indices(layout.aligned)
        return self._aligned(arrays, layout, start, stop, out)

    def _aligned(
        self, arrays: dict[str, np.ndarray], layout: VideoLayout, start: int, stop: int, out: np.ndarray | None
    ) -> np.ndarray:
        """Steps [start, stop) of every stream on the first stream's grid, concatenated: (C, T) ``self.dtype``."""
        out = np.empty((self.dim, stop - start), dtype=self.dtype) if out is None else out  # (C, T)
        first = layout.grids[self._first]
        row = 0
        for name, array in arrays.items():
            if layout.resample and array.shape[0] != layout.aligned:
                block = resample_to_grid(array, layout.grids[name], first, np.arange(start, stop))  # (T, C_s)
            else:
                block = array[start:stop]  # (T, C_s), read from disk here
            _transpose_into(out[row : row + self.dims[name]], block)  # (C_s, T)
            row += self.dims[name]
        return out

    def _open(self, name: str, video_id: str) -> np.ndarray:
        """One stream of one video as (T, C): a view of the store when it has the video, else the file."""
        if self.stores is not None and video_id in self.stores[name]:
            return self.stores[name].rows(video_id)
        return open_stream(self.path(name, video_id), self._streams[name], name)

    def _layout(self, video: TimedVideo, steps: dict[str, int]) -> VideoLayout:
        grids = {name: stream_grid(self._streams[name], n, video) for name, n in steps.items()}
        aligned, resample = self._align(video.video_id, list(steps.values()))
        length, grid = aligned, grids[self._first]
        if self._resize_length is not None:
            length, grid = self._resize_length, grid.resized(aligned, self._resize_length)
        return VideoLayout(steps=steps, grids=grids, aligned=aligned, resample=resample, length=length, grid=grid)

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
                self._first,
            )
        return lengths[0], True


def _write(out: np.ndarray, values: np.ndarray) -> np.ndarray:
    np.copyto(out, values)
    return out


def _transpose_into(dst: np.ndarray, src: Any) -> None:
    """dst (C, T) <- src (T, C) of any float dtype (a store's rows are a transposed view: then a plain copy).

    torch's blocked transpose copy is 2-7x faster than numpy's strided one here (a row of 2048
    float32 is 8 KB, a worst case for cache associativity).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a read-only memmap; torch only reads it
        torch.from_numpy(dst).copy_(torch.from_numpy(np.asarray(src)).T)


def resample_to_grid(feats: np.ndarray, src: Grid, dst: Grid, steps: np.ndarray) -> np.ndarray:
    """Linear interpolation in time of (T_src, C) features on grid ``src`` at the centres of
    ``dst``'s ``steps``.

    Step i of a grid is centred at frame ``i*stride + 0.5*clip``; positions before the first or
    after the last source centre take the edge value (as ``F.interpolate(align_corners=False)``).
    Returns (len(steps), C) float32.
    """
    centres = steps * dst.stride + 0.5 * dst.clip  # (T,) frames
    position = (centres - 0.5 * src.clip) / src.stride  # (T,) fractional source index
    last = feats.shape[0] - 1
    lower = np.clip(np.floor(position), 0, last).astype(np.int64)  # (T,)
    upper = np.minimum(lower + 1, last)
    weight = np.clip(position - lower, 0.0, 1.0)[:, None].astype(np.float32)  # (T, 1)
    below = np.asarray(feats[lower], dtype=np.float32)  # (T, C)
    above = np.asarray(feats[upper], dtype=np.float32)
    return below + weight * (above - below)
