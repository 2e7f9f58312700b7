"""Ground truth and predictions for detection evaluation, as flat arrays in input order.

Both sides are columnar (one row per instance) because the evaluator works on whole arrays, and
the row order is kept exactly as read: it is the documented tie-break of the evaluation (equal
scores rank in input order; equal tIoUs walk ground truth in input order).

Sources: the ActivityNet-style annotation JSON (``load_ground_truth``, through the data reader
``localization.data.annotations``, so evaluation sees the same videos and classes as training), the submission JSON
(``load_predictions``), or arrays already in memory (``ground_truth_from_arrays``,
``predictions_from_arrays``: what the trainer has after post-processing).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from localization.data.annotations import read_annotation_file
from localization.errors import ConfigError, DataError

GtFilter = Literal["none", "actionformer"]
GT_FILTERS: tuple[str, ...] = ("none", "actionformer")
_FILTER_TOL = 1e-3  # ActionFormer's remove_duplicate_annotations tolerance (seconds)


@dataclass(frozen=True)
class GroundTruth:
    """Annotated instances of one subset.

    ``class_names`` holds only the classes with at least one instance here: they are the classes
    mAP averages over (ActivityNet / ActionFormer semantics).
    """

    subset: str
    source: str  # file (or description) the instances came from, for messages
    video_ids: list[str]  # every video of the subset, also those without instances
    class_names: list[str]  # classes present in this subset; index = label
    video: np.ndarray  # (N,) int64 index into video_ids
    segments: np.ndarray  # (N, 2) float64 [start, end] seconds
    labels: np.ndarray  # (N,) int64 index into class_names
    gt_filter: str  # "none" | "actionformer"
    num_filtered: int  # instances removed by gt_filter


@dataclass(frozen=True)
class Predictions:
    """Scored detections; rows stay in input order (the tie-break for equal scores)."""

    source: str
    video_ids: list[str]
    class_names: list[str]  # vocabulary of the labels; need not equal the ground truth's
    video: np.ndarray  # (M,) int64 index into video_ids
    segments: np.ndarray  # (M, 2) float64 [start, end] seconds
    scores: np.ndarray  # (M,) float64
    labels: np.ndarray  # (M,) int64 index into class_names


class DetectionArrays(Protocol):
    """One video's detections; ``localization.inference.postprocess.Candidates`` (in seconds) fits."""

    segments: Any  # (N, 2)
    scores: Any  # (N,)
    labels: Any  # (N,) int ids into the class list given alongside, or class-name strings


class AnnotationArrays(Protocol):
    """One video's instances; ``localization.data.annotations.VideoAnnotation`` fits."""

    segments: Any  # (N, 2)
    labels: Any  # (N,) int ids into the class list given alongside


# --------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------


def load_ground_truth(
    path: str | Path, subset: str, gt_filter: GtFilter = "none", class_list: str | None = None
) -> GroundTruth:
    """The subset's instances as released, read by the data reader (``localization.data.annotations``).

    Training and evaluation share that reader, its subset rule (case and surrounding whitespace
    ignored; the official evaluator matches exactly) and its class map (``label_id`` order, else
    ``class_list``, else sorted labels; labels stripped). A subset video without an
    "annotations" key counts as a video with no instances.
    """
    _check_filter(gt_filter)
    file = read_annotation_file(path, class_list)
    videos = {video.video_id: video for video in file.subset(subset)}
    return ground_truth_from_arrays(videos, file.class_names, subset, gt_filter, source=str(path))


def ground_truth_from_arrays(
    videos: Mapping[str, AnnotationArrays | tuple[Any, Any]],
    class_names: Sequence[str],
    subset: str = "",
    gt_filter: GtFilter = "none",
    source: str = "ground truth (in memory)",
) -> GroundTruth:
    """Ground truth from per-video arrays: video id -> (segments (N, 2) seconds, label ids (N,))."""
    _check_filter(gt_filter)
    names = list(class_names)
    video_ids = list(videos)
    seg_parts, lab_parts, vid_parts = [], [], []
    for v, (vid, item) in enumerate(videos.items()):
        seg_raw, lab_raw = item if isinstance(item, tuple) else (item.segments, item.labels)
        where = f"{source}: {vid!r}"
        segs = _segments_array(seg_raw, f"{where}.segments")
        labs = _label_ids(lab_raw, len(segs), len(names), f"{where}.labels")
        seg_parts.append(segs)
        lab_parts.append(labs)
        vid_parts.append(np.full(len(segs), v, dtype=np.int64))
    return _build_ground_truth(
        subset,
        source,
        video_ids,
        names,
        _concat(vid_parts, (), np.int64),
        _concat(seg_parts, (2,), np.float64),
        _concat(lab_parts, (), np.int64),
        gt_filter,
    )


