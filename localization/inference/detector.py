"""A trained model ready to detect actions in named videos: what a served (promoted) model runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

from localization.config.schema import RunConfig
from localization.data.annotations import load_subset
from localization.data.dataset import InferenceDataset
from localization.data.features import FeatureReader
from localization.device import resolve_device
from localization.errors import DataError
from localization.inference.prediction import detect, predict
from localization.model.weights import load_checkpoint, model_from_checkpoint


class Segment(NamedTuple):
    """One detected action segment."""

    video_id: str
    t_start: float  # seconds
    t_end: float  # seconds
    label: str
    score: float


class Detector:
    """EMA weights of a checkpoint (as evaluated) on ``cfg.train.device``, with ``cfg``'s data and
    post-processing settings; ``cfg.model`` must match the weights."""

    def __init__(self, weights: Path, cfg: RunConfig) -> None:
        ckpt = load_checkpoint(weights)  # weights_only=True
        self.model, self.cfg, self.class_names = model_from_checkpoint(ckpt, use_ema=True, cfg=cfg)
        self.device = resolve_device(self.cfg.train.device)
        self.model.to(self.device)

    def detect(self, video_ids: list[str], subset: str) -> list[Segment]:
        """Detections in ``video_ids`` of ``subset`` (whole videos), in video order."""
        annotations = load_subset(self.cfg.data, subset)
        by_id = {video.video_id: video for video in annotations.videos}
        unknown = [vid for vid in video_ids if vid not in by_id]
        if unknown:
            raise DataError(f"{self.cfg.data.annotations}: subset {subset!r} has no video {unknown[0]!r}")
        chosen = dataclasses.replace(annotations, videos=[by_id[vid] for vid in video_ids])
        dataset = InferenceDataset(self.cfg.data, chosen, FeatureReader(self.cfg.data))
        raw = predict(self.model, dataset, self.cfg, self.device)
        return [
            Segment(vid, float(s), float(e), self.class_names[int(label)], float(score))
            for vid, det in detect(raw, dataset, self.cfg, self.class_names).items()
            for (s, e), score, label in zip(det.segments, det.scores, det.labels, strict=True)
        ]
