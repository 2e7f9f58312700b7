"""Training (random crops) and inference (whole videos) datasets, batching and the loader.

Every feature file is probed when a dataset is built, so a missing or malformed file fails
before training with one clear line, never later inside a DataLoader worker.

Training crops follow the reference's ``truncate_feats`` but draw from
a numpy Generator derived from (seed, epoch, index), so a crop depends only on those three,
whatever the number of workers. The epoch lives in shared memory, so ``set_epoch`` reaches
persistent workers too.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from localization.config.schema import DataConfig
from localization.data.annotations import SubsetAnnotations, VideoAnnotation
from localization.data.features import FeatureReader, VideoLayout
from localization.data.timegrid import Grid, feat_offset, seconds_to_grid
from localization.errors import DataError

MAX_CROP_TRIALS = 200  # reference max_num_trials
KEEP_FREED_BYTES = 256 * 2**20  # glibc keeps freed blocks up to this size for reuse (see _reuse_freed_memory)
_CROP_STREAM, _SHUFFLE_STREAM = 1, 2  # keep the crop and shuffle random streams apart


def _generator(seed: int, *keys: int) -> np.random.Generator:
    """A Generator that depends only on (seed, keys); any int seed works (SeedSequence needs >= 0)."""
    return np.random.default_rng([seed % 2**64, *keys])


@dataclass
class Crop:
    """One training window ``[start, stop)`` and the ground truth it keeps."""

    start: int
    stop: int
    segments: np.ndarray  # (K, 2) grid units, relative to `start`
    keep: np.ndarray  # (N,) bool: which input segments were kept


def random_crop(
    length: int,
    segments: np.ndarray,
    max_seq_len: int,
    trunc_thresh: float,
    crop_ratio: list[float] | None,
    offset: float,
    rng: np.random.Generator,
) -> Crop:
    """The reference's random truncation (``truncate_feats`` with has_action=True).

    ``segments`` (N, 2) in grid units. A video longer than ``max_seq_len`` gets a window of
    exactly ``max_seq_len``; a shorter one a random 90-100 % window (``crop_ratio``) or none.
    Up to MAX_CROP_TRIALS starts are tried until one keeps a segment, i.e. has at least
    ``trunc_thresh`` of its length inside the window widened by ``offset`` (half a clip) on both
    sides; if none does, the last start is used. Kept segments are clipped to the widened window.
    """
    keep_all = np.ones(len(segments), dtype=bool)
    if length <= max_seq_len:
        if crop_ratio is None:
            return Crop(0, length, segments, keep_all)
        crop_len = int(
            rng.integers(
                max(round(crop_ratio[0] * length), 1), min(round(crop_ratio[1] * length), length), endpoint=True
            )
        )
        if crop_len == length:
            return Crop(0, length, segments, keep_all)
    else:
        crop_len = max_seq_len
    # all trials drawn at once; the first that keeps a segment is the one the loop would stop at
    starts = rng.integers(0, length - crop_len, size=MAX_CROP_TRIALS, endpoint=True)  # (R,)
    left = np.maximum(starts[:, None] - offset, segments[None, :, 0])  # (R, N)
    right = np.minimum(starts[:, None] + crop_len + offset, segments[None, :, 1])  # (R, N)
    ratio = np.clip(right - left, 0.0, None) / np.abs(segments[:, 1] - segments[:, 0])  # (R, N)
    kept = ratio >= trunc_thresh  # (R, N)
    hits = kept.any(axis=1)  # (R,)
    trial = int(np.argmax(hits)) if hits.any() else MAX_CROP_TRIALS - 1
    start, keep = int(starts[trial]), kept[trial]
    clipped = np.stack([left[trial, keep], right[trial, keep]], axis=1) - start  # (K, 2)
    return Crop(start, start + crop_len, clipped, keep)


class VideoDataset(Dataset):
    """Videos of a subset (from :func:`load_subset`, possibly filtered) that have features, with
    their layouts (lengths and time grids, probed up front). Pass one ``reader`` to several
    datasets to share its feature cache."""

    def __init__(
        self, data_cfg: DataConfig, annotations: SubsetAnnotations, reader: FeatureReader | None = None
    ) -> None:
        self.data_cfg = data_cfg
        self.annotations = annotations
        self.reader = reader if reader is not None else FeatureReader(data_cfg)
        self.videos: list[VideoAnnotation] = []
        self.layouts: list[VideoLayout] = []  # per video: streams, model input length and grid
        self.lengths: list[int] = []  # model input steps per video
        self.skipped: list[str] = []  # videos without features (data.on_missing=skip)
        for video in self.annotations.videos:
            if data_cfg.on_missing == "skip" and not self.reader.has(video.video_id):
                self.skipped.append(video.video_id)
                continue
            layout = self.reader.probe(video)
            self.layouts.append(layout)
            self.lengths.append(layout.length)
            self.videos.append(video)
        if not self.videos:
            raise DataError(
                f"{data_cfg.annotations}: none of the {len(self.skipped)} videos of subset "
                f"{annotations.subset!r} has feature files (data.streams.*.dir; "
                "data.on_missing=skip)"
            )

    @property
    def class_names(self) -> list[str]:
        return self.annotations.class_names

    @property
    def num_classes(self) -> int:
        return len(self.annotations.class_names)

    @property
    def input_dim(self) -> int:
        return self.reader.dim

    def __len__(self) -> int:
        return len(self.videos)

    def length(self, index: int) -> int:
        """Feature steps of video ``index`` (whole video, before any crop)."""
        return self.lengths[index]

    def grid(self, index: int) -> Grid:
        """The time grid of video ``index``'s model input."""
        return self.layouts[index].grid

    def _grid_segments(self, index: int) -> np.ndarray:
        """Ground truth in feature-grid units: (N, 2) float64."""
        video, grid = self.videos[index], self.grid(index)
        return seconds_to_grid(video.segments, video.fps, grid.stride, grid.clip)

    def _item(self, index: int, feats: np.ndarray | None, segments: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """A sample; ``feats`` None when they are read straight into a batch (:meth:`TrainingDataset.batch`)."""
        video, grid = self.videos[index], self.grid(index)
        return {
            "video_id": video.video_id,
            "feats": None if feats is None else torch.from_numpy(feats),  # (C, T) float32, or the store's dtype
            "segments": torch.from_numpy(segments.astype(np.float32)),  # (N, 2) grid units
            "labels": torch.from_numpy(labels.astype(np.int64)),  # (N,)
            "fps": video.fps,
            "duration": video.duration,
            "feat_stride": grid.stride,
            "num_frames": grid.clip,
        }


class TrainingDataset(VideoDataset):
    """Training videos, randomly cropped each epoch (reference section 4.5).

    Videos without clean ground truth stay in (all-negative samples). Deviation: the reference
    leaves such videos uncropped (it only truncates videos with segments), which breaks on videos
    longer than max_seq_len; here they get the random window that the reference's "all trials
    failed" branch would give.
    """

    def __init__(
        self, data_cfg: DataConfig, annotations: SubsetAnnotations, reader: FeatureReader | None = None, *, seed: int
    ) -> None:
        super().__init__(data_cfg, annotations, reader)
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # seen by forked/spawned workers

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the crops (and shuffle order) of this epoch; call before iterating the loader."""
        self._epoch.fill_(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        crop = self._crop(index)
        feats = self.reader.load(self.videos[index], crop.start, crop.stop)  # (C, L)
        return self._item(index, feats, crop.segments, self.videos[index].labels[crop.keep])

    def batch(self, indices: list[int], pad_multiple: int) -> dict[str, Any]:
        """``collate([self[i] for i in indices], pad_multiple)``, each crop read straight into the batch."""
        crops = [self._crop(index) for index in indices]
        lengths = [crop.stop - crop.start for crop in crops]
        feats = _batch_buffer(lengths, self.reader.dim, getattr(torch, self.reader.dtype.name), pad_multiple)
        items = []
        for i, (index, crop) in enumerate(zip(indices, crops, strict=True)):
            self.reader.load(self.videos[index], crop.start, crop.stop, out=feats[i, :, : lengths[i]].numpy())
            items.append(self._item(index, None, crop.segments, self.videos[index].labels[crop.keep]))
        return _batch(items, feats, lengths)

    def _crop(self, index: int) -> Crop:
        """This epoch's crop of video ``index``: depends on (seed, epoch, index) only."""
        rng = _generator(self.seed, _CROP_STREAM, self.epoch, index)
        cfg, grid = self.data_cfg, self.grid(index)
        return random_crop(
            self.lengths[index],
            self._grid_segments(index),
            cfg.max_seq_len,
            cfg.trunc_thresh,
            cfg.crop_ratio,
            feat_offset(grid.stride, grid.clip),
            rng,
        )


class InferenceDataset(VideoDataset):
    """Whole videos, ground truth on the grid (for losses or inspection)."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        video = self.videos[index]
        return self._item(index, self.reader.load(video), self._grid_segments(index), video.labels)


def collate(items: list[dict[str, Any]], pad_multiple: int) -> dict[str, Any]:
    """Zero-pad a batch to its longest video rounded up to ``pad_multiple`` (not to max_seq_len).

    The batch keeps the items' dtype: float16 features from the store stay float16 up to the device."""
    lengths = [item["feats"].shape[1] for item in items]
    feats = _batch_buffer(lengths, items[0]["feats"].shape[0], items[0]["feats"].dtype, pad_multiple)
    for i, item in enumerate(items):
        feats[i, :, : lengths[i]] = item["feats"]
    return _batch(items, feats, lengths)


def _batch_buffer(lengths: list[int], channels: int, dtype: torch.dtype, pad_multiple: int) -> torch.Tensor:
    """An uninitialised (B, C, T_pad) batch, T_pad the longest length rounded up to ``pad_multiple``."""
    padded = -(-max(lengths) // pad_multiple) * pad_multiple
    feats = torch.empty((len(lengths), channels, padded), dtype=dtype)  # (B, C, T_pad)
    if torch.utils.data.get_worker_info() is not None:
        feats.share_memory_()  # in a worker: fill shared memory directly, sending it then copies nothing
    return feats


def _batch(items: list[dict[str, Any]], feats: torch.Tensor, lengths: list[int]) -> dict[str, Any]:
    """The batch of ``items`` whose features fill ``feats[i, :, :lengths[i]]``: padding zeroed, masks."""
    masks = torch.zeros((len(items), 1, feats.shape[-1]), dtype=torch.bool)  # (B, 1, T_pad)
    for i, length in enumerate(lengths):
        feats[i, :, length:] = 0  # only the padding is zeroed: one pass over the batch, not two
        masks[i, 0, :length] = True
    return {
        "feats": feats,
        "masks": masks,
        "segments": [item["segments"] for item in items],  # (N_b, 2) each
        "labels": [item["labels"] for item in items],  # (N_b,) each
        "video_ids": [item["video_id"] for item in items],
        "fps": [item["fps"] for item in items],
        "duration": [item["duration"] for item in items],
        "feat_stride": [item["feat_stride"] for item in items],
        "num_frames": [item["num_frames"] for item in items],
    }


class _TrainingBatches(Dataset):
    """A TrainingDataset as the DataLoader fetches it, a batch of indices at a time (``__getitems__``),
    so every crop is read straight into its batch (:meth:`TrainingDataset.batch`)."""

    def __init__(self, dataset: TrainingDataset, pad_multiple: int) -> None:
        self.dataset = dataset
        self.pad_multiple = pad_multiple

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[index]

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        return self.dataset.batch(indices, self.pad_multiple)


def _assembled(batch: dict[str, Any]) -> dict[str, Any]:
    """The collate function of :class:`_TrainingBatches`: its batches come out whole."""
    return batch


class EpochShuffleSampler(Sampler[int]):
    """A permutation drawn from (seed, the dataset's current epoch): resumable and worker-independent."""

    def __init__(self, dataset: TrainingDataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        rng = _generator(self.seed, _SHUFFLE_STREAM, self.dataset.epoch)
        return iter(rng.permutation(len(self.dataset)).tolist())


def _reuse_freed_memory() -> None:
    """Let glibc serve allocations up to KEEP_FREED_BYTES from its heap and keep freed ones for reuse.

    Why: a batch is 10-100 MB; by default each is a fresh ``mmap`` whose page faults and kernel zeroing
    cost several times more than copying the features into it (``benchmarks/data_loading.py``).
    Process-wide and inherited by forked workers; nothing happens where glibc is absent.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    libc.mallopt(m_trim_threshold, KEEP_FREED_BYTES)
    libc.mallopt(m_mmap_threshold, KEEP_FREED_BYTES)


def build_loader(
    dataset: VideoDataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    pad_multiple: int,
    drop_last: bool,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader yielding :func:`collate` batches.

    ``shuffle`` needs a :class:`TrainingDataset` (its epoch seeds the order). Workers, when any,
    are persistent (each keeps its own feature cache, or maps the shared store); ``pin_memory``
    (training on CUDA) pins every batch, so its copy to the device can overlap compute.
    """
    if shuffle and not isinstance(dataset, TrainingDataset):
        raise TypeError("build_loader: shuffle=True needs a TrainingDataset (its epoch seeds the order)")
    _reuse_freed_memory()
    training = isinstance(dataset, TrainingDataset)
    return DataLoader(
        _TrainingBatches(dataset, pad_multiple) if training else dataset,
        batch_size=batch_size,
        sampler=EpochShuffleSampler(dataset, seed) if shuffle else None,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=_assembled if training else functools.partial(collate, pad_multiple=pad_multiple),
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )
