"""ActivityNet-style detection mAP (official ``eval_detection.py`` semantics), vectorised.

Differences from the official evaluator, all deliberate:
- ties are broken deterministically (see ``matching``); the official unstable sort is not;
- a predicted class without ground truth in the subset is ignored (official: KeyError;
  ActionFormer: silently remapped onto another class, a bug we do not reproduce);
- optional ActionFormer ground-truth filter (``gt_filter="actionformer"``, see ``inputs``).
As official: predictions for videos outside the subset are false positives; a class with ground
truth and no prediction has AP 0 and counts in the mean (the mean is over ground-truth classes).
Also reported: recall of the one-to-one matching with all predictions, and ActionFormer's
Recall@kx (top k x n predictions per class and video), both as class means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from localization.errors import ConfigError, DataError
from localization.metrics.inputs import GroundTruth, Predictions
from localization.metrics.matching import (
    candidate_pairs,
    greedy_match,
    interpolated_ap,
    rank_within_groups,
    segment_tiou,
    topkx_recalled,
)

# official default: np.linspace(0.5, 0.95, 10); note its 9th value is 0.8999999999999999, not 0.9
DEFAULT_TIOU_THRESHOLDS: tuple[float, ...] = tuple(np.linspace(0.5, 0.95, 10).tolist())
DEFAULT_TOP_K: tuple[int, ...] = (1, 5)  # ActionFormer's Recall@1x, Recall@5x


def tiou_key(threshold: float) -> str:
    """JSON / table key of a threshold: two decimals ("0.50")."""
    return f"{threshold:.2f}"


@dataclass(frozen=True)
class DetectionMetrics:
    """Per-class results; the headline numbers are class means, in percent."""

    tiou_thresholds: list[float]
    class_names: list[str]  # classes with ground truth in the subset (the mean is over these)
    ap: np.ndarray  # (K, T) average precision, fraction
    recall: np.ndarray  # (K, T) fraction of ground truth matched (one to one) by all predictions
    topk_recall: dict[int, np.ndarray]  # k -> (K, T) ActionFormer Recall@kx, fraction
    gt_filter: str
    counts: dict[str, int] = field(default_factory=dict)  # videos, ground truth, predictions ...

    @property
    def mAP(self) -> list[float]:
        """mAP per threshold, percent."""
        return (self.ap.mean(axis=0) * 100).tolist()

    @property
    def average_mAP(self) -> float:
        """Mean of mAP over thresholds, percent: the headline number."""
        return float(np.mean(self.mAP))

    def to_json(self) -> dict:
        """``{"average_mAP": x, "mAP": {"0.50": y, ...}}`` (percent) plus recall, per-class AP,
        the ground-truth filter and counts."""
        keys = [tiou_key(t) for t in self.tiou_thresholds]

        def by_tiou(values: np.ndarray) -> dict[str, float]:  # (T,) percent
            return dict(zip(keys, values.tolist(), strict=True))

        out: dict = {"average_mAP": self.average_mAP, "mAP": dict(zip(keys, self.mAP, strict=True))}
        out["recall"] = by_tiou(self.recall.mean(axis=0) * 100)
        for k, rec in self.topk_recall.items():
            out[f"recall@{k}x"] = by_tiou(rec.mean(axis=0) * 100)
        per_class = zip(self.class_names, self.ap, strict=True)
        out["per_class_AP"] = {name: by_tiou(ap * 100) for name, ap in per_class}
        out["gt_filter"] = self.gt_filter
        out["counts"] = dict(self.counts)
        return out


def evaluate_detections(
    gt: GroundTruth,
    predictions: Predictions,
    tiou_thresholds: Sequence[float] = DEFAULT_TIOU_THRESHOLDS,
    top_k: Sequence[int] = DEFAULT_TOP_K,
) -> DetectionMetrics:
    """Score predictions against ground truth at each tIoU threshold (official semantics)."""
    thresholds = _check_thresholds(tiou_thresholds)
    if not top_k or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in top_k):
        raise ConfigError(f"top_k: expected positive integers, got {list(top_k)}")
    if len(gt.labels) == 0:
        raise DataError(f"{gt.source}: subset {gt.subset!r} has no annotated instances; nothing to evaluate")
    num_classes, num_videos, num_gt = len(gt.class_names), len(gt.video_ids), len(gt.labels)

    # predictions onto the ground truth's classes and videos (index num_videos = outside the subset)
    class_index = {name: i for i, name in enumerate(gt.class_names)}
    video_index = {vid: i for i, vid in enumerate(gt.video_ids)}
    to_class = np.array([class_index.get(n, -1) for n in predictions.class_names], dtype=np.int64)
    to_video = np.array([video_index.get(v, num_videos) for v in predictions.video_ids], dtype=np.int64)
    labels = to_class[predictions.labels]  # (M,) -1 = class without ground truth: ignored
    videos = to_video[predictions.video]  # (M,)
    scored = np.flatnonzero(labels >= 0)

    # rank: class, then score descending, equal scores in input order (two stable sorts; int16
    # class keys let numpy use its radix sort)
    by_score = scored[np.argsort(-predictions.scores[scored], kind="stable")]
    class_keys = labels[by_score].astype(np.int16 if num_classes < 2**15 else np.int64)
    rank_order = by_score[np.argsort(class_keys, kind="stable")]  # (P,)
    labels, videos, segments = labels[rank_order], videos[rank_order], predictions.segments[rank_order]
    num_pred = len(rank_order)

    video_slots = num_videos + 1
    pred_key = labels * video_slots + videos  # (P,) one key per (class, video)
    num_keys = num_classes * video_slots
    pair_pred, pair_gt, gt_count = candidate_pairs(pred_key, gt.labels * video_slots + gt.video, num_keys)
    tiou = segment_tiou(segments.take(pair_pred, axis=0), gt.segments.take(pair_gt, axis=0))  # (E,)
    near = ~(tiou < thresholds.min())  # pairs that pass some threshold (NaN included: it matches)
    pair_pred, pair_gt, tiou = pair_pred[near], pair_gt[near], tiou[near]

    tp = greedy_match(pair_pred, pair_gt, tiou, thresholds, num_pred, num_gt)  # (T, P)
    positives = np.bincount(gt.labels, minlength=num_classes)  # (K,)
    class_end = np.cumsum(np.bincount(labels, minlength=num_classes))  # (K,) predictions are class-major
    ap = np.zeros((num_classes, len(thresholds)))
    for c in range(num_classes):
        start = class_end[c - 1] if c else 0
        if class_end[c] > start:  # a class with ground truth but no predictions keeps AP 0
            ap[c] = interpolated_ap(tp[:, start : class_end[c]], positives[c])

    rank_in_group = rank_within_groups(pred_key, num_keys)  # (P,)
    recalled = topkx_recalled(pair_pred, pair_gt, tiou, rank_in_group, gt_count, thresholds, top_k, num_gt)
    topk_recall = {
        k: _per_class_sum(gt.labels, recalled[:, ki], num_classes) / positives[:, None] for ki, k in enumerate(top_k)
    }
    return DetectionMetrics(
        tiou_thresholds=thresholds.tolist(),
        class_names=list(gt.class_names),
        ap=ap,
        recall=_per_class_sum(labels, tp, num_classes) / positives[:, None],
        topk_recall=topk_recall,
        gt_filter=gt.gt_filter,
        counts={
            "videos": num_videos,
            "classes": num_classes,
            "ground_truth": num_gt,
            "ground_truth_filtered_out": gt.num_filtered,
            "predictions": num_pred,
            "predictions_class_without_gt": len(predictions.labels) - num_pred,
            "predictions_outside_subset": int((videos == num_videos).sum()),
        },
    )


def format_table(metrics: DetectionMetrics) -> str:
    """The results as TAL papers print them: one column per tIoU plus the average, in percent."""
    keys = [tiou_key(t) for t in metrics.tiou_thresholds]
    rows = [("tIoU", [*keys, "avg"])]

    def row(name: str, per_class: np.ndarray) -> tuple[str, list[str]]:  # (K, T) fraction
        values = per_class.mean(axis=0) * 100
        return name, [f"{v:.2f}" for v in [*values.tolist(), float(values.mean())]]

    rows.append(row("mAP", metrics.ap))
    rows.append(row("recall", metrics.recall))
    rows.extend(row(f"R@{k}x", rec) for k, rec in metrics.topk_recall.items())
    width = max(6, *(len(c) for _, cells in rows for c in cells))
    head = max(len(name) for name, _ in rows)
    lines = [f"{name:<{head}} " + " ".join(f"{c:>{width}}" for c in cells) for name, cells in rows]
    counts = metrics.counts
    lines.append(
        f"{counts['classes']} classes, {counts['videos']} videos, {counts['ground_truth']} ground truth "
        f"(gt_filter {metrics.gt_filter}: {counts['ground_truth_filtered_out']} removed), "
        f"{counts['predictions']} predictions scored"
    )
    ignored, outside = counts["predictions_class_without_gt"], counts["predictions_outside_subset"]
    if ignored or outside:
        lines.append(
            f"note: {ignored} predictions ignored (class without ground truth), "
            f"{outside} scored as false positives (video outside the subset)"
        )
    return "\n".join(lines)


def _per_class_sum(labels: np.ndarray, flags: np.ndarray, num_classes: int) -> np.ndarray:
    """Count flags (T, N) bool per class of labels (N,): (K, T)."""
    return np.stack([np.bincount(labels, weights=row, minlength=num_classes) for row in flags], axis=1)


def _check_thresholds(tiou_thresholds: Sequence[float]) -> np.ndarray:
    thresholds = np.asarray(tiou_thresholds, dtype=np.float64).reshape(-1)  # (T,)
    if thresholds.size == 0 or not np.all((thresholds >= 0) & (thresholds <= 1)):
        raise ConfigError(f"tiou_thresholds: expected values in [0, 1], got {list(tiou_thresholds)}")
    keys = [tiou_key(t) for t in thresholds]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"tiou_thresholds: {list(tiou_thresholds)} repeat at two decimals")
    return thresholds


def metric_key(tiou: float) -> str:
    """``mAP_0.50``: per-tIoU metric names (MLflow-safe), keyed like ``metrics.json``."""
    return f"mAP_{tiou_key(tiou)}"


def metrics_as_floats(metrics: DetectionMetrics) -> dict[str, float]:
    """``{"average_mAP": ..., "mAP_0.50": ..., ...}`` (percent): the flat form epochs report and MLflow logs."""
    out = {"average_mAP": float(metrics.average_mAP)}
    for tiou, value in zip(metrics.tiou_thresholds, metrics.mAP, strict=True):
        out[metric_key(tiou)] = float(value)
    return out
