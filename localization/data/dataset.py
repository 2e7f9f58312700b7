"""Training (random crops) and inference (whole videos) datasets, batching and the loader.

Every feature file is probed when a dataset is built, so a missing or malformed file fails
before training with one clear line, never later inside a DataLoader worker.

Training crops follow the reference's ``truncate_feats`` (``actionformer.md`` 4.5) but draw from
a numpy Generator derived from (seed, epoch, index), so a crop depends only on those three,
whatever the number of workers. The epoch lives in shared memory, so ``set_epoch`` reaches
persistent workers too.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from localization.config import DataConfig
from localization.data.annotations import SubsetAnnotations, VideoAnnotation
from localization.data.features import FeatureReader
from localization.data.timegrid import feat_offset, seconds_to_grid
from localization.errors import DataError

MAX_CROP_TRIALS = 200  # reference max_num_trials
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


class _VideoDataset(Dataset):
    """Videos of a subset (from :func:`load_subset`, possibly filtered) that have features, with
    their aligned lengths (probed up front). Pass one ``reader`` to several datasets to share its
    feature cache."""

    def __init__(
        self, data_cfg: DataConfig, annotations: SubsetAnnotations, reader: FeatureReader | None = None
    ) -> None:
        self.data_cfg = data_cfg
        self.annotations = annotations
        self.reader = reader if reader is not None else FeatureReader(data_cfg)
        self.videos: list[VideoAnnotation] = []
        self.lengths: list[int] = []  # aligned feature steps per video
        self.skipped: list[str] = []  # videos without features (data.on_missing=skip)
        for video in self.annotations.videos:
            if data_cfg.on_missing == "skip" and not self.reader.has(video.video_id):
                self.skipped.append(video.video_id)
                continue
            self.lengths.append(self.reader.probe(video.video_id))
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

    def _grid_segments(self, video: VideoAnnotation) -> np.ndarray:
        """Ground truth in feature-grid units: (N, 2) float64."""
        return seconds_to_grid(video.segments, video.fps, self.reader.feat_stride, self.reader.num_frames)

    def _item(
        self, video: VideoAnnotation, feats: np.ndarray, segments: np.ndarray, labels: np.ndarray
    ) -> dict[str, Any]:
        return {
            "video_id": video.video_id,
            "feats": torch.from_numpy(feats),  # (C, T) float32
            "segments": torch.from_numpy(segments.astype(np.float32)),  # (N, 2) grid units
            "labels": torch.from_numpy(labels.astype(np.int64)),  # (N,)
            "fps": video.fps,
            "duration": video.duration,
            "feat_stride": self.reader.feat_stride,
            "num_frames": self.reader.num_frames,
        }


class TrainingDataset(_VideoDataset):
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
        self._offset = feat_offset(self.reader.feat_stride, self.reader.num_frames)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the crops (and shuffle order) of this epoch; call before iterating the loader."""
        self._epoch.fill_(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        video = self.videos[index]
        rng = _generator(self.seed, _CROP_STREAM, self.epoch, index)
        cfg = self.data_cfg
        crop = random_crop(
            self.lengths[index],
            self._grid_segments(video),
            cfg.max_seq_len,
            cfg.trunc_thresh,
            cfg.crop_ratio,
            self._offset,
            rng,
        )
        feats = self.reader.load(video.video_id, crop.start, crop.stop)  # (C, L)
        return self._item(video, feats, crop.segments, video.labels[crop.keep])


class InferenceDataset(_VideoDataset):
    """Whole videos, ground truth on the grid (for losses or inspection)."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        video = self.videos[index]
        return self._item(video, self.reader.load(video.video_id), self._grid_segments(video), video.labels)


def collate(items: list[dict[str, Any]], pad_multiple: int) -> dict[str, Any]:
    """Zero-pad a batch to its longest video rounded up to ``pad_multiple`` (not to max_seq_len)."""
    lengths = [item["feats"].shape[1] for item in items]
    padded = -(-max(lengths) // pad_multiple) * pad_multiple
    channels = items[0]["feats"].shape[0]
    feats = torch.empty((len(items), channels, padded), dtype=torch.float32)  # (B, C, T_pad)
    if torch.utils.data.get_worker_info() is not None:
        feats.share_memory_()  # in a worker: fill shared memory directly, sending it then copies nothing
    masks = torch.zeros((len(items), 1, padded), dtype=torch.bool)  # (B, 1, T_pad)
    for i, (item, length) in enumerate(zip(items, lengths, strict=True)):
        feats[i, :, :length] = item["feats"]
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


def build_loader(
    dataset: _VideoDataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    pad_multiple: int,
    drop_last: bool,
) -> DataLoader:
    """A DataLoader yielding :func:`collate` batches.

    ``shuffle`` needs a :class:`TrainingDataset` (its epoch seeds the order). Workers, when any,
    are persistent (each keeps its own feature cache); memory is pinned when CUDA is available.
    """
    if shuffle and not isinstance(dataset, TrainingDataset):
        raise TypeError("build_loader: shuffle=True needs a TrainingDataset (its epoch seeds the order)")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffleSampler(dataset, seed) if shuffle else None,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=functools.partial(collate, pad_multiple=pad_multiple),
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
