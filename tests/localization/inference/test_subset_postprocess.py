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
from localization.inference.subset_postprocess import CandidateSet, VideoTiming

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
@pytest.mark.parametrize("shortlist_per_pick", [1, subset_postprocess.SHORTLIST_PER_PICK])
def test_subset_detections_equal_the_per_video_ones(
    seed: int, videos_per_block: int, shortlist_per_pick: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subset_postprocess, "VIDEOS_PER_BLOCK", videos_per_block)  # 40 videos: 6 blocks, or one
    # 1: the settings of 3-5 picks per video search them first among each video's 3-5 best rows
    monkeypatch.setattr(subset_postprocess, "SHORTLIST_PER_PICK", shortlist_per_pick)
    rng = np.random.default_rng(seed)
    raw, timing = random_subset(rng, 40, [1, 5, 106][seed])
    assert_per_video_detections(raw, timing, SETTINGS)  # one set, every setting: cached layouts must not leak state


def assert_per_video_detections(raw: dict[str, Candidates], timing: list, settings: list[dict]) -> None:
    """One candidate set post-processed with each setting in turn gives, video by video, the
    per-video reference's rows, order, dtypes and float bits."""
    candidates = CandidateSet.from_raw(raw, timing)
    for setting in settings:
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


def dense_video(rng: np.random.Generator, n: int, num_classes: int) -> Candidates:
    """An early model's candidates: every level's top (point, class) pairs, so each class holds
    hundreds of segments of every scale (the long ones make every pick's window most of its group),
    scores near the classifier prior with float32 ties, nearly all above min_score."""
    stride = rng.choice([1.0, 2.0, 4.0, 8.0, 16.0, 32.0], n)
    centre = np.floor(rng.uniform(0, 300, n) / stride) * stride
    reach = np.exp(0.5 + 0.8 * rng.standard_normal((n, 2))) * stride[:, None]
    segments = np.stack([centre - reach[:, 0], centre + reach[:, 1]], 1).astype(np.float32)
    segments[rng.random(n) < 0.02, 0] = -0.0  # starts at -0.0 and 0.0 sort as one value
    scores = np.maximum(np.round(1 / (1 + np.exp(-(rng.standard_normal(n) - 3.5))), 4), 0.0005).astype(np.float32)
    alone = rng.random(n) < 0.02  # short segments apart from the others, exactly at a min_score tried below
    segments[alone] = rng.uniform(400, 4000, (alone.sum(), 1)) + np.array([0.0, 0.5])
    scores[alone] = np.float32(0.05)
    return Candidates(segments, scores, rng.integers(0, num_classes, n).astype(np.int64))


DENSE_SETTINGS = [
    {
        "min_score": 0.05,
        "max_seg_num": 2000,
    },  # a set's first setting fills only what it picks from; the next reuse the buffer
    {},
    {"nms_sigma": 0.9, "max_seg_num": 200},
    {"nms_method": "hard", "iou_threshold": 0.5, "min_score": 0.01},
    {"nms_method": "hard", "iou_threshold": 0.3, "min_score": 0.0},
    {"multiclass_nms": False, "voting_thresh": 0.75},
    {"nms_method": "none"},
]


@pytest.mark.parametrize("shortlist_per_pick", [1, 2])  # 1: most videos run again with all their rows
def test_dense_subset_detections_equal_the_per_video_ones(
    shortlist_per_pick: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subset_postprocess, "VIDEOS_PER_BLOCK", 2)  # 5 videos: 3 blocks
    monkeypatch.setattr(subset_postprocess, "SHORTLIST_PER_PICK", shortlist_per_pick)
    rng = np.random.default_rng(7)
    raw = {f"v{v}": dense_video(rng, n, 4) for v, n in enumerate([3000, 1, 2500, 0, 3500])}
    raw["v3"] = Candidates.empty()
    timing = [VideoTiming(video_id, 30.0, 200.0, 16.0, 16.0) for video_id in raw]
    compact = CandidateSet.from_raw(raw, timing)
    assert compact.labels.dtype == np.int16 and compact.segments.dtype == np.float32
    assert_per_video_detections(raw, timing, DENSE_SETTINGS)


