"""Post-processing: candidate selection, Soft-NMS / NMS, voting, seconds,
raw-candidate files. Hand-computed cases plus a comparison with a literal transcription of the
reference C++ loops on random inputs."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from localization.config.schema import TestConfig as PostConfig
from localization.errors import DataError
from localization.inference.postprocess import (
    Candidates,
    batched_nms,
    hard_nms,
    load_candidates,
    postprocess,
    save_candidates,
    score_voting,
    select_candidates,
    soft_nms,
    to_seconds,
)


def cands(segments, scores, labels=None) -> Candidates:
    scores = np.asarray(scores, np.float32)
    labels = np.zeros(len(scores), np.int64) if labels is None else np.asarray(labels, np.int64)
    return Candidates(np.asarray(segments, np.float32).reshape(-1, 2), scores, labels)


def cfg(**kwargs) -> PostConfig:
    return dataclasses.replace(PostConfig(), **kwargs)


# --------------------------------------------------------------------------------------------
# Soft-NMS on a hand case: A=[0,10] 0.9, B=[5,15] 0.8, C=[12,20] 0.7, sigma 0.5
# IoU(A,B) = 5/15, IoU(A,C) = 0, IoU(B,C) = 3/15.
# Pick A: B *= exp(-(1/3)^2/0.5); C unchanged (0.7 > B's 0.6406). Pick C: B *= exp(-0.2^2/0.5).
# --------------------------------------------------------------------------------------------

HAND = [[0, 10], [5, 15], [12, 20]], [0.9, 0.8, 0.7]
B_AFTER_A = 0.8 * math.exp(-((1 / 3) ** 2) / 0.5)  # 0.6406
B_FINAL = B_AFTER_A * math.exp(-(0.2**2) / 0.5)  # 0.5913


def test_soft_nms_gaussian_decay_and_selection_order():
    segs, scores = HAND
    keep, kept = soft_nms(np.array(segs, np.float32), np.array(scores, np.float32), 0.5, 0.001, 100)
    assert keep.tolist() == [0, 2, 1]  # C overtakes the decayed B
    np.testing.assert_allclose(kept, [0.9, 0.7, B_FINAL], rtol=1e-5)


def test_soft_nms_drops_scores_below_min_score():
    segs, scores = HAND
    keep, kept = soft_nms(np.array(segs, np.float32), np.array(scores, np.float32), 0.5, 0.65, 100)
    assert B_AFTER_A < 0.65
    assert keep.tolist() == [0, 2]
    np.testing.assert_allclose(kept, [0.9, 0.7], rtol=1e-6)


def test_soft_nms_first_pick_drops_distant_low_scores():
    # as the C++ loop: the first pick weighs every other candidate (by 1 when disjoint) and drops
    # those below min_score, even far away; only the first pick itself may be below min_score
    segs = np.array([[0, 10], [100, 101], [5, 15], [200, 210]], np.float32)
    scores = np.array([0.9, 0.1, 0.8, 0.15], np.float32)
    keep, _ = soft_nms(segs, scores, 0.5, 0.2, 100)
    assert keep.tolist() == [0, 2]
    assert reference_softnms(segs, scores, 0.5, 0.2)[0].tolist() == [0, 2]
    keep, kept = soft_nms(segs[[1, 3]], scores[[1, 3]], 0.5, 0.2, 100)
    assert keep.tolist() == [1] and kept.tolist() == [np.float32(0.15)]


def test_soft_nms_keeps_a_score_equal_to_min_score():
    segs = np.array([[0, 10], [20, 30]], np.float32)
    keep, _ = soft_nms(segs, np.array([0.9, 0.5], np.float32), 0.5, 0.5, 100)  # no overlap: weight 1
    assert keep.tolist() == [0, 1]


def test_soft_nms_caps_at_max_num():
    segs, scores = HAND
    keep, _ = soft_nms(np.array(segs, np.float32), np.array(scores, np.float32), 0.5, 0.001, 2)
    assert keep.tolist() == [0, 2]


def test_soft_nms_groups_are_independent():
    segs = np.array([[0, 10], [0, 10], [1, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    keep, kept = soft_nms(segs, scores, 0.5, 0.001, 100, groups=np.array([0, 1, 0]))
    assert keep.tolist() == [0, 1, 2]  # the identical segment of class 1 keeps its score
    np.testing.assert_allclose(kept, [0.9, 0.8, 0.7 * math.exp(-(0.9**2) / 0.5)], rtol=1e-5)


def test_hard_nms_threshold_is_inclusive_and_min_score_strict():
    segs = np.array([[0, 10], [5, 15], [0, 9.8], [30, 40], [50, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1], np.float32)
    # IoU(A,B) = 1/3 -> kept at 0.34; IoU(A,[0,9.8]) = 0.98 -> removed; 0.1 is not > 0.1
    keep, kept = hard_nms(segs, scores, 0.34, 0.1, 100)
    assert keep.tolist() == [0, 1, 3]
    np.testing.assert_array_equal(kept, scores[[0, 1, 3]])
    keep, _ = hard_nms(segs, scores, 1 / 3 - 1e-4, 0.1, 100)  # now B is suppressed too
    assert keep.tolist() == [0, 3]


def test_hard_nms_suppresses_at_exactly_the_threshold():
    segs = np.array([[0, 2], [1, 3]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    area = np.float32(2) + np.float32(1e-6)  # the reference's float32 IoU of the pair
    iou = np.float32(1) / (area + area - np.float32(1))
    assert hard_nms(segs, scores, float(iou), 0.0, 100)[0].tolist() == [0]
    assert hard_nms(segs, scores, float(np.nextafter(iou, np.float32(1))), 0.0, 100)[0].tolist() == [0, 1]


# --------------------------------------------------------------------------------------------
# batched_nms
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["soft", "hard"])
def test_multiclass_nms_does_not_suppress_across_classes(method):
    c = cands([[0, 10], [0, 10.1], [40, 50]], [0.9, 0.8, 0.3], [0, 1, 0])
    out = batched_nms(c, cfg(nms_method=method, multiclass_nms=True, iou_threshold=0.5))
    np.testing.assert_array_equal(out.scores, np.float32([0.9, 0.8, 0.3]))
    assert out.labels.tolist() == [0, 1, 0]
    agnostic = batched_nms(c, cfg(nms_method=method, multiclass_nms=False, voting_thresh=0, iou_threshold=0.5))
    if method == "hard":
        assert agnostic.scores.tolist() == pytest.approx([0.9, 0.3])
    else:
        # the decayed copy (0.113) now ranks below the far-away 0.3
        np.testing.assert_allclose(agnostic.scores, [0.9, 0.3, 0.8 * math.exp(-((10 / 10.1) ** 2) / 0.5)], rtol=1e-5)
        assert agnostic.labels.tolist() == [0, 0, 1]


def test_batched_nms_sorts_by_score_and_keeps_max_seg_num():
    rng = np.random.default_rng(0)
    starts = rng.uniform(0, 100, 60)
    c = cands(np.stack([starts, starts + rng.uniform(1, 10, 60)], 1), rng.uniform(0.01, 1, 60), rng.integers(0, 5, 60))
    out = batched_nms(c, cfg(max_seg_num=7))
    assert len(out) == 7
    assert np.all(np.diff(out.scores) <= 0)


def test_score_voting_hand_case():
    # A=[0,10] 0.9 and B=[0,11] 0.6 (IoU 10/11) are merged by NMS; C=[30,40] stands alone
    c = cands([[0, 10], [0, 11], [30, 40]], [0.9, 0.6, 0.5])
    out = batched_nms(c, cfg(nms_method="hard", multiclass_nms=False, iou_threshold=0.5, voting_thresh=0.9))
    w_b = 0.6 * 10 / 11  # score * IoU; A votes for itself with 0.9 * 1
    np.testing.assert_allclose(out.segments, [[0, (0.9 * 10 + w_b * 11) / (0.9 + w_b)], [30, 40]], rtol=1e-6)
    np.testing.assert_array_equal(out.scores, np.float32([0.9, 0.5]))  # scores are not voted
    stricter = batched_nms(c, cfg(nms_method="hard", multiclass_nms=False, iou_threshold=0.5, voting_thresh=0.95))
    np.testing.assert_array_equal(stricter.segments, [[0, 10], [30, 40]])


def test_score_voting_uses_all_candidates_with_iou_weights():
    kept = np.array([[0, 10]], np.float32)
    others = np.array([[0, 10], [1, 10], [0, 12], [50, 60]], np.float32)
    scores = np.array([0.5, 0.4, 0.2, 0.9], np.float32)
    w = np.array([0.5 * 1, 0.4 * 0.9, 0.2 * 10 / 12, 0])
    expected = (w[:, None] * others).sum(0) / w.sum()
    np.testing.assert_allclose(score_voting(kept, others, scores, 0.5)[0], expected, rtol=1e-6)


def reference_seg_voting(nms_segs, all_segs, all_scores, iou_threshold):
    """seg_voting of nms.py: dense (M, N) IoU matrix, weights (IoU >= t) * score * IoU."""
    left = np.maximum(nms_segs[:, None, 0], all_segs[None, :, 0])
    right = np.minimum(nms_segs[:, None, 1], all_segs[None, :, 1])
    inter = np.clip(right - left, 0, None)
    lens = (nms_segs[:, 1] - nms_segs[:, 0])[:, None] + (all_segs[:, 1] - all_segs[:, 0])[None, :]
    iou = inter / (lens - inter)
    weights = (iou >= iou_threshold) * all_scores[None, :] * iou
    return (weights / weights.sum(1, keepdims=True)) @ all_segs


@pytest.mark.parametrize("voting_thresh", [0.05, 0.5, 0.75, 0.95, 1.0])
def test_score_voting_matches_dense_reference(voting_thresh):
    rng = np.random.default_rng(11)
    c = random_candidates(rng, 400, 1)
    kept = c.segments[rng.choice(len(c), 30, replace=False)]
    np.testing.assert_allclose(
        score_voting(kept, c.segments, c.scores, voting_thresh),
        reference_seg_voting(kept, c.segments, c.scores, voting_thresh),
        rtol=1e-5,
    )
    assert score_voting(kept[:0], c.segments, c.scores, voting_thresh).shape == (0, 2)


def test_nms_method_none_keeps_top_scores():
    c = cands([[0, 10], [0, 10], [0, 10], [0, 10]], [0.2, 0.9, 0.5, 0.7], [0, 1, 2, 3])
    out = batched_nms(c, cfg(nms_method="none", max_seg_num=2))
    assert out.labels.tolist() == [1, 3]


def test_empty_candidates():
    for method in ("soft", "hard", "none"):
        for multiclass in (True, False):
            out = batched_nms(Candidates.empty(), cfg(nms_method=method, multiclass_nms=multiclass))
            assert len(out) == 0 and out.segments.shape == (0, 2)


# --------------------------------------------------------------------------------------------
# Literal transcription of the reference C++ (nms_cpu.cpp) and Python wrapper (nms.py)
# --------------------------------------------------------------------------------------------


def reference_softnms(segs, scores, sigma, min_score):
    """softnms_1d_cpu, method 2, line by line in float32. Returns (inds, dets (M, 3))."""
    f32 = np.float32
    x1, x2 = segs[:, 0].astype(f32), segs[:, 1].astype(f32)
    sc = scores.astype(f32)
    areas = x2 - x1 + f32(1e-6)
    sigma, min_score = f32(sigma), f32(min_score)
    nsegs = len(sc)
    inds = np.arange(nsegs)
    dets = np.zeros((nsegs, 3), f32)
    i = 0
    while i < nsegs:
        max_score, max_pos = sc[i], i
        for pos in range(i + 1, nsegs):
            if max_score < sc[pos]:
                max_score, max_pos = sc[pos], pos
        ix1, ix2, iscore = x1[max_pos], x2[max_pos], sc[max_pos]
        dets[i] = ix1, ix2, iscore
        iarea, iind = areas[max_pos], inds[max_pos]
        x1[max_pos], x2[max_pos], sc[max_pos] = x1[i], x2[i], sc[i]
        areas[max_pos], inds[max_pos] = areas[i], inds[i]
        x1[i], x2[i], sc[i], areas[i], inds[i] = ix1, ix2, iscore, iarea, iind
        pos = i + 1
        while pos < nsegs:
            inter = max(f32(0), min(ix2, x2[pos]) - max(ix1, x1[pos]))
            ovr = inter / (iarea + areas[pos] - inter)
            sc[pos] *= np.exp(-(ovr * ovr) / sigma)
            if sc[pos] < min_score:
                last = nsegs - 1
                x1[pos], x2[pos], sc[pos] = x1[last], x2[last], sc[last]
                areas[pos], inds[pos] = areas[last], inds[last]
                nsegs -= 1
                pos -= 1
            pos += 1
        i += 1
    return inds[:nsegs], dets[:nsegs]


def reference_nms(segs, scores, iou_threshold):
    """nms_1d_cpu in float32: indices kept, in descending score order."""
    f32 = np.float32
    x1, x2 = segs[:, 0].astype(f32), segs[:, 1].astype(f32)
    areas = x2 - x1 + f32(1e-6)
    order = np.argsort(-scores, kind="stable")
    select = np.ones(len(order), bool)
    for _i in range(len(order)):
        if not select[_i]:
            continue
        i = order[_i]
        for _j in range(_i + 1, len(order)):
            if not select[_j]:
                continue
            j = order[_j]
            inter = max(f32(0), min(x2[i], x2[j]) - max(x1[i], x1[j]))
            if inter / (areas[i] + areas[j] - inter) >= f32(iou_threshold):
                select[_j] = False
    return order[select]


def reference_batched_nms(segs, scores, labels, c: PostConfig):
    """batched_nms of nms.py without voting: per class (or all), cap, concatenate, sort, cap."""
    groups = [np.flatnonzero(labels == k) for k in np.unique(labels)] if c.multiclass_nms else [np.arange(len(scores))]
    out_idx, out_scores = [], []
    for idx in groups:
        if c.nms_method == "soft":
            inds, dets = reference_softnms(segs[idx], scores[idx], c.nms_sigma, c.min_score)
            out_idx.append(idx[inds[: c.max_seg_num]])
            out_scores.append(dets[: c.max_seg_num, 2])
        else:
            valid = idx[scores[idx] > c.min_score] if c.min_score > 0 else idx
            inds = reference_nms(segs[valid], scores[valid], c.iou_threshold)[: c.max_seg_num]
            out_idx.append(valid[inds])
            out_scores.append(scores[valid[inds]])
    idx, sc = np.concatenate(out_idx), np.concatenate(out_scores)
    order = np.argsort(-sc, kind="stable")[: c.max_seg_num]
    return idx[order], sc[order]


def random_candidates(rng, n, num_classes):
    """Clustered segments (lots of overlap), scores partly below typical min_score values."""
    centres = rng.choice(rng.uniform(0, 60, 8), n) + rng.normal(0, 2, n)
    lengths = np.exp(rng.uniform(np.log(0.5), np.log(20), n))
    segs = np.stack([centres - lengths / 2, centres + lengths / 2], 1).astype(np.float32)
    return cands(segs, rng.uniform(0, 1, n), rng.integers(0, num_classes, n))


@pytest.mark.parametrize("seed", range(4))
def test_soft_nms_matches_reference_loop(seed):
    rng = np.random.default_rng(seed)
    c = random_candidates(rng, 120, 1)
    sigma, min_score = [(0.5, 0.001), (0.75, 0.2), (0.1, 0.05), (0.5, 0.0)][seed]
    ref_inds, ref_dets = reference_softnms(c.segments, c.scores, sigma, min_score)
    keep, kept = soft_nms(c.segments, c.scores, sigma, min_score, max_num=len(c))  # no cap: all of it
    np.testing.assert_array_equal(keep, ref_inds)
    np.testing.assert_array_equal(kept, ref_dets[:, 2])
    np.testing.assert_array_equal(c.segments[keep], ref_dets[:, :2])


@pytest.mark.parametrize("method", ["soft", "hard"])
@pytest.mark.parametrize("multiclass", [True, False])
def test_batched_nms_matches_reference(method, multiclass):
    rng = np.random.default_rng(7)
    for max_seg_num, min_score, iou_threshold in [(100, 0.001, 0.4), (15, 0.3, 0.1), (100, 0.0, 0.0)]:
        c = random_candidates(rng, 200, 5)
        t = cfg(
            nms_method=method,
            multiclass_nms=multiclass,
            max_seg_num=max_seg_num,
            min_score=min_score,
            iou_threshold=iou_threshold,
            nms_sigma=0.5,
            voting_thresh=0,
        )
        ref_idx, ref_scores = reference_batched_nms(c.segments, c.scores, c.labels, t)
        out = batched_nms(c, t)
        np.testing.assert_array_equal(out.scores, ref_scores)
        np.testing.assert_array_equal(out.segments, c.segments[ref_idx])
        np.testing.assert_array_equal(out.labels, c.labels[ref_idx])


# --------------------------------------------------------------------------------------------
# select_candidates
# --------------------------------------------------------------------------------------------


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_select_candidates_threshold_topk_decoding_and_duration():
    # level 0: stride 1, 3 points, 2 classes; level 1: stride 2, 2 points
    points = torch.tensor([[0, 0, 4, 1], [1, 0, 4, 1], [2, 0, 4, 1], [0, 4, 99, 2], [2, 4, 99, 2]], dtype=torch.float32)
    probs0 = torch.tensor([[0.9, 0.0005], [0.8, 0.7], [0.95, 0.6]])
    probs1 = torch.tensor([[0.3, 0.4], [0.5, 0.2]])
    logits = [probs0.logit(), probs1.logit()]
    offsets = [torch.tensor([[1.0, 2.0], [0.5, 0.5], [0.02, 0.01]]), torch.tensor([[1.0, 1.0], [3.0, 0.5]])]
    masks = [torch.tensor([True, True, True]), torch.tensor([True, False])]  # level 1, point 1 padded
    out = select_candidates(
        logits, offsets, masks, points, cfg(pre_nms_thresh=0.001, pre_nms_topk=3, duration_thresh=0.05)
    )
    # level 0 top-3 by prob: (p2,c0) 0.95, (p0,c0) 0.9, (p1,c0) 0.8; (p2,c0) is 0.03 long -> dropped
    # level 1: point 1 masked -> probs 0.3 (c0), 0.4 (c1) of point 0 -> [0 - 1*2, 0 + 1*2]
    np.testing.assert_allclose(out.scores, [0.9, 0.8, 0.4, 0.3], rtol=1e-6)
    assert out.labels.tolist() == [0, 0, 1, 0]
    np.testing.assert_allclose(out.segments, [[-1, 2], [0.5, 1.5], [-2, 2], [-2, 2]], rtol=1e-6)
    assert out.segments.dtype == np.float32 and out.labels.dtype == np.int64

    high = select_candidates(logits, offsets, masks, points, cfg(pre_nms_thresh=0.75, duration_thresh=0.0))
    # threshold is strict and applies to every level: 0.95, 0.9, 0.8 remain (0.03-long kept now)
    np.testing.assert_allclose(high.scores, [0.95, 0.9, 0.8], rtol=1e-6)
    np.testing.assert_allclose(high.segments[0], [2 - 0.02, 2 + 0.01], rtol=1e-6)


def test_select_candidates_rejects_mismatched_points():
    with pytest.raises(ValueError, match="points"):
        select_candidates(
            [torch.zeros(3, 2)], [torch.zeros(3, 2)], [torch.ones(3, dtype=torch.bool)], torch.zeros(4, 4), cfg()
        )


# --------------------------------------------------------------------------------------------
# Seconds, end to end, files
# --------------------------------------------------------------------------------------------


def test_to_seconds_converts_and_clamps():
    c = cands([[0, 10], [-2, 3], [100, 200]], [0.5, 0.4, 0.3])
    out = to_seconds(c, fps=30.0, duration=60.0, feat_stride=16, num_frames=16)
    # (g * 16 + 8) / 30
    np.testing.assert_allclose(out.segments, [[8 / 30, 168 / 30], [0, 56 / 30], [1608 / 30, 60.0]])
    assert out.segments.max() <= 60.0 and out.segments.min() >= 0.0
    np.testing.assert_array_equal(out.scores, c.scores)


def test_postprocess_is_nms_then_seconds():
    c = cands([[0, 10], [0, 10.5], [20, 30]], [0.9, 0.8, 0.7], [0, 0, 1])
    t = cfg(nms_method="hard", iou_threshold=0.5)
    out = postprocess(c, t, fps=10.0, duration=100.0, feat_stride=4, num_frames=8)
    np.testing.assert_allclose(out.segments, [[0.4, 4.4], [8.4, 12.4]])
    assert out.labels.tolist() == [0, 1]


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    raw = {
        "v_00000001": random_candidates(rng, 50, 106),
        "v_empty": Candidates.empty(),
        "vidéo-2": random_candidates(rng, 7, 106),
    }
    path = tmp_path / "raw_validation"  # no suffix: the exact path is used
    save_candidates(path, raw)
    assert path.exists()
    back = load_candidates(path)
    assert list(back) == list(raw)
    for video_id, c in raw.items():
        for field in ("segments", "scores", "labels"):
            np.testing.assert_array_equal(getattr(back[video_id], field), getattr(c, field))
            assert getattr(back[video_id], field).dtype == getattr(c, field).dtype
    with np.load(path, allow_pickle=False) as npz:  # plain arrays only
        assert sorted(npz.files) == ["labels", "offsets", "scores", "segments", "video_ids"]


def test_save_load_empty_dict(tmp_path):
    save_candidates(tmp_path / "raw.npz", {})
    assert load_candidates(tmp_path / "raw.npz") == {}


def test_load_candidates_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"missing\.npz: file not found"):
        load_candidates(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, scores=np.zeros(3))
    with pytest.raises(DataError, match=r"bad\.npz: missing array\(s\)"):
        load_candidates(bad)
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    with pytest.raises(DataError, match=r"junk\.npz"):
        load_candidates(junk)
