"""Annotation JSON (ActivityNet / FineAction "database" layout) -> clean per-video ground truth.

Layout (``../shared/spec/fineaction.md`` 1.3)::

    {"database": {video_id: {"subset": str, "duration": sec, ["fps": float],
                             "annotations": [{"segment": [s, e], "label": str, "label_id": int}]}}}

FineAction ships dirty ground truth (fineaction.md 1.4), so three rules drop segments and count
them per reason; nothing else is changed (overshoots within ``data.boundary_tolerance`` are kept
as they are, not clamped). Every malformed field is a :class:`DataError` naming the file and the
JSON path of the field.

Deviations from the reference loaders (actionformer.md 4.1), following the project's recipe:
they drop events shorter than 1e-3 s and duplicates within 1e-3 s and keep end > duration; here
end <= start and segments outside the video are dropped, and duplicates must match within 1e-6 s.
The reference also prefers ``default_fps`` over a video's own ``fps``; here the video's own fps
wins (FineAction's frame rates vary) and ``data.default_fps`` is the fallback.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from localization.config import DataConfig
from localization.errors import DataError

# Why a segment was dropped, in the order the rules are checked (a segment counts once).
DIRTY_REASONS = ("end_not_after_start", "outside_video", "duplicate")
DUPLICATE_TOLERANCE = 1e-6  # seconds: "same segment" for the duplicate rule


@dataclass
class VideoAnnotation:
    """One video of a subset, with its clean ground truth."""

    video_id: str
    subset: str
    duration: float
    fps: float  # the video's "fps" key, else data.default_fps
    segments: np.ndarray  # (N, 2) float64 seconds
    labels: np.ndarray  # (N,) int64 label ids 0..C-1


@dataclass
class SubsetAnnotations:
    """All videos of one subset, the class names and what the dirty rules dropped."""

    subset: str
    videos: list[VideoAnnotation]
    class_names: list[str]  # index = label id
    dropped: dict[str, int]  # reason (DIRTY_REASONS) -> count


def load_subset(data_cfg: DataConfig, subset: str) -> SubsetAnnotations:
    """Videos whose ``subset`` equals ``subset`` (case-insensitive), dirty segments dropped."""
    path = Path(data_cfg.annotations)
    database = read_database(path)
    class_names = (
        read_class_list(Path(data_cfg.class_list))
        if data_cfg.class_list is not None
        else class_names_from_database(database, path)
    )
    label_ids = {name: i for i, name in enumerate(class_names)}
    videos: list[VideoAnnotation] = []
    dropped = dict.fromkeys(DIRTY_REASONS, 0)
    for video_id, entry in database.items():
        where = f"{path}: database.{video_id}"
        if _subset_of(entry, where).lower() != subset.lower():
            continue
        video = _read_video(video_id, entry, where, label_ids, data_cfg.default_fps)
        reasons = dirty_reasons(video.segments, video.labels, video.duration, data_cfg.boundary_tolerance)
        for reason in reasons:
            if reason is not None:
                dropped[reason] += 1
        keep = np.array([reason is None for reason in reasons], dtype=bool)
        video.segments, video.labels = video.segments[keep], video.labels[keep]
        videos.append(video)
    if not videos:
        present = sorted({str(e.get("subset")) for e in database.values() if isinstance(e, dict)})
        raise DataError(f"{path}: no video has subset {subset!r} (subsets in the file: {present})")
    return SubsetAnnotations(subset=subset, videos=videos, class_names=class_names, dropped=dropped)


def restrict_videos(annotations: SubsetAnnotations, ids_file: str, key: str) -> SubsetAnnotations:
    """Keep only the videos listed in ``ids_file`` (one id per line); ``key`` names the config key.

    Every listed id must belong to the subset, so a stale list fails loudly instead of silently
    scoring fewer videos.
    """
    path = Path(ids_file)
    try:
        wanted = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise DataError(f"{path}: cannot read the video list given by {key} ({exc.strerror})") from None
    present = {video.video_id for video in annotations.videos}
    unknown = [vid for vid in wanted if vid not in present]
    if unknown:
        raise DataError(
            f"{path}: {key}: {len(unknown)} video id(s) not in subset {annotations.subset!r}, e.g. {unknown[0]!r}"
        )
    keep = set(wanted)
    return replace(annotations, videos=[v for v in annotations.videos if v.video_id in keep])


def load_class_names(data_cfg: DataConfig) -> list[str]:
    """Class names indexed by label id: from ``data.class_list`` when set, else from the JSON."""
    if data_cfg.class_list is not None:
        return read_class_list(Path(data_cfg.class_list))
    path = Path(data_cfg.annotations)
    return class_names_from_database(read_database(path), path)


def read_database(path: Path) -> dict[str, Any]:
    """The ``database`` mapping of an annotation file."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (data.annotations)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read (data.annotations): {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text (data.annotations)") from None
    if not isinstance(raw, dict) or "database" not in raw:
        raise DataError(f"{path}: database: missing (expected a top-level 'database' mapping)")
    if not isinstance(raw["database"], dict):
        raise DataError(f"{path}: database: expected a mapping of video id -> entry")
    return raw["database"]


def read_class_list(path: Path) -> list[str]:
    """One class name per line; the line index is the label id (trailing blank lines allowed)."""
    try:
        lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (data.class_list)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read (data.class_list): {exc}") from None
    names = [line.strip() for line in lines]
    for number, name in enumerate(names, start=1):
        if not name:
            raise DataError(f"{path}: line {number}: empty class name (data.class_list)")
        if names.index(name) != number - 1:
            raise DataError(f"{path}: line {number}: class {name!r} repeats line {names.index(name) + 1}")
    return names


