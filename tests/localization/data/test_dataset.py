"""Time grid, training crops (reference truncate_feats), datasets, collate and the seeded loader."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch

from localization.config.schema import DataConfig
from localization.data.annotations import load_subset
from localization.data.dataset import (
    MAX_CROP_TRIALS,
    InferenceDataset,
    TrainingDataset,
    build_loader,
    collate,
    random_crop,
)
from localization.data.features import FeatureReader
from localization.data.timegrid import feat_offset, grid_to_seconds, seconds_to_grid
from localization.errors import DataError


def ramp(steps: int, dim: int) -> np.ndarray:
    """(steps, dim): entry [t, c] = 10*t + c, so a crop's start can be read off its first value."""
    return (10.0 * np.arange(steps)[:, None] + np.arange(dim)[None, :]).astype(np.float32)


def entry(subset: str, steps: int, segments: list[list[float]], fps: float = 32.0) -> dict:
    """A video of `steps` 16-frame clips; with fps 32 a clip is 0.5 s and grid = 2*t - 0.5."""
    return {
        "subset": subset,
        "duration": steps * 16 / fps,
        "fps": fps,
        "annotations": [{"segment": s, "label": "x", "label_id": 0} for s in segments],
    }


def training(cfg: DataConfig, seed: int) -> TrainingDataset:
    return TrainingDataset(cfg, load_subset(cfg, cfg.train_subset), seed=seed)


def inference(cfg: DataConfig, subset: str = "validation") -> InferenceDataset:
    return InferenceDataset(cfg, load_subset(cfg, subset))


@pytest.fixture
def tiny(tiny_data):
    """Training: a 40-step video, a 300-step video (longer than max_seq_len 64), a video without
    ground truth; validation: one 20-step video. Streams a (dim 3) and b (dim 2), equal lengths."""
    lengths = {"short": 40, "long": 300, "empty": 30, "val": 20}
    database = {
        "short": entry("training", 40, [[2.0, 5.0], [10.0, 12.0]]),
        "long": entry("training", 300, [[20.0, 30.0], [100.0, 101.0], [140.0, 149.0]]),
        "empty": entry("training", 30, []),
        "val": entry("validation", 20, [[1.0, 2.0]], fps=25.0),
    }
    arrays = {"a": {v: ramp(n, 3) for v, n in lengths.items()}, "b": {v: ramp(n, 2) + 0.5 for v, n in lengths.items()}}
    streams = {"a": {"dim": 3, "num_frames": 16}, "b": {"dim": 2, "num_frames": 16}}
    return tiny_data(database, arrays, streams=streams, max_seq_len=64, crop_ratio=[0.9, 1.0], trunc_thresh=0.5)


# ---------------------------------------------------------------------------- time grid


def test_time_grid_hand_values():
    assert seconds_to_grid(1.0, 30.0, 16, 16) == pytest.approx((30 - 8) / 16)  # 1.375
    assert seconds_to_grid(2.0, 25.0, 16, 32) == pytest.approx((50 - 16) / 16)  # 2.125
    assert seconds_to_grid(0.0, 30.0, 16, 16) == pytest.approx(-0.5)  # before the first clip centre
    assert grid_to_seconds(1.375, 30.0, 16, 16) == pytest.approx(1.0)
    assert grid_to_seconds(0.0, 24.0, 8, 16) == pytest.approx(8 / 24)
    assert feat_offset(16, 16) == 0.5 and feat_offset(16, 32) == 1.0 and feat_offset(4, 16) == 2.0
    t = np.array([[0.0, 1.5], [10.0, 123.25]])
    np.testing.assert_allclose(seconds_to_grid(t, 29.97, 16, 16), (t * 29.97 - 8) / 16)
    np.testing.assert_allclose(grid_to_seconds(seconds_to_grid(t, 29.97, 16, 32), 29.97, 16, 32), t)


# ---------------------------------------------------------------------------- random_crop


