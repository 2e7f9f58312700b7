"""Post-processing: model outputs -> scored candidates -> NMS -> detections in seconds.

Follows the ActionFormer reference (``libs/modeling/meta_archs.py`` inference_single_video and
``libs/utils/nms.py`` + ``csrc/nms_cpu.cpp``) in pure NumPy/PyTorch, so
nothing has to be compiled (the all-videos form, ``subset_postprocess``, adds loops Numba
compiles). Raw (pre-NMS) candidates can be saved to one ``.npz`` file and post-processed again
with other settings without running the model.

Deviations from the reference:

* NMS gives ties between equal scores to the lowest class, then the earliest start, then the
  lowest candidate index (the C++ loop breaks them by its internal swap order, ``torch.sort`` in
  an unspecified order); with distinct scores the output is identical;
* the per-level top-k takes ``topk`` before the ``pre_nms_thresh`` filter (the same set unless
  scores tie at the cut; no host sync);
* score voting only visits candidates that can reach the IoU threshold (the same result up to
  float32 summation order);
* ``nms_method="none"`` keeps the top ``max_seg_num`` candidates by score (the reference keeps all).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from localization.config.schema import TestConfig
from localization.data.timegrid import grid_to_seconds
from localization.errors import DataError

_AREA_EPS = np.float32(1e-6)  # the reference C++ adds this to every segment length
_REMOVED = np.float32(-np.inf)  # score of a selected or suppressed candidate


@dataclass
class Candidates:
    """Scored segments of one video.

    Before :func:`to_seconds` the segments are in feature-grid units (float32); after it they are
    seconds (float64, so clamping to the video duration is exact).
    """

    segments: np.ndarray  # (N, 2) start, end
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64 class ids

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, index: np.ndarray) -> Candidates:
        """The candidates at ``index`` (an integer array or a boolean mask), in that order."""
        return Candidates(self.segments[index], self.scores[index], self.labels[index])

    @staticmethod
    def empty() -> Candidates:
        return Candidates(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


# --------------------------------------------------------------------------------------------
# Model outputs -> candidates
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def select_candidates(
    cls_logits: list[torch.Tensor],
    offsets: list[torch.Tensor],
    masks: list[torch.Tensor],
    points: torch.Tensor,
    test_cfg: TestConfig,
) -> Candidates:
    """Decode one video's per-level outputs into pre-NMS candidates (grid units).

    Per level: probability = sigmoid(logit) * mask over (points x classes); the top
    ``pre_nms_topk`` above ``pre_nms_thresh`` are kept; each becomes (point, class) and its
    segment [t - left * stride, t + right * stride]; segments not longer than
    ``duration_thresh`` are dropped. Runs on the tensors' device; one transfer to the CPU at the end.

    Args:
        cls_logits: per level (T_l, K).
        offsets: per level (T_l, 2), in units of the level's stride.
        masks: per level (T_l,) bool, False at padding.
        points: (sum T_l, 4) rows [t, reg_lo, reg_hi, stride], levels concatenated.
    """
    lengths = [logits.shape[0] for logits in cls_logits]
    if points.shape[0] != sum(lengths):
        raise ValueError(f"points has {points.shape[0]} rows, the levels have {sum(lengths)} positions")
    probs, segments, labels = [], [], []
    for logits, offs, mask, pts in zip(cls_logits, offsets, masks, points.split(lengths), strict=True):
        num_classes = logits.shape[1]
        prob = (logits.float().sigmoid() * mask[:, None]).flatten()  # (T_l * K,)
        # top-k first, then the threshold: the survivors of the threshold are a prefix of the
        # sorted order, so this is the reference's "threshold, then top-k" without a host sync
        top_prob, flat = prob.topk(min(test_cfg.pre_nms_topk, prob.numel()))  # (k,), sorted
        point = torch.div(flat, num_classes, rounding_mode="floor")  # (k,)
        pt = pts[point]  # (k, 4)
        off = offs[point].float()  # (k, 2)
        start = pt[:, 0] - off[:, 0] * pt[:, 3]
        end = pt[:, 0] + off[:, 1] * pt[:, 3]
        probs.append(top_prob)
        segments.append(torch.stack((start, end), dim=1))  # (k, 2)
        labels.append(flat % num_classes)
    prob, seg, label = torch.cat(probs), torch.cat(segments), torch.cat(labels)
    keep = (prob > test_cfg.pre_nms_thresh) & (seg[:, 1] - seg[:, 0] > test_cfg.duration_thresh)
    return Candidates(
        seg[keep].cpu().numpy().astype(np.float32, copy=False),
        prob[keep].cpu().numpy().astype(np.float32, copy=False),
        label[keep].cpu().numpy().astype(np.int64, copy=False),
    )


# --------------------------------------------------------------------------------------------
# NMS
# --------------------------------------------------------------------------------------------

Suppress = Callable[[np.ndarray, np.ndarray], None]  # (scores view, IoU with the pick) -> in place


def _greedy_select(
    segments: np.ndarray, scores: np.ndarray, groups: np.ndarray | None, max_num: int, suppress: Suppress
) -> tuple[np.ndarray, np.ndarray]:
    """The loop shared by Soft-NMS and hard NMS: pick the best, let it suppress its group, repeat.

    Within a group this is the reference C++ loop (float32, areas + 1e-6). Across groups nothing
    interacts, and every group's picked scores are non-increasing, so always taking the group
    with the best remaining score merges the per-group outputs in descending score order: the
    first ``max_num`` picks equal the reference's per-class NMS, concatenation, sort and cap.

    Speed: only ``max_num`` steps run, and after a group's first pick (which visits the whole
    group) a pick only visits the candidates that can overlap it: a group is sorted by start, and
    a candidate overlapping [s, e] starts in (s - longest, e). This is exact because after that
    first pass ``suppress`` leaves IoU-0 candidates alone: Soft-NMS weighs them by exp(0) = 1 and
    has already dropped those below ``min_score``; hard NMS removes them only when
    ``iou_threshold`` <= 0, and then the first pass removed the whole group.

    Returns (indices into the input, scores at selection), in selection order.
    """
    n = len(scores)
    if n == 0 or max_num <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    order = np.argsort(segments[:, 0], kind="stable")  # (N,) by start
    starts = np.zeros(1, np.int64)
    if groups is not None:  # then by group, keeping the start order inside a group
        g = groups[order]
        small = g.min() >= 0 and g.max() < 2**15  # int16 keys get numpy's radix sort
        order = order[np.argsort(g.astype(np.int16) if small else g, kind="stable")]
        g = groups[order]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])  # (G,)
    ends = np.r_[starts[1:], n]
    x1 = np.ascontiguousarray(segments[order, 0], dtype=np.float32)  # (N,) ascending per group
    x2 = np.ascontiguousarray(segments[order, 1], dtype=np.float32)  # (N,)
    areas = x2 - x1 + _AREA_EPS  # (N,)
    longest = np.maximum.reduceat(x2.astype(np.float64) - x1, starts)  # (G,) exact in float64
    sc = scores[order].astype(np.float32)  # (N,) working scores; _REMOVED once gone
    group_best = np.maximum.reduceat(sc, starts)  # (G,)
    visited = np.zeros(len(starts), bool)  # (G,) has the group had its first pick

    picked, picked_scores = [], []
    for _ in range(max_num):
        group = int(np.argmax(group_best))
        if group_best[group] == _REMOVED:
            break
        a, b = starts[group], ends[group]
        p = a + int(np.argmax(sc[a:b]))
        picked.append(p)
        picked_scores.append(sc[p])
        sc[p] = _REMOVED
        lo, hi = a, b
        if visited[group]:  # float32 bounds (a float64 one would copy the array); a float32
            # start above the exact bound is >= the bound's float32 rounding, so none is missed
            lo = a + int(np.searchsorted(x1[a:b], np.float32(float(x1[p]) - longest[group]), "left"))
            hi = a + int(np.searchsorted(x1[a:b], x2[p], "left"))
        visited[group] = True
        inter = np.maximum(np.minimum(x2[p], x2[lo:hi]) - np.maximum(x1[p], x1[lo:hi]), 0)
        suppress(sc[lo:hi], inter / (areas[p] + areas[lo:hi] - inter))  # view: writes through
        group_best[group] = sc[a:b].max()
    return order[np.asarray(picked, np.int64)], np.asarray(picked_scores, np.float32)


def soft_nms(
    segments: np.ndarray,
    scores: np.ndarray,
    sigma: float,
    min_score: float,
    max_num: int,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian Soft-NMS as the reference C++ (method 2).

    Each pick multiplies the score of every remaining candidate of its group by
    exp(-IoU^2 / sigma) (no factor 2; there is no IoU threshold) and drops those that fall below
    ``min_score``. ``groups`` (N,) runs one independent Soft-NMS per group value.

    Returns (indices (M,) int64, decayed scores (M,) float32) in selection order, M <= max_num.
    """
    sigma32, floor = np.float32(sigma), np.float32(min_score)

    def decay(s: np.ndarray, iou: np.ndarray) -> None:
        s *= np.exp(-(iou * iou) / sigma32)
        s[~(s >= floor)] = _REMOVED  # also catches -inf * 0 = nan

    return _greedy_select(segments, scores, groups, max_num, decay)


