"""Array kernels of ActivityNet detection evaluation: tIoU pairs, greedy matching, interpolated AP.

Everything works on (prediction, ground truth) *pairs* that share a video and a class: the only
pairs that can ever match. Predictions are identified by their rank (0 = first in the evaluation
order), ground truth by its row in ``GroundTruth``.

Tie rules (the official code sorts with numpy's default, unstable ``argsort``, so its tie order
is unspecified; ours is fixed):
- predictions: score descending, equal scores in input order (rank is computed by the caller);
- ground truth walked by one prediction: tIoU descending, equal tIoUs in ground-truth input order.
A NaN tIoU (0 / 0: both segments empty, or a reversed ground truth exactly cancelling a
prediction) ranks first and passes every threshold, as in the official code (``NaN < thr`` is
False and NaN sorts last in ascending order).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def candidate_pairs(
    pred_key: np.ndarray, gt_key: np.ndarray, num_keys: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (prediction, ground truth) pairs with equal keys (key = class and video, < num_keys).

    pred_key: (P,) int64, predictions in rank order; gt_key: (G,) int64.
    Returns pair_pred (E,) ascending, pair_gt (E,) in ground-truth input order within each
    prediction, and gt_count (P,): the number of ground truths sharing each prediction's key.
    """
    gt_order = np.argsort(gt_key, kind="stable")  # (G,) groups by key, input order inside
    count_by_key = np.bincount(gt_key, minlength=num_keys)  # dense table: keys are small ints
    lo = (np.cumsum(count_by_key) - count_by_key)[pred_key]  # (P,) first ground truth of the key
    gt_count = count_by_key[pred_key]  # (P,)
    pair_pred = np.repeat(np.arange(len(pred_key)), gt_count)  # (E,)
    starts = np.cumsum(gt_count) - gt_count  # (P,) first pair of each prediction
    within = np.arange(len(pair_pred)) - np.repeat(starts, gt_count)  # (E,) 0..count-1
    pair_gt = gt_order[np.repeat(lo, gt_count) + within]
    return pair_pred, pair_gt, gt_count


