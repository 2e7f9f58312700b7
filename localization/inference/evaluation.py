"""Scoring a model on one subset: whole-video prediction, post-processing, mAP against the ground truth.

The trainer scores its EMA weights every ``train.eval_every`` epochs with a :class:`SubsetEvaluator`;
``evaluate_checkpoint`` scores a saved checkpoint, ``rescore`` saved raw candidates (other
post-processing settings, no model run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from localization.config import RunConfig
from localization.data.annotations import SubsetAnnotations, load_subset, restrict_videos
from localization.data.dataset import InferenceDataset
from localization.data.features import FeatureReader
from localization.inference.postprocess import Candidates, load_candidates, save_candidates
from localization.inference.prediction import detect, predict, resolve_device, to_submission
from localization.metrics import (
    DetectionMetrics,
    evaluate_detections,
    load_ground_truth,
    predictions_from_arrays,
    restrict_to_videos,
)
from localization.model import ActionFormer
from localization.training.checkpoints import load_checkpoint, model_from_checkpoint


@dataclass
class EvalResult:
    metrics: DetectionMetrics | None  # None when the subset has no labelled instances
    predictions: dict[str, Any]  # submission format


def subset_evaluator(cfg: RunConfig, subset: str, reader: FeatureReader) -> SubsetEvaluator:
    """An evaluator for ``subset``; the validation subset is cut to ``data.val_videos`` when given."""
    annotations = load_subset(cfg.data, subset)
    restricted = subset == cfg.data.val_subset and cfg.data.val_videos is not None
    if restricted:
        annotations = restrict_videos(annotations, cfg.data.val_videos, "data.val_videos")
    return SubsetEvaluator(cfg, reader, annotations, restricted)


class SubsetEvaluator:
    """Scores a model on one subset: the dataset and ground truth are built once."""

    def __init__(self, cfg: RunConfig, reader: FeatureReader, annotations: SubsetAnnotations, restricted: bool = False):
        """``restricted``: ``annotations`` holds only some videos of its subset (data.val_videos);
        the ground truth is cut to the same videos."""
        self.cfg = cfg
        self.class_names = annotations.class_names
        self.dataset = InferenceDataset(cfg.data, annotations, reader)
        ground_truth = load_ground_truth(cfg.data.annotations, annotations.subset, cfg.test.gt_filter)
        if restricted:
            ground_truth = restrict_to_videos(ground_truth, [v.video_id for v in annotations.videos])
        self.ground_truth = ground_truth
        self.has_labels = len(self.ground_truth.segments) > 0

    def __call__(self, model: ActionFormer, device: torch.device, raw_out: Path | None = None) -> EvalResult:
        raw = predict(model, self.dataset, self.cfg, device)
        if raw_out is not None:
            save_candidates(raw_out, raw)
        return self.score(raw)

    def score(self, raw: dict[str, Candidates]) -> EvalResult:
        """Post-process raw candidates with ``cfg.test`` and score them."""
        detections = detect(raw, self.dataset, self.cfg)
        metrics = None
        if self.has_labels:
            predictions = predictions_from_arrays(detections, self.class_names)
            metrics = evaluate_detections(self.ground_truth, predictions, self.cfg.test.tiou_thresholds)
        return EvalResult(metrics, to_submission(detections, self.class_names))


def evaluate_checkpoint(
    cfg: RunConfig,
    checkpoint: Path,
    subset: str,
    raw_out: Path | None = None,
    use_ema: bool = True,
) -> EvalResult:
    """Score a checkpoint on ``subset`` with ``cfg``'s data and post-processing settings."""
    ckpt = load_checkpoint(checkpoint)
    model, cfg, _ = model_from_checkpoint(ckpt, use_ema=use_ema, cfg=cfg)
    device = resolve_device(cfg.train.device)
    return subset_evaluator(cfg, subset, FeatureReader(cfg.data))(model.to(device), device, raw_out)


def rescore(cfg: RunConfig, raw_path: Path, subset: str) -> EvalResult:
    """Re-score saved raw candidates (``evaluate_checkpoint(..., raw_out=...)``) with ``cfg``'s post-processing:
    post-processing settings are compared without running the model again."""
    return subset_evaluator(cfg, subset, FeatureReader(cfg.data)).score(load_candidates(raw_path))