def hard_nms(
    segments: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    min_score: float,
    max_num: int,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy NMS as the reference: keep scores > ``min_score`` (when > 0), then every pick
    removes the candidates of its group with IoU >= ``iou_threshold``.

    Returns (indices (M,) int64, scores (M,) float32) in descending score order, M <= max_num.
    """
    threshold = np.float32(iou_threshold)
    valid = np.flatnonzero(scores > min_score) if min_score > 0 else np.arange(len(scores))

    def remove(s: np.ndarray, iou: np.ndarray) -> None:
        s[iou >= threshold] = _REMOVED

    groups = None if groups is None else groups[valid]
    keep, kept_scores = _greedy_select(segments[valid], scores[valid], groups, max_num, remove)
    return valid[keep], kept_scores


def score_voting(
    kept: np.ndarray, all_segments: np.ndarray, all_scores: np.ndarray, voting_thresh: float
) -> np.ndarray:
    """Refine the kept segments' boundaries as the reference ``seg_voting``.

    Each kept segment (M, 2) becomes the mean of the pre-NMS segments (N, 2) with IoU >=
    ``voting_thresh`` (> 0), weighted by score * IoU (the reference's unused ``score_offset`` is
    omitted). A kept segment is itself among the candidates, so every weight sum is > 0.
    """
    if len(kept) == 0:
        return kept.astype(np.float32)
    # IoU >= t needs |start_j - start_k| <= union - inter <= (1/t - 1) * len_k, so only the
    # candidates starting in that window (plus slack for float32 rounding) are visited
    order = np.argsort(all_segments[:, 0])  # (N,)
    sorted_starts = all_segments[order, 0]
    kept_len = kept[:, 1] - kept[:, 0]  # (M,)
    reach = (1 / voting_thresh - 1) * kept_len.astype(np.float64) * 1.001 + 1e-3  # (M,)
    lo = np.searchsorted(sorted_starts, kept[:, 0] - reach, "left")  # (M,)
    hi = np.searchsorted(sorted_starts, kept[:, 0] + reach, "right")  # (M,)
    cols = lo[:, None] + np.arange(int((hi - lo).max()))  # (M, W)
    inside = cols < hi[:, None]  # (M, W) padding of the shorter windows is False
    idx = order[np.minimum(cols, len(order) - 1)]  # (M, W)
    segs = all_segments[idx]  # (M, W, 2)
    x1, x2 = segs[..., 0], segs[..., 1]  # (M, W)
    inter = np.maximum(np.minimum(kept[:, None, 1], x2) - np.maximum(kept[:, None, 0], x1), 0)
    iou = inter / (kept_len[:, None] + (x2 - x1) - inter)  # (M, W)
    weights = np.where(inside & (iou >= voting_thresh), all_scores[idx] * iou, 0).astype(np.float32)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("mw,mwc->mc", weights, segs).astype(np.float32)  # (M, 2)


def batched_nms(candidates: Candidates, test_cfg: TestConfig) -> Candidates:
    """NMS of one video's candidates as the reference ``batched_nms``, sorted by score.

    ``multiclass_nms``: independent NMS per class. Otherwise one class-agnostic NMS followed by
    score voting when ``voting_thresh`` > 0. At most ``max_seg_num`` segments are returned.
    """
    c, cfg = candidates, test_cfg
    if cfg.nms_method == "none":
        return c.take(np.argsort(-c.scores, kind="stable")[: cfg.max_seg_num])
    groups = c.labels if cfg.multiclass_nms else None
    if cfg.nms_method == "soft":
        keep, scores = soft_nms(c.segments, c.scores, cfg.nms_sigma, cfg.min_score, cfg.max_seg_num, groups)
    else:
        keep, scores = hard_nms(c.segments, c.scores, cfg.iou_threshold, cfg.min_score, cfg.max_seg_num, groups)
    # selection order is already descending score (see _greedy_select): the reference's final
    # sort and cap are no-ops here
    segments = c.segments[keep]
    if not cfg.multiclass_nms and cfg.voting_thresh > 0:
        segments = score_voting(segments, c.segments, c.scores, cfg.voting_thresh)
    return Candidates(segments, scores, c.labels[keep])


# --------------------------------------------------------------------------------------------
# Grid units -> seconds
# --------------------------------------------------------------------------------------------


def to_seconds(candidates: Candidates, fps: float, duration: float, feat_stride: int, num_frames: int) -> Candidates:
    """Grid units -> seconds (``grid_to_seconds``), clamped to [0, duration] as the
    reference does, since predicted boundaries may fall outside the video."""
    seconds = grid_to_seconds(candidates.segments.astype(np.float64), fps, feat_stride, num_frames)  # (N, 2)
    return Candidates(np.clip(seconds, 0.0, duration), candidates.scores, candidates.labels)


def postprocess(
    candidates: Candidates, test_cfg: TestConfig, fps: float, duration: float, feat_stride: int, num_frames: int
) -> Candidates:
    """One video's raw candidates -> final detections in seconds."""
    return to_seconds(batched_nms(candidates, test_cfg), fps, duration, feat_stride, num_frames)


# --------------------------------------------------------------------------------------------
# Raw candidates on disk
# --------------------------------------------------------------------------------------------

_RAW_KEYS = ("video_ids", "offsets", "segments", "scores", "labels")


def save_candidates(path: str | Path, raw: dict[str, Candidates]) -> None:
    """Write every video's raw candidates to one ``.npz`` (concatenated arrays + per-video
    offsets; plain arrays only, so loading needs no pickle). Written atomically."""
    path = Path(path)
    items = list(raw.items())
    counts = [len(c) for _, c in items]
    arrays = {
        "video_ids": np.array([video_id for video_id, _ in items], dtype=str),  # (V,)
        "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),  # (V + 1,)
        "segments": np.concatenate([c.segments for _, c in items] or [np.zeros((0, 2))]).astype(np.float32),
        "scores": np.concatenate([c.scores for _, c in items] or [np.zeros(0)]).astype(np.float32),
        "labels": np.concatenate([c.labels for _, c in items] or [np.zeros(0)]).astype(np.int64),
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:  # a file object: numpy must not append ".npz" to the name
        np.savez(f, **arrays)
    os.replace(tmp, path)


def load_candidates(path: str | Path) -> dict[str, Candidates]:
    """Read a file written by :func:`save_candidates`; errors name the file and the key."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in _RAW_KEYS if key not in npz.files]
            if missing:
                raise DataError(f"{path}: missing array(s) {missing} (not a raw-candidates file)")
            data = {key: npz[key] for key in _RAW_KEYS}
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz file: {exc}") from None
    offsets, n = data["offsets"], len(data["scores"])
    if (
        len(offsets) != len(data["video_ids"]) + 1
        or offsets[0] != 0
        or offsets[-1] != n
        or np.any(np.diff(offsets) < 0)
    ):
        raise DataError(f"{path}: offsets: inconsistent with video_ids / scores")
    if data["segments"].shape != (n, 2) or data["labels"].shape != (n,):
        raise DataError(f"{path}: segments/labels: shapes do not match scores ({n},)")
    return {
        str(video_id): Candidates(data["segments"][a:b], data["scores"][a:b], data["labels"][a:b])
        for video_id, a, b in zip(data["video_ids"], offsets[:-1], offsets[1:], strict=True)
    }