def overlap_ratio(segments: np.ndarray, start: int, stop: int, offset: float) -> np.ndarray:
    inter = np.minimum(segments[:, 1], stop + offset) - np.maximum(segments[:, 0], start - offset)
    return np.clip(inter, 0, None) / (segments[:, 1] - segments[:, 0])


def test_no_crop_without_crop_ratio_when_the_video_fits():
    segments = np.array([[-0.5, 3.0], [5.0, 9.0]])
    crop = random_crop(40, segments, 64, 0.5, None, 0.5, np.random.default_rng(0))
    assert (crop.start, crop.stop) == (0, 40)
    np.testing.assert_array_equal(crop.segments, segments)
    assert crop.keep.all()


def test_crop_length_follows_crop_ratio_and_max_seq_len():
    segments = np.array([[10.0, 20.0]])
    lengths = set()
    for seed in range(400):
        crop = random_crop(100, segments, 256, 0.5, [0.9, 1.0], 0.5, np.random.default_rng(seed))
        assert 90 <= crop.stop - crop.start <= 100 and crop.start >= 0 and crop.stop <= 100
        lengths.add(crop.stop - crop.start)
    assert lengths == set(range(90, 101))  # round(0.9*T) .. T, all reachable
    for seed in range(20):
        crop = random_crop(1000, segments, 256, 0.5, [0.9, 1.0], 0.5, np.random.default_rng(seed))
        assert crop.stop - crop.start == 256


def test_crop_invariants_on_random_videos():
    rng = np.random.default_rng(123)
    offset = 0.5
    for _ in range(300):
        length = int(rng.integers(20, 600))
        starts = rng.uniform(-0.5, length, size=int(rng.integers(0, 8)))
        segments = np.stack([starts, starts + rng.uniform(0.5, 60, size=starts.size)], axis=1)
        crop = random_crop(length, segments, 128, 0.5, [0.9, 1.0], offset, rng)
        size = crop.stop - crop.start
        assert size <= 128 and 0 <= crop.start < crop.stop <= length
        if size == length:  # the "whole video" branch keeps everything untouched
            np.testing.assert_array_equal(crop.segments, segments)
            continue
        ratio = overlap_ratio(segments, crop.start, crop.stop, offset)
        np.testing.assert_array_equal(crop.keep, ratio >= 0.5)  # the trunc_thresh rule
        expected = np.clip(segments[crop.keep], crop.start - offset, crop.stop + offset) - crop.start
        np.testing.assert_allclose(crop.segments, expected)
        assert np.all(crop.segments >= -offset) and np.all(crop.segments <= size + offset)


def test_trunc_thresh_rule_hand_case():
    segments = np.array([[8.0, 12.0]])  # T=12, window 10: start 0 keeps half, 1 keeps 3/4, 2 all
    starts_seen = {0.5: set(), 0.6: set()}
    for thresh in starts_seen:
        for seed in range(60):
            crop = random_crop(12, segments, 10, thresh, None, 0.0, np.random.default_rng(seed))
            starts_seen[thresh].add(crop.start)
            stop = min(12, crop.start + 10)
            np.testing.assert_allclose(crop.segments, [[8 - crop.start, stop - crop.start]])
    assert starts_seen[0.5] == {0, 1, 2}  # ratio 0.5 >= 0.5 is kept, so start 0 is accepted
    assert starts_seen[0.6] == {1, 2}  # start 0 would keep no action: another trial is drawn


def test_has_action_trials_and_the_fallback():
    rare = np.array([[500.0, 510.0]])  # only about a third of the windows keep it
    for seed in range(50):
        assert random_crop(1000, rare, 256, 0.5, None, 0.5, np.random.default_rng(seed)).keep.all()
    impossible = np.array([[0.0, 1000.0]])  # never half inside a 256 window: the last trial is used
    rng = np.random.default_rng(7)
    expected_start = np.random.default_rng(7).integers(0, 744, size=MAX_CROP_TRIALS, endpoint=True)[-1]
    crop = random_crop(1000, impossible, 256, 0.5, None, 0.5, rng)
    assert crop.start == expected_start and crop.segments.shape == (0, 2) and not crop.keep.any()
    empty = random_crop(1000, np.zeros((0, 2)), 256, 0.5, None, 0.5, np.random.default_rng(1))
    assert empty.stop - empty.start == 256 and empty.segments.shape == (0, 2)


