"""Scoring a model on one subset: whole-video prediction, post-processing, mAP against the ground truth.

The trainer scores its EMA weights every ``train.eval_every`` epochs with a :class:`SubsetEvaluator`;
``evaluate_checkpoint`` scores a saved checkpoint, ``rescore`` saved raw candidates (other
post-processing settings, no model run). A :class:`SubsetScorer` holds one model run's raw
candidates with the ground truth and scores any post-processing settings on them (what a
post-processing search needs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from localization.config.schema import RESCORABLE_TEST_KEYS, RunConfig, TestConfig
from localization.data.annotations import SubsetAnnotations, load_subset, restrict_videos, same_subset
from localization.data.dataset import InferenceDataset
from localization.data.features import FeatureReader
from localization.device import resolve_device
from localization.inference.postprocess import Candidates, load_candidates, save_candidates
from localization.inference.prediction import (
    candidate_set,
    label_from_classifier,
    predict,
    to_submission,
)
from localization.inference.subset_postprocess import CandidateSet
from localization.metrics import (
    DetectionMetrics,
    GroundTruth,
    Predictions,
    evaluate_detections,
    load_ground_truth,
    predictions_from_arrays,
    restrict_to_videos,
)
from localization.model import ActionFormer
from localization.model.weights import load_checkpoint, model_from_checkpoint


@dataclass
class EvalResult:
    metrics: DetectionMetrics | None  # None when the subset has no labelled instances
    predictions: dict[str, Any]  # submission format


def subset_evaluator(
    cfg: RunConfig, subset: str, reader: FeatureReader, class_names: list[str] | None = None
) -> SubsetEvaluator:
    """An evaluator for ``subset``; the validation subset is cut to ``data.val_videos`` when given.

    ``class_names``: the model's classes (a checkpoint's), default the data's class map; detections
    are named with them and matched to the ground truth by name, so a class map in another order
    (the same file with or without ``label_id``) scores the same.
    """
    annotations = load_subset(cfg.data, subset)
    restricted = same_subset(subset, cfg.data.val_subset) and cfg.data.val_videos is not None
    if restricted:
        annotations = restrict_videos(annotations, cfg.data.val_videos, "data.val_videos")
    return SubsetEvaluator(cfg, reader, annotations, restricted, class_names)


class SubsetEvaluator:
    """Scores a model on one subset: the dataset and ground truth are built once."""

    def __init__(
        self,
        cfg: RunConfig,
        reader: FeatureReader,
        annotations: SubsetAnnotations,
        restricted: bool = False,
        class_names: list[str] | None = None,
    ):
        """``restricted``: ``annotations`` holds only some videos of its subset (data.val_videos);
        the ground truth is cut to the same videos."""
        self.cfg = cfg
        self.class_names = class_names if class_names is not None else annotations.class_names
        self.dataset = InferenceDataset(cfg.data, annotations, reader)
        ground_truth = load_ground_truth(
            cfg.data.annotations, annotations.subset, cfg.test.gt_filter, cfg.data.class_list
        )
        if restricted:
            ground_truth = restrict_to_videos(ground_truth, [v.video_id for v in annotations.videos])
        self.ground_truth = ground_truth

    def scorer(self, raw: dict[str, Candidates]) -> SubsetScorer:
        """Raw candidates of this subset's videos, ready to score with any post-processing."""
        return SubsetScorer(candidate_set(raw, self.dataset), self.ground_truth, self.class_names, self.cfg.test)

    def run(self, model: ActionFormer, device: torch.device, raw_out: Path | None = None) -> SubsetScorer:
        """Run the model once over the subset (``raw_out``: also save the raw candidates)."""
        raw = predict(model, self.dataset, self.cfg, device)
        if raw_out is not None:
            save_candidates(raw_out, raw)
        return self.scorer(raw)


class SubsetScorer:
    """One subset's raw (pre-NMS) candidates and ground truth: scores post-processing settings
    without running the model again.

    Only the settings of ``RESCORABLE_TEST_KEYS`` may differ from the config the candidates were
    made with: the others (``pre_nms_topk``, ...) shaped the candidates or the scoring.
    """

    def __init__(
        self, candidates: CandidateSet, ground_truth: GroundTruth, class_names: list[str], test_cfg: TestConfig
    ) -> None:
        self.candidates = candidates
        self.ground_truth = ground_truth
        self.class_names = class_names
        self.test_cfg = test_cfg  # what made the candidates

    @property
    def video_ids(self) -> list[str]:
        """The videos scored (the validation videos, or the held-out slice that selects trials)."""
        return self.candidates.video_ids

    def metrics(self, test_cfg: TestConfig) -> DetectionMetrics | None:
        """mAP of the detections ``test_cfg`` gives (None when the subset has no labels)."""
        return self._score(test_cfg)[1]

    def result(self, test_cfg: TestConfig) -> EvalResult:
        """Metrics and the submission file of the detections ``test_cfg`` gives."""
        detections, metrics = self._score(test_cfg)
        return EvalResult(metrics, to_submission(detections, self.class_names))

    def _score(self, test_cfg: TestConfig) -> tuple[dict[str, Candidates], DetectionMetrics | None]:
        """Every video's detections (ids into ``class_names``) and their mAP."""
        fixed = [
            key
            for key in vars(test_cfg)
            if f"test.{key}" not in RESCORABLE_TEST_KEYS and getattr(test_cfg, key) != getattr(self.test_cfg, key)
        ]
        if fixed:
            raise ValueError(f"test.{fixed[0]}: cannot change when re-scoring raw candidates (made with another value)")
        detections = self.candidates.detect(test_cfg)
        if test_cfg.ext_score_file is not None:  # class-agnostic segments take the classifier's labels
            labelled = label_from_classifier(detections.per_video(), test_cfg, self.class_names)
            if len(self.ground_truth.segments) == 0:
                return labelled, None
            predictions = predictions_from_arrays(labelled, self.class_names)
            return labelled, evaluate_detections(self.ground_truth, predictions, test_cfg.tiou_thresholds)
        if len(self.ground_truth.segments) == 0:
            return detections.per_video(), None
        predictions = Predictions(
            source="predictions (in memory)",
            video_ids=detections.video_ids,
            class_names=list(self.class_names),
            video=detections.video,
            segments=detections.segments,
            scores=detections.scores.astype(np.float64),
            labels=detections.labels,
        )
        return detections.per_video(), evaluate_detections(self.ground_truth, predictions, test_cfg.tiou_thresholds)


def evaluate_checkpoint(
    cfg: RunConfig,
    checkpoint: Path,
    subset: str,
    raw_out: Path | None = None,
    use_ema: bool = True,
) -> EvalResult:
    """Score a checkpoint on ``subset`` with ``cfg``'s data and post-processing settings."""
    ckpt = load_checkpoint(checkpoint)
    model, cfg, class_names = model_from_checkpoint(ckpt, use_ema=use_ema, cfg=cfg)
    device = resolve_device(cfg.train.device)
    evaluator = subset_evaluator(cfg, subset, FeatureReader(cfg.data), class_names)
    return evaluator.run(model.to(device), device, raw_out).result(cfg.test)


def rescore(cfg: RunConfig, raw_path: Path, subset: str) -> EvalResult:
    """Re-score saved raw candidates (``evaluate_checkpoint(..., raw_out=...)``) with ``cfg``'s post-processing:
    post-processing settings are compared without running the model again."""
    evaluator = subset_evaluator(cfg, subset, FeatureReader(cfg.data))
    return evaluator.scorer(load_candidates(raw_path)).result(cfg.test)