def restrict_to_videos(gt: GroundTruth, video_ids: Collection[str]) -> GroundTruth:
    """The same ground truth on some of its videos; classes are re-derived from what remains."""
    wanted = set(video_ids)
    kept = [vid for vid in gt.video_ids if vid in wanted]
    position = {vid: i for i, vid in enumerate(kept)}
    new_video = np.array([position.get(vid, -1) for vid in gt.video_ids], dtype=np.int64)[gt.video]
    rows = new_video >= 0
    restricted = _build_ground_truth(
        gt.subset, gt.source, kept, gt.class_names, new_video[rows], gt.segments[rows], gt.labels[rows], "none"
    )
    return replace(restricted, gt_filter=gt.gt_filter)


def _build_ground_truth(
    subset: str,
    source: str,
    video_ids: list[str],
    vocabulary: list[str],
    video: np.ndarray,
    segments: np.ndarray,
    labels: np.ndarray,
    gt_filter: str,
) -> GroundTruth:
    """Apply the filter, then keep only the classes that still have instances (ActionFormer order:
    filter at load time, then take the unique labels)."""
    keep = actionformer_keep_mask(video, segments, labels) if gt_filter == "actionformer" else None
    num_filtered = 0
    if keep is not None:
        num_filtered = int((~keep).sum())
        video, segments, labels = video[keep], segments[keep], labels[keep]
    present = np.unique(labels)  # (K,) sorted vocabulary indices
    remap = np.full(len(vocabulary), -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    return GroundTruth(
        subset=subset,
        source=source,
        video_ids=video_ids,
        class_names=[vocabulary[i] for i in present],
        video=video,
        segments=segments,
        labels=remap[labels],
        gt_filter=gt_filter,
        num_filtered=num_filtered,
    )


def actionformer_keep_mask(video: np.ndarray, segments: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ActionFormer's ``remove_duplicate_annotations``, per video in input order: drop an instance
    with ``end - start < 1e-3``, or one whose start and end are both within 1e-3 of an instance
    already kept in the same video with the same label. (ActionFormer compares ``label_id``; we
    compare labels, which the loader checks are one-to-one with ids.)"""
    keep = np.zeros(len(video), dtype=bool)  # (N,)
    kept: dict[tuple[int, int], list[tuple[float, float]]] = {}
    rows = zip(video.tolist(), segments.tolist(), labels.tolist(), strict=True)
    for i, (v, (s, e), lab) in enumerate(rows):
        if e - s < _FILTER_TOL:
            continue
        same = kept.setdefault((v, lab), [])
        if any(abs(s - ks) <= _FILTER_TOL and abs(e - ke) <= _FILTER_TOL for ks, ke in same):
            continue
        same.append((s, e))
        keep[i] = True
    return keep


# --------------------------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------------------------


def load_predictions(path: str | Path) -> Predictions:
    """Read a submission ``{"results": {video_id: [{"segment": [s, e], "label": name, "score": p}]}}``.

    Labels must be class names. Every video is read (no subset filtering, as official).
    """
    src = str(path)
    data = _read_json(path)
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict):
        raise DataError(f"{src}: results: missing, or not a mapping of video id -> list of detections")
    video, segments, scores, labels = [], [], [], []
    names: dict[str, int] = {}
    for v, (vid, dets) in enumerate(results.items()):
        where = f"{src}: results[{vid!r}]"
        if not isinstance(dets, list):
            raise DataError(f"{where}: expected a list of detections")
        for i, det in enumerate(dets):
            at = f"{where}[{i}]"
            if not isinstance(det, dict):
                raise DataError(f"{at}: expected a mapping with 'segment', 'label' and 'score'")
            segments.append(_segment(det.get("segment"), f"{at}.segment"))
            labels.append(names.setdefault(_label_name(det.get("label"), f"{at}.label"), len(names)))
            scores.append(_finite_number(det.get("score"), f"{at}.score"))
            video.append(v)
    return Predictions(
        source=src,
        video_ids=list(results),
        class_names=list(names),
        video=np.asarray(video, dtype=np.int64),
        segments=np.asarray(segments, dtype=np.float64).reshape(-1, 2),
        scores=np.asarray(scores, dtype=np.float64),
        labels=np.asarray(labels, dtype=np.int64),
    )


def predictions_from_arrays(
    detections: Mapping[str, DetectionArrays | tuple[Any, Any, Any]],
    class_names: Sequence[str] = (),
    source: str = "predictions (in memory)",
) -> Predictions:
    """Predictions from per-video arrays: video id -> (segments (N, 2) seconds, scores (N,), labels (N,)).

    Labels are either integer ids into ``class_names`` or class-name strings (names not in
    ``class_names`` are added to the vocabulary). Row order = mapping order, then array order.
    """
    vocabulary = list(class_names)
    index = {n: i for i, n in enumerate(vocabulary)}
    seg_parts, score_parts, lab_parts, vid_parts = [], [], [], []
    for v, (vid, item) in enumerate(detections.items()):
        seg_raw, score_raw, lab_raw = item if isinstance(item, tuple) else (item.segments, item.scores, item.labels)
        where = f"{source}: {vid!r}"
        segs = _segments_array(seg_raw, f"{where}.segments")
        scores = np.asarray(score_raw, dtype=np.float64).reshape(-1)  # (N,)
        if len(scores) != len(segs) or not np.isfinite(scores).all():
            raise DataError(f"{where}.scores: expected {len(segs)} finite numbers")
        lab_arr = np.asarray(lab_raw)
        if lab_arr.dtype.kind in "UO":
            if lab_arr.shape != (len(segs),) or not all(isinstance(n, str) for n in lab_arr.tolist()):
                raise DataError(f"{where}.labels: expected {len(segs)} class names")
            for name in lab_arr.tolist():
                if name not in index:
                    index[name] = len(vocabulary)
                    vocabulary.append(name)
            labs = np.asarray([index[n] for n in lab_arr.tolist()], dtype=np.int64)
        else:
            labs = _label_ids(lab_arr, len(segs), len(vocabulary), f"{where}.labels")
        seg_parts.append(segs)
        score_parts.append(scores)
        lab_parts.append(labs)
        vid_parts.append(np.full(len(segs), v, dtype=np.int64))
    return Predictions(
        source=source,
        video_ids=list(detections),
        class_names=vocabulary,
        video=_concat(vid_parts, (), np.int64),
        segments=_concat(seg_parts, (2,), np.float64),
        scores=_concat(score_parts, (), np.float64),
        labels=_concat(lab_parts, (), np.int64),
    )


# --------------------------------------------------------------------------------------------
# Field checks (one line naming the file and the field)
# --------------------------------------------------------------------------------------------


def _check_filter(gt_filter: str) -> None:
    if gt_filter not in GT_FILTERS:
        raise ConfigError(f"gt_filter: {gt_filter!r} is not one of {list(GT_FILTERS)}")


def _read_json(path: str | Path) -> Any:
    try:
        with open(path, encoding="utf8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON: {exc}") from None


def _finite_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _segment(value: Any, where: str) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise DataError(f"{where}: expected [start, end], got {value!r}")
    return _finite_number(value[0], where), _finite_number(value[1], where)


def _label_name(value: Any, where: str) -> str:
    """Class names compare stripped, as the annotation reader strips them."""
    if not isinstance(value, str):
        raise DataError(f"{where}: expected a class name (string), got {value!r}")
    return value.strip()


def _concat(parts: list[np.ndarray], tail: tuple[int, ...], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros((0, *tail), dtype)


def _segments_array(raw: Any, where: str) -> np.ndarray:
    segs = np.asarray(raw, dtype=np.float64)
    if segs.size == 0:
        return np.zeros((0, 2))
    if segs.ndim != 2 or segs.shape[1] != 2 or not np.isfinite(segs).all():
        raise DataError(f"{where}: expected finite (N, 2) [start, end] values, got shape {segs.shape}")
    return segs


def _label_ids(raw: Any, n: int, num_classes: int, where: str) -> np.ndarray:
    labs = np.asarray(raw).reshape(-1)
    if len(labs) != n or (n and labs.dtype.kind not in "iu"):
        raise DataError(f"{where}: expected {n} integer label ids")
    labs = labs.astype(np.int64)
    if n and (labs.min() < 0 or labs.max() >= num_classes):
        raise DataError(f"{where}: label ids must lie in [0, {num_classes}), got {labs.min()}..{labs.max()}")
    return labs