# ---------------------------------------------------------------------------- datasets


def test_training_items_are_consistent_crops(tiny):
    dataset = training(tiny, seed=5)
    assert [v.video_id for v in dataset.videos] == ["short", "long", "empty"]  # all-negative video kept
    assert dataset.lengths == [40, 300, 30] and dataset.input_dim == 5 and dataset.num_classes == 1
    reader_full = {v.video_id: dataset.reader.load(v) for v in dataset.videos}
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for index, video in enumerate(dataset.videos):
            item = dataset[index]
            feats, size = item["feats"], item["feats"].shape[1]
            assert feats.dtype == torch.float32 and feats.shape[0] == 5 and size <= 64
            start = int(feats[0, 0]) // 10  # ramp: the value says which step it came from
            np.testing.assert_array_equal(feats.numpy(), reader_full[video.video_id][:, start : start + size])
            grid = video.segments * 2.0 - 0.5  # fps 32, stride 16, 16-frame clips
            if size == dataset.lengths[index]:
                expected = grid
            else:
                keep = overlap_ratio(grid, start, start + size, 0.5) >= 0.5
                expected = np.clip(grid[keep], start - 0.5, start + size + 0.5) - start
                np.testing.assert_array_equal(item["labels"].numpy(), video.labels[keep])
            np.testing.assert_allclose(item["segments"].numpy(), expected, rtol=1e-6)
            assert item["segments"].dtype == torch.float32 and item["labels"].dtype == torch.int64
            assert (item["fps"], item["feat_stride"], item["num_frames"]) == (32.0, 16, 16)
            if video.video_id == "long":
                assert size == 64


def test_crops_depend_only_on_seed_epoch_and_index(tiny):
    def crops(seed: int, epoch: int) -> list[tuple[int, int]]:
        dataset = training(tiny, seed=seed)
        dataset.set_epoch(epoch)
        items = [dataset[i] for i in range(3)]
        return [(int(item["feats"][0, 0]), item["feats"].shape[1]) for item in items]

    assert crops(1, 3) == crops(1, 3)
    assert len({tuple(crops(1, epoch)) for epoch in range(6)}) > 1
    assert crops(1, 3) != crops(2, 3)


def test_loader_batches_do_not_depend_on_worker_count(tiny):
    def epochs(workers: int) -> list[list]:
        dataset = training(tiny, seed=11)
        loader = build_loader(
            dataset, batch_size=2, shuffle=True, num_workers=workers, seed=3, pad_multiple=16, drop_last=False
        )
        out = []
        for epoch in range(3):
            dataset.set_epoch(epoch)  # must reach the persistent workers too
            out.append([(b["video_ids"], b["feats"].clone(), [s.clone() for s in b["segments"]]) for b in loader])
        return out

    serial, parallel = epochs(0), epochs(2)
    assert [[ids for ids, _, _ in e] for e in serial] == [[ids for ids, _, _ in e] for e in parallel]
    for epoch_s, epoch_p in zip(serial, parallel, strict=True):
        for (_, feats_s, segs_s), (_, feats_p, segs_p) in zip(epoch_s, epoch_p, strict=True):
            assert torch.equal(feats_s, feats_p)
            assert all(torch.equal(a, b) for a, b in zip(segs_s, segs_p, strict=True))
    assert any(
        not torch.equal(serial[0][i][1], serial[1][i][1]) or serial[0][i][0] != serial[1][i][0] for i in range(2)
    )  # a new epoch gives new crops or a new order