def segment_tiou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Row-wise tIoU of pred (E, 2) and gt (E, 2), with the official operation order (so that
    results equal the official ones bit for bit): inter / ((len_gt + len_pred) - inter)."""
    inter = (np.minimum(pred[:, 1], gt[:, 1]) - np.maximum(pred[:, 0], gt[:, 0])).clip(0)  # (E,)
    union = (gt[:, 1] - gt[:, 0]) + (pred[:, 1] - pred[:, 0]) - inter  # (E,)
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def greedy_match(
    pair_pred: np.ndarray,
    pair_gt: np.ndarray,
    tiou: np.ndarray,
    thresholds: np.ndarray,
    num_pred: int,
    num_gt: int,
) -> np.ndarray:
    """True positives of the official greedy matching, for all thresholds at once: (T, num_pred) bool.

    Official rule, per threshold: in rank order, a prediction takes the unlocked ground truth of
    highest tIoU if that tIoU >= threshold (locks are per threshold). Equivalent parallel form,
    run in rounds on the pairs still open (prediction undecided, ground truth unlocked): a
    prediction's proposal is its best open pair; the proposal is granted when no earlier
    prediction holds an open pair on that ground truth (so no earlier prediction can still take
    it, and every better ground truth of this prediction was locked by earlier ones). The first
    open pair always qualifies, so each round decides at least one prediction; predictions left
    without open pairs are false positives. Rounds ~ the longest chain of contention, not P.
    """
    key = np.where(np.isnan(tiou), np.inf, tiou)  # (E,) NaN matches first and at every threshold
    valid = key >= thresholds.min()
    pred, gt, key = pair_pred[valid], pair_gt[valid], key[valid]
    pref = np.lexsort((-key, pred))  # stable: by prediction, best tIoU first, ties in GT input order
    pred, gt, key = pred[pref], gt[pref], key[pref]

    # one copy of each pair per threshold it passes, threshold-major: keys stay in rank order
    t_idx, e_idx = np.nonzero(key[None, :] >= thresholds[:, None])  # (T, E') -> C order
    pk = t_idx * num_pred + pred[e_idx]  # (E'',) prediction id per threshold, ascending
    gk = t_idx * num_gt + gt[e_idx]  # (E'',) ground-truth id per threshold
    tp = np.zeros(len(thresholds) * num_pred, dtype=bool)
    locked = np.zeros(len(thresholds) * num_gt, dtype=bool)
    while pk.size:
        pos = np.arange(pk.size)
        proposal = np.ones(pk.size, dtype=bool)
        proposal[1:] = pk[1:] != pk[:-1]  # first open pair of each prediction
        first_on_gt = np.full(locked.size, pk.size)
        np.minimum.at(first_on_gt, gk, pos)  # earliest open pair on each ground truth
        granted = proposal & (first_on_gt[gk] == pos)
        tp[pk[granted]] = True
        locked[gk[granted]] = True
        still_open = ~(tp[pk] | locked[gk])
        pk, gk = pk[still_open], gk[still_open]
    return tp.reshape(len(thresholds), num_pred)


def interpolated_ap(tp: np.ndarray, num_positive: int) -> np.ndarray:
    """VOC-2011 interpolated AP (official ``interpolated_prec_rec``) per threshold row.

    tp: (T, n) bool, one class's predictions in rank order. Pads precision [0, p, 0] and recall
    [0, r, 1], takes the suffix maximum of precision, sums Δrecall x precision where recall changes.
    """
    rows, n = tp.shape
    tp_cum = np.cumsum(tp, axis=1, dtype=np.float64)  # (T, n)
    precision = tp_cum / np.arange(1, n + 1, dtype=np.float64)  # tp / (tp + fp), exact integers
    recall = tp_cum / float(num_positive)
    zeros, ones = np.zeros((rows, 1)), np.ones((rows, 1))
    mprec = np.concatenate([zeros, precision, zeros], axis=1)  # (T, n + 2)
    mrec = np.concatenate([zeros, recall, ones], axis=1)  # (T, n + 2)
    envelope = np.maximum.accumulate(mprec[:, ::-1], axis=1)[:, ::-1]
    step = mrec[:, 1:] - mrec[:, :-1]  # (T, n + 1)
    return np.where(step != 0, step * envelope[:, 1:], 0.0).sum(axis=1)


def rank_within_groups(keys: np.ndarray, num_keys: int) -> np.ndarray:
    """Rank of each element among those with the same key, keeping array order: (N,) int64."""
    order = np.argsort(keys, kind="stable")  # (N,) grouped by key, array order inside
    size_by_key = np.bincount(keys, minlength=num_keys)
    group_start = (np.cumsum(size_by_key) - size_by_key)[keys[order]]  # (N,)
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.arange(len(keys)) - group_start
    return rank


def topkx_recalled(
    pair_pred: np.ndarray,
    pair_gt: np.ndarray,
    tiou: np.ndarray,
    rank_in_group: np.ndarray,
    gt_count: np.ndarray,
    thresholds: np.ndarray,
    top_k: Sequence[int],
    num_gt: int,
) -> np.ndarray:
    """ActionFormer's Recall@kx hits: (T, len(top_k), num_gt) bool.

    A ground truth is recalled at (t, k) when one of the top k x n predictions of its class in its
    video (n = its class's ground-truth count there) has tIoU >= t. No one-to-one matching, and a
    NaN tIoU never counts (``NaN >= t`` is False), as in ActionFormer.
    rank_in_group (P,): rank of each prediction among its (class, video) group.
    """
    recalled = np.zeros((len(thresholds), len(top_k), num_gt), dtype=bool)
    near = tiou >= thresholds.min()  # (E,) False for NaN
    pred, gt, tiou = pair_pred[near], pair_gt[near], tiou[near]
    for ki, k in enumerate(top_k):
        in_top = rank_in_group[pred] < k * gt_count[pred]  # (E',)
        for ti, thr in enumerate(thresholds):
            recalled[ti, ki, gt[in_top & (tiou >= thr)]] = True
    return recalled