def class_names_from_database(database: dict[str, Any], path: Path) -> list[str]:
    """Class names from the ``label`` -> ``label_id`` pairs of every video in the file.

    The pairs must form a one-to-one map onto 0..C-1 (C = number of distinct labels), as the
    reference's ``label_dict`` silently assumes.
    """
    id_of: dict[str, int] = {}
    label_of: dict[int, tuple[str, str]] = {}  # label id -> (label, JSON path where first seen)
    for video_id, entry in database.items():
        for i, ann in enumerate(_annotation_list(entry, f"{path}: database.{video_id}")):
            loc = f"database.{video_id}.annotations[{i}]"
            at = f"{path}: {loc}"
            label = _label(ann, at)
            if "label_id" not in ann:
                raise DataError(f"{at}.label_id: missing (or set data.class_list)")
            label_id = ann["label_id"]
            if isinstance(label_id, bool) or not isinstance(label_id, int):
                raise DataError(f"{at}.label_id: expected an integer, got {label_id!r}")
            if id_of.setdefault(label, label_id) != label_id:
                raise DataError(f"{at}.label_id: label {label!r} has id {label_id} here but {id_of[label]} elsewhere")
            first_label, first_loc = label_of.setdefault(label_id, (label, loc))
            if first_label != label:
                raise DataError(
                    f"{at}.label_id: id {label_id} is used for {label!r} here and for {first_label!r} at {first_loc}"
                )
    if not id_of:
        raise DataError(f"{path}: database: no annotation has a label, so there is no class map (set data.class_list)")
    num_classes = len(id_of)
    for label_id, (_, loc) in sorted(label_of.items()):
        if not 0 <= label_id < num_classes:
            raise DataError(
                f"{path}: {loc}.label_id: {label_id} is outside 0..{num_classes - 1} "
                f"({num_classes} distinct labels; ids must be contiguous)"
            )
    return [label_of[i][0] for i in range(num_classes)]


def dirty_reasons(segments: np.ndarray, labels: np.ndarray, duration: float, tolerance: float) -> list[str | None]:
    """Per segment: the first dirty rule it breaks, or None when it is clean.

    segments (N, 2) seconds, labels (N,). A duplicate is a later copy (same label, both ends
    within DUPLICATE_TOLERANCE) of a segment that is itself kept.
    """
    reasons: list[str | None] = []
    kept: list[int] = []
    for i, (start, end) in enumerate(segments):
        if end <= start:
            reasons.append("end_not_after_start")
        elif start < -tolerance or end > duration + tolerance:
            reasons.append("outside_video")
        elif any(
            labels[j] == labels[i] and np.all(np.abs(segments[j] - segments[i]) <= DUPLICATE_TOLERANCE) for j in kept
        ):
            reasons.append("duplicate")
        else:
            reasons.append(None)
            kept.append(i)
    return reasons


def _read_video(
    video_id: str, entry: dict[str, Any], where: str, label_ids: dict[str, int], default_fps: float
) -> VideoAnnotation:
    if "duration" not in entry:
        raise DataError(f"{where}.duration: missing")
    duration = _positive_number(entry["duration"], f"{where}.duration")
    # the video's own fps first (a deviation: the reference prefers its default_fps when set)
    fps = _positive_number(entry["fps"], f"{where}.fps") if entry.get("fps") is not None else default_fps
    annotations = _annotation_list(entry, where)
    segments = np.zeros((len(annotations), 2), dtype=np.float64)  # (N, 2) seconds
    labels = np.zeros(len(annotations), dtype=np.int64)  # (N,)
    for i, ann in enumerate(annotations):
        at = f"{where}.annotations[{i}]"
        label = _label(ann, at)
        if label not in label_ids:
            raise DataError(f"{at}.label: {label!r} is not in the class list")
        segments[i] = _segment(ann, at)
        labels[i] = label_ids[label]
    return VideoAnnotation(
        video_id=video_id, subset=entry["subset"], duration=duration, fps=fps, segments=segments, labels=labels
    )


def _subset_of(entry: Any, where: str) -> str:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected a mapping, got {type(entry).__name__}")
    subset = entry.get("subset")
    if not isinstance(subset, str):
        raise DataError(f"{where}.subset: missing or not a string")
    return subset


def _annotation_list(entry: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected a mapping, got {type(entry).__name__}")
    annotations = entry.get("annotations", [])
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        raise DataError(f"{where}.annotations: expected a list of mappings")
    return annotations


def _label(ann: dict[str, Any], at: str) -> str:
    if "label" not in ann:
        raise DataError(f"{at}.label: missing")
    if not isinstance(ann["label"], str):
        raise DataError(f"{at}.label: expected a string, got {ann['label']!r}")
    return ann["label"]


def _segment(ann: dict[str, Any], at: str) -> tuple[float, float]:
    if "segment" not in ann:
        raise DataError(f"{at}.segment: missing")
    segment = ann["segment"]
    if not isinstance(segment, list) or len(segment) != 2:
        raise DataError(f"{at}.segment: expected [start, end], got {segment!r}")
    return _number(segment[0], f"{at}.segment[0]"), _number(segment[1], f"{at}.segment[1]")


def _number(value: Any, at: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{at}: expected a finite number, got {value!r}")
    return float(value)


def _positive_number(value: Any, at: str) -> float:
    number = _number(value, at)
    if number <= 0:
        raise DataError(f"{at}: must be > 0, got {value!r}")
    return number