def test_inference_dataset_gives_whole_videos_with_grid_ground_truth(tiny):
    dataset = inference(tiny)  # data.val_subset
    assert len(dataset) == 1
    item = dataset[0]
    np.testing.assert_array_equal(item["feats"].numpy(), np.concatenate([ramp(20, 3).T, ramp(20, 2).T + 0.5]))
    np.testing.assert_allclose(item["segments"].numpy(), [[(25 - 8) / 16, (50 - 8) / 16]])  # fps 25
    assert item["video_id"] == "val" and item["duration"] == pytest.approx(20 * 16 / 25)
    assert [v.video_id for v in inference(tiny, "training").videos] == ["short", "long", "empty"]


def test_filtered_annotations_and_a_shared_reader(tiny):
    tiny.cache_features = True
    reader = FeatureReader(tiny)
    annotations = load_subset(tiny, "training")
    chosen = dataclasses.replace(annotations, videos=[annotations.videos[1]])  # only "long"
    dataset = InferenceDataset(tiny, chosen, reader)
    train_set = TrainingDataset(tiny, chosen, reader, seed=0)
    assert len(dataset) == 1 and dataset.length(0) == 300 and dataset.reader is train_set.reader is reader
    whole = dataset[0]["feats"]
    reader.path("a", "long").unlink()  # served from the shared cache from now on
    crop = train_set[0]["feats"]
    start = int(crop[0, 0]) // 10
    assert crop.shape == (5, 64) and torch.equal(crop, whole[:, start : start + 64])


def test_collate_pads_to_a_multiple_of_the_batch_maximum():
    items = [
        {
            "video_id": f"v{n}",
            "feats": torch.ones(3, n),
            "segments": torch.zeros(k, 2),
            "labels": torch.zeros(k, dtype=torch.int64),
            "fps": 30.0,
            "duration": 1.0,
            "feat_stride": 16,
            "num_frames": 16,
        }
        for n, k in ((5, 1), (9, 0))
    ]
    batch = collate(items, pad_multiple=4)
    assert batch["feats"].shape == (2, 3, 12) and batch["masks"].shape == (2, 1, 12)
    assert batch["masks"].dtype == torch.bool
    assert batch["masks"][0, 0].tolist() == [True] * 5 + [False] * 7
    assert batch["masks"][1, 0].tolist() == [True] * 9 + [False] * 3
    assert batch["feats"][0, :, :5].eq(1).all() and batch["feats"][0, :, 5:].eq(0).all()
    assert batch["video_ids"] == ["v5", "v9"] and [s.shape[0] for s in batch["segments"]] == [1, 0]
    assert batch["fps"] == [30.0, 30.0] and batch["feat_stride"] == [16, 16]
    assert collate(items, pad_multiple=1)["feats"].shape[2] == 9
    assert collate(items, pad_multiple=9)["feats"].shape[2] == 9


def test_missing_features_skip_or_fail(tiny):
    path = re.escape(str(tiny.streams["b"].dir)) + "/empty.npy"
    (training(tiny, seed=0).reader.path("b", "empty")).unlink()
    with pytest.raises(DataError, match=rf"^{path}: feature file not found"):
        training(tiny, seed=0)  # on_missing=error (default): fails when the dataset is built
    tiny.on_missing = "skip"
    dataset = training(tiny, seed=0)
    assert dataset.skipped == ["empty"] and [v.video_id for v in dataset.videos] == ["short", "long"]
    (dataset.reader.path("a", "val")).unlink()
    with pytest.raises(DataError, match=r"none of the 1 videos of subset 'validation' has feature files"):
        inference(tiny)


def test_bad_files_fail_when_the_dataset_is_built_not_in_a_worker(tiny):
    path = training(tiny, seed=0).reader.path("a", "long")
    np.save(path, np.zeros((300, 4), np.float32))
    message = rf"^{re.escape(str(path))}: expected dim 3 \(data\.streams\.a\.dim\), got 4"
    with pytest.raises(DataError, match=message):
        training(tiny, seed=0)


def test_shuffle_needs_a_training_dataset(tiny):
    with pytest.raises(TypeError, match="shuffle=True needs a TrainingDataset"):
        build_loader(inference(tiny), 2, shuffle=True, num_workers=0, seed=0, pad_multiple=1, drop_last=False)