def test_a_video_runs_again_with_all_its_rows_only_when_its_shortlist_may_differ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two picks searched among a video's two best rows: enough when they do not overlap; when
    the first decays the second below the third best row, the video runs again with all its
    rows (the whole set's layout is built only then), and both give the per-video detections."""
    monkeypatch.setattr(subset_postprocess, "SHORTLIST_PER_PICK", 1)
    starts = np.arange(20, dtype=np.float32) * 10
    apart = Candidates(
        np.stack([starts, starts + 1], 1), np.linspace(0.9, 0.71, 20, dtype=np.float32), np.zeros(20, np.int64)
    )
    overlapping = Candidates(apart.segments.copy(), apart.scores, apart.labels)
    overlapping.segments[1] = overlapping.segments[0]  # IoU 1: Soft-NMS weighs the second by exp(-1 / 0.5)
    timing = [VideoTiming("v", 30.0, 300.0, 16.0, 16.0)]
    setting = {"max_seg_num": 2}
    for raw, runs_again in ((apart, False), (overlapping, True)):
        candidates = CandidateSet.from_raw({"v": raw}, timing)
        candidates.detect(dataclasses.replace(PostConfig(), **setting))
        assert bool(candidates._layouts) == runs_again
        assert_per_video_detections({"v": raw}, timing, [setting])


def test_the_shortlist_keeps_every_row_tied_with_its_last() -> None:
    """Each video's ``size`` best rows in row order, those tied with the last too (-0.0 as 0.0),
    and the lowest score kept (-inf where every row is kept)."""
    rng = np.random.default_rng(1)
    values = np.array([-1.0, -0.0, 0.0, 0.25, 0.5, 0.5, 2.0], np.float32)
    raw = {f"v{v}": random_video(rng, n, 3) for v, n in enumerate([0, 3, 40, 400])}
    for video in raw.values():
        video.scores[:] = rng.choice(values, len(video))
    timing = [VideoTiming(video_id, 30.0, 10.0, 16.0, 16.0) for video_id in raw]
    candidates = CandidateSet.from_raw(raw, timing)
    for size in (1, 3, 5, 50):
        shortlist = candidates._shortlist(size)
        for v, video in enumerate(raw.values()):
            lowest = np.sort(video.scores)[::-1][size - 1] if len(video) > size else np.float32(-np.inf)
            kept = np.flatnonzero(video.scores >= lowest)  # float comparison: -0.0 == 0.0
            a, b = shortlist.candidates.offsets[v : v + 2]
            np.testing.assert_array_equal(shortlist.rows[a:b], candidates.offsets[v] + kept)
            assert shortlist.lowest[v] == lowest and shortlist.whole[v] == (len(video) <= size)
            np.testing.assert_array_equal(shortlist.candidates.scores[a:b], video.scores[kept])


def test_the_layout_orders_as_lexsort() -> None:
    """The radix sort within videos gives ``np.lexsort``'s order: by video, class, start (-0.0 as
    0.0), then index; by descending score for ``nms_method="none"``."""
    rng = np.random.default_rng(0)
    values = np.array([-3.5, -0.0, 0.0, 1e-30, 2.0, 2.5, 1e9, -np.inf], np.float32)
    counts = [0, 5000, 1, 300]
    raw = {
        f"v{v}": Candidates(
            np.stack([rng.choice(values, n), np.full(n, 1e10, np.float32)], 1),
            rng.choice(values[values >= 0], n),
            rng.integers(0, 30, n),
        )
        for v, n in enumerate(counts)
    }
    timing = [VideoTiming(video_id, 30.0, 10.0, 16.0, 16.0) for video_id in raw]
    candidates = CandidateSet.from_raw(raw, timing)
    video = np.repeat(np.arange(len(counts)), counts)
    start, labels = candidates.segments[:, 0], candidates.labels
    np.testing.assert_array_equal(candidates._layout(True).order, np.lexsort((start, labels, video)))
    np.testing.assert_array_equal(candidates._layout(False).order, np.lexsort((start, video)))
    np.testing.assert_array_equal(candidates._score_order(), np.lexsort((-candidates.scores, video)))
