"""Post-processing a whole subset at once (localization.inference.subset_postprocess) gives, video by video,
exactly the detections of the per-video reference (localization.inference.postprocess.postprocess): same
rows, same order, same float bits, on random cases full of ties."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from localization.config.schema import TestConfig as PostConfig  # alias: pytest would try to collect Test*
from localization.inference import subset_postprocess
from localization.inference.postprocess import Candidates, postprocess
from localization.inference.subset_postprocess import CandidateSet, VideoTiming, _stable_order

GRIDS = [(16.0, 16.0), (8.0, 16.0), (4.5, 4.5), (5.333, 21.333)]  # (stride, clip): native, downsampled, auto, resized


def random_video(rng: np.random.Generator, n: int, num_classes: int) -> Candidates:
    """Clustered segments; scores and starts drawn from few values, so equal scores, equal starts
    and identical segments are common (the tie-breaks are what could differ)."""
    centres = rng.choice(rng.uniform(0, 60, 6), n) + rng.choice([0.0, 0.5, 1.0, 2.0], n)
    lengths = rng.choice([0.5, 1.0, 4.0, 12.0], n) * rng.choice([1.0, 1.0, 1.5], n)
    segments = np.stack([centres - lengths / 2, centres + lengths / 2], 1).astype(np.float32)
    scores = rng.choice(np.linspace(0.0005, 1.0, 12), n).astype(np.float32)
    return Candidates(segments, scores, rng.integers(0, num_classes, n).astype(np.int64))


def random_subset(rng: np.random.Generator, videos: int, num_classes: int) -> tuple[dict[str, Candidates], list]:
    raw, timing = {}, []
    for v in range(videos):
        n = int(rng.choice([0, 1, 2, 7, 40, 150]))
        raw[f"v{v}"] = random_video(rng, n, num_classes) if n else Candidates.empty()
        stride, clip = GRIDS[int(rng.integers(len(GRIDS)))]  # videos of one set on different grids
        fps, duration = float(rng.choice([25.0, 29.97, 30.0])), float(rng.uniform(5, 70))
        timing.append(VideoTiming(f"v{v}", fps, duration, stride, clip))
    return raw, timing


SETTINGS = [
    {},
    {"nms_sigma": 0.9, "min_score": 0.3, "max_seg_num": 10},
    {"nms_sigma": 0.1, "min_score": 0.0, "max_seg_num": 1000},
    {"multiclass_nms": False, "voting_thresh": 0.0},
    {"multiclass_nms": False, "voting_thresh": 0.75, "max_seg_num": 20},
    {"nms_method": "hard", "iou_threshold": 0.4, "min_score": 0.1},
    {"nms_method": "hard", "iou_threshold": 0.0, "min_score": 0.0, "max_seg_num": 5},
    {"nms_method": "hard", "multiclass_nms": False, "iou_threshold": 0.5, "voting_thresh": 0.9},
    {"nms_method": "none", "max_seg_num": 30},
    {"max_seg_num": 3},  # NMS first on each video's 12 best: mostly enough ...
    {"nms_sigma": 0.05, "min_score": 0.5, "max_seg_num": 5},  # ... mostly not: those videos run again
    {"nms_method": "hard", "iou_threshold": 0.2, "max_seg_num": 4},
    {"max_seg_num": 0},
    {"nms_method": "hard", "min_score": 2.0},  # no score above it: nothing is kept anywhere
]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("videos_per_block", [7, subset_postprocess.VIDEOS_PER_BLOCK])
def test_subset_detections_equal_the_per_video_ones(
    seed: int, videos_per_block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subset_postprocess, "VIDEOS_PER_BLOCK", videos_per_block)  # 40 videos: 6 blocks, or one
    rng = np.random.default_rng(seed)
    raw, timing = random_subset(rng, 40, [1, 5, 106][seed])
    candidates = CandidateSet.from_raw(raw, timing)
    for setting in SETTINGS:  # one set, every setting: the cached layouts must not leak state
        cfg = dataclasses.replace(PostConfig(), **setting)
        detections = candidates.detect(cfg).per_video()
        assert list(detections) == [t.video_id for t in timing]
        for video in timing:
            expected = postprocess(raw[video.video_id], cfg, video.fps, video.duration, video.stride, video.clip)
            got = detections[video.video_id]
            for name in ("segments", "scores", "labels"):
                a, b = getattr(got, name), getattr(expected, name)
                assert a.dtype == b.dtype, (setting, name)
                np.testing.assert_array_equal(a, b, err_msg=f"{setting} {video.video_id} {name}")


def test_empty_subset_and_videos_without_candidates() -> None:
    timing = [VideoTiming("a", 30.0, 10.0, 16.0, 16.0), VideoTiming("b", 30.0, 10.0, 16.0, 16.0)]
    candidates = CandidateSet.from_raw({"a": Candidates.empty(), "b": Candidates.empty()}, timing)
    for method in ("soft", "hard", "none"):
        detections = candidates.detect(dataclasses.replace(PostConfig(), nms_method=method))
        assert detections.offsets.tolist() == [0, 0, 0] and len(detections.scores) == 0


def test_the_fast_sort_is_lexsort() -> None:
    rng = np.random.default_rng(0)
    start = rng.choice(np.array([-3.5, -0.0, 0.0, 1e-30, 2.0, 2.5, 1e9], np.float32), 5000)
    key = rng.integers(0, 30, 5000)
    np.testing.assert_array_equal(_stable_order(key, start), np.lexsort((start, key)))
    wide = key * 2**33  # beyond the packed range: the plain lexsort
    np.testing.assert_array_equal(_stable_order(wide, start), np.lexsort((start, wide)))
