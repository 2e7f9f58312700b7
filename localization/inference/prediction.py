"""Whole-video inference: model outputs -> candidates -> detections in seconds -> submission JSON.

Videos are batched by similar length and padded only to the coarsest pyramid stride: the model's
outputs at valid positions do not depend on padding, so this gives the reference's batch-size-1
results at a fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from localization.config.schema import RunConfig, TestConfig, inference_div_factor
from localization.data.classifier import label_segments, load_classifier_scores
from localization.data.dataset import InferenceDataset, collate
from localization.device import autocast
from localization.errors import DataError
from localization.inference.postprocess import Candidates, select_candidates
from localization.inference.subset_postprocess import CandidateSet, VideoTiming
from localization.model import ActionFormer, make_points


def _length_batches(dataset: InferenceDataset, max_steps: int) -> Iterator[list[int]]:
    """Indices grouped by similar length, each group at most ``max_steps`` padded steps."""
    order = sorted(range(len(dataset)), key=dataset.lengths.__getitem__)
    batch: list[int] = []
    for index in order:
        longest = dataset.lengths[index]  # ascending order: the newest is the longest
        if batch and longest * (len(batch) + 1) > max_steps:
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


@torch.no_grad()
def predict(
    model: ActionFormer,
    dataset: InferenceDataset,
    cfg: RunConfig,
    device: torch.device,
    max_batch_steps: int = 32768,
) -> dict[str, Candidates]:
    """Raw (pre-NMS) candidates in grid units for every video of ``dataset``."""
    model.eval()
    pad_multiple = inference_div_factor(cfg.model)
    raw: dict[str, Candidates] = {}
    for indices in _length_batches(dataset, max_batch_steps):
        batch = collate([dataset[i] for i in indices], pad_multiple)
        feats = batch["feats"].to(device, non_blocking=True).float()  # (B, C, T); float16 store features cross as such
        masks = batch["masks"].to(device, non_blocking=True)  # (B, 1, T)
        with autocast(device, cfg.train.bf16):
            out = model(feats, masks)
        points = make_points([m.shape[1] for m in out.masks], model.strides, cfg.model.regression_range, device)
        for b, video_id in enumerate(batch["video_ids"]):
            raw[video_id] = select_candidates(
                [logits[b].float() for logits in out.cls_logits],
                [offsets[b].float() for offsets in out.offsets],
                [mask[b] for mask in out.masks],
                points,
                cfg.test,
            )
    return raw


def candidate_set(raw: dict[str, Candidates], dataset: InferenceDataset) -> CandidateSet:
    """The raw candidates of ``dataset``'s videos, in its order, each with its own time grid, ready
    for whole-subset post-processing. ``raw`` may come from :func:`predict` or from a saved file;
    it must cover ``dataset``'s videos."""

    missing = [video.video_id for video in dataset.videos if video.video_id not in raw]
    if missing:
        raise DataError(
            f"raw candidates lack {len(missing)} video(s) of subset {dataset.annotations.subset!r}, e.g. {missing[0]!r}"
        )
    timing = []
    for index, video in enumerate(dataset.videos):
        grid = dataset.grid(index)
        timing.append(VideoTiming(video.video_id, video.fps, video.duration, grid.stride, grid.clip))
    return CandidateSet.from_raw(raw, timing)


def detect(
    raw: dict[str, Candidates], dataset: InferenceDataset, cfg: RunConfig, class_names: list[str] | None = None
) -> dict[str, Candidates]:
    """Post-process every video's candidates into detections in seconds (NMS, top-k), all videos
    at once (``subset_postprocess``; the same as ``postprocess`` video by video).

    With ``test.ext_score_file`` (a class-agnostic model) each kept segment then becomes the
    video's top ``test.ext_topk`` classes of that file (:func:`label_from_classifier`), as ids into
    ``class_names`` (the model's; default the dataset's).
    """
    detections = candidate_set(raw, dataset).detect(cfg.test).per_video()
    if cfg.test.ext_score_file is None:
        return detections
    return label_from_classifier(detections, cfg.test, class_names or dataset.class_names)


def label_from_classifier(
    detections: dict[str, Candidates], test_cfg: TestConfig, class_names: list[str]
) -> dict[str, Candidates]:
    """Each class-agnostic detection -> the video's top ``test.ext_topk`` classes of
    ``test.ext_score_file`` (``localization.data.classifier``), as ids into ``class_names``."""
    classifier = load_classifier_scores(test_cfg.ext_score_file, class_names)
    return {
        video_id: Candidates(*label_segments(det.segments, det.scores, classifier.top(video_id, test_cfg.ext_topk)))
        for video_id, det in detections.items()
    }


def to_submission(detections: dict[str, Candidates], class_names: list[str]) -> dict[str, Any]:
    """ActivityNet submission format: ``{"results": {video_id: [{segment, label, score}]}}``.

    Values are written at full precision, so scoring the file reproduces in-memory metrics.
    """
    results = {}
    for video_id, det in detections.items():  # tolist(): Python floats and ints, the values of float()
        segments, scores, labels = det.segments.tolist(), det.scores.tolist(), det.labels.tolist()
        results[video_id] = [
            {"segment": segment, "label": class_names[label], "score": score}
            for segment, score, label in zip(segments, scores, labels, strict=True)
        ]
    return {
        "version": "actionformer-search",
        "results": results,
        "external_data": {"used": False, "details": "pre-extracted features only"},
    }
