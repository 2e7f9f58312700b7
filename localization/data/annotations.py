"""Annotation JSON (ActivityNet / FineAction "database" layout) -> per-video ground truth.

The one reader of the annotation file: training, validation and evaluation
(``localization.metrics.load_ground_truth``) all read it here, with one subset rule
(:func:`same_subset`) and one class map. Layout::

    {"database": {video_id: {"subset": str, "duration": sec (a number or numeric string), ["fps"],
                             "annotations": [{"segment": [s, e], "label": str, ["label_id": int]}]}},
     ["taxonomy": [...]]}

Labels are compared with surrounding whitespace stripped everywhere (the official FineAction
labels are reported to carry a trailing space, ``"braid hair "``). The class map, in order:

- ``data.class_list`` given: its lines (stripped) are the classes, line = id (the JSON's
  ``label_id``, if any, is checked for consistency but not used);
- every annotation has a ``label_id``: the ids are the classes, count = largest id + 1 (a subset or
  split may not use every id); an unused id takes its name from the JSON's ``taxonomy`` (a list of
  names, index = id, or of ``{"label_id", "label"}`` mappings), else a placeholder saying so;
- no ``label_id`` anywhere (the official release): the distinct labels, sorted, as OpenTAD's
  ``category_idx.txt``.

Training drops dirty ground truth: three rules drop segments and count them
per reason; nothing else is changed (overshoots within ``data.boundary_tolerance`` are kept as
they are, not clamped). Evaluation keeps the ground truth as released. Every malformed field is a
:class:`DataError` naming the file and the JSON path of the field.

Deviations from the reference loaders, following the project's recipe:
they drop events shorter than 1e-3 s and duplicates within 1e-3 s and keep end > duration; here
end <= start and segments outside the video are dropped, and duplicates must match within 1e-6 s.
The reference prefers ``default_fps`` over a video's own ``fps``; here the video's own fps wins
unless ``data.force_default_fps`` is set (every public FineAction pipeline forces 30 fps: the
InternVideo2 features come from re-encoded videos).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from localization.config.schema import DataConfig
from localization.errors import DataError

# Why a segment was dropped, in the order the rules are checked (a segment counts once).
DIRTY_REASONS = ("end_not_after_start", "outside_video", "duplicate")
DUPLICATE_TOLERANCE = 1e-6  # seconds: "same segment" for the duplicate rule
# Where a class map came from (the data report shows it).
CLASS_MAP_SOURCES = ("class_list", "label_id", "sorted labels")


@dataclass
class VideoAnnotation:
    """One video of a subset, with its ground truth."""

    video_id: str
    subset: str
    duration: float
    fps: float  # the video's "fps" key, else data.default_fps (always default_fps when forced)
    segments: np.ndarray  # (N, 2) float64 seconds
    labels: np.ndarray  # (N,) int64 label ids 0..C-1


@dataclass
class SubsetAnnotations:
    """All videos of one subset, the class names and what the dirty rules dropped."""

    subset: str
    videos: list[VideoAnnotation]
    class_names: list[str]  # index = label id
    dropped: dict[str, int]  # reason (DIRTY_REASONS) -> count
    class_map: str = "label_id"  # where class_names came from (CLASS_MAP_SOURCES)


@dataclass
class AnnotationFile:
    """Every video of an annotation file, ground truth as released, and its class map."""

    path: Path
    videos: list[VideoAnnotation]  # file order
    class_names: list[str]  # index = label id
    class_map: str  # CLASS_MAP_SOURCES

    def subset(self, subset: str) -> list[VideoAnnotation]:
        """The videos of ``subset`` (:func:`same_subset`); none is an error listing the subsets present."""
        videos = [video for video in self.videos if same_subset(video.subset, subset)]
        if not videos:
            present = sorted({video.subset for video in self.videos})
            raise DataError(f"{self.path}: no video has subset {subset!r} (subsets in the file: {present})")
        return videos


def same_subset(name: str, wanted: str) -> bool:
    """The one subset rule: names match ignoring case and surrounding whitespace (ActionFormer
    lower-cases; the official evaluator matches exactly, which no FineAction file needs)."""
    return name.strip().lower() == wanted.strip().lower()


def read_annotation_file(
    path: str | Path, class_list: str | None = None, default_fps: float = 30.0, force_default_fps: bool = False
) -> AnnotationFile:
    """Read and check every video of the file; fps as ``data.default_fps`` / ``force_default_fps`` say."""
    path = Path(path)
    raw = read_json_file(path)
    database = database_of(raw, path)
    class_names, source = class_map(
        database, raw.get("taxonomy"), path, Path(class_list) if class_list is not None else None
    )
    label_ids = {name: i for i, name in enumerate(class_names)}
    videos = [
        _read_video(video_id, entry, f"{path}: database.{video_id}", label_ids, default_fps, force_default_fps)
        for video_id, entry in database.items()
    ]
    return AnnotationFile(path=path, videos=videos, class_names=class_names, class_map=source)


def load_subset(data_cfg: DataConfig, subset: str) -> SubsetAnnotations:
    """Videos of ``subset`` (:func:`same_subset`), dirty segments dropped for training."""
    file = read_annotation_file(
        data_cfg.annotations, data_cfg.class_list, data_cfg.default_fps, data_cfg.force_default_fps
    )
    videos = file.subset(subset)
    dropped = dict.fromkeys(DIRTY_REASONS, 0)
    for video in videos:
        reasons = dirty_reasons(video.segments, video.labels, video.duration, data_cfg.boundary_tolerance)
        for reason in reasons:
            if reason is not None:
                dropped[reason] += 1
        keep = np.array([reason is None for reason in reasons], dtype=bool)
        video.segments, video.labels = video.segments[keep], video.labels[keep]
    return SubsetAnnotations(
        subset=subset, videos=videos, class_names=file.class_names, dropped=dropped, class_map=file.class_map
    )


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
    """Class names indexed by label id (the class map of the module docstring)."""
    return read_annotation_file(data_cfg.annotations, data_cfg.class_list).class_names


def read_json_file(path: Path) -> dict[str, Any]:
    """The top-level mapping of an annotation file."""
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
    if not isinstance(raw, dict):
        raise DataError(f"{path}: database: missing (expected a top-level 'database' mapping)")
    return raw


def database_of(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """The ``database`` mapping of an annotation file."""
    if "database" not in raw:
        raise DataError(f"{path}: database: missing (expected a top-level 'database' mapping)")
    if not isinstance(raw["database"], dict):
        raise DataError(f"{path}: database: expected a mapping of video id -> entry")
    return raw["database"]


def read_class_list(path: Path) -> list[str]:
    """One class name per line (stripped); the line index is the label id (trailing blank lines allowed)."""
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


def class_map(database: dict[str, Any], taxonomy: Any, path: Path, class_list: Path | None) -> tuple[list[str], str]:
    """(class names indexed by id, where they came from): see the module docstring.

    Names and ids must stay one to one; the reference's ``label_dict`` silently assumes it.
    """
    id_of: dict[str, int | None] = {}  # stripped label -> its label_id (None: the JSON has none)
    label_of: dict[int, tuple[str, str]] = {}  # label id -> (label, JSON path where first seen)
    first_without: str | None = None  # JSON path of the first annotation without a label_id
    first_with: str | None = None
    for video_id, entry in database.items():
        for i, ann in enumerate(_annotation_list(entry, f"{path}: database.{video_id}")):
            loc = f"database.{video_id}.annotations[{i}]"
            at = f"{path}: {loc}"
            label = _label(ann, at)
            if "label_id" not in ann:
                first_without = first_without or loc
                id_of.setdefault(label, None)
                continue
            first_with = first_with or loc
            label_id = ann["label_id"]
            if isinstance(label_id, bool) or not isinstance(label_id, int):
                raise DataError(f"{at}.label_id: expected an integer, got {label_id!r}")
            if label_id < 0:
                raise DataError(f"{at}.label_id: must be >= 0, got {label_id}")
            if id_of.setdefault(label, label_id) != label_id:
                raise DataError(f"{at}.label_id: label {label!r} has id {label_id} here but {id_of[label]} elsewhere")
            first_label, first_loc = label_of.setdefault(label_id, (label, loc))
            if first_label != label:
                raise DataError(
                    f"{at}.label_id: id {label_id} is used for {label!r} here and for {first_label!r} at {first_loc}"
                )
    if first_with is not None and first_without is not None:
        raise DataError(
            f"{path}: {first_without}.label_id: missing, but {first_with} has one "
            "(give every annotation a label_id, or none)"
        )
    if class_list is not None:
        return read_class_list(class_list), "class_list"
    if not id_of:
        raise DataError(f"{path}: database: no annotation has a label, so there is no class map (set data.class_list)")
    if not label_of:
        return sorted(id_of), "sorted labels"
    named = _taxonomy_names(taxonomy, path)
    names = []
    for label_id in range(max(label_of) + 1):
        if label_id in label_of:
            label, loc = label_of[label_id]
            if named.get(label_id, label) != label:
                raise DataError(
                    f"{path}: {loc}.label_id: id {label_id} is {label!r} here but {named[label_id]!r} in the taxonomy"
                )
            names.append(label)
        else:
            names.append(named.get(label_id, f"<label_id {label_id}: unused, no name in the file>"))
    return names, "label_id"


def _taxonomy_names(taxonomy: Any, path: Path) -> dict[int, str]:
    """Names by id from ``taxonomy``: a list of names (index = id) or of {"label_id", "label"}
    mappings; anything else (ActivityNet's node tree, for one) names nothing."""
    if not isinstance(taxonomy, list):
        return {}
    if all(isinstance(name, str) for name in taxonomy):
        return {i: name.strip() for i, name in enumerate(taxonomy)}
    names = {}
    for i, node in enumerate(taxonomy):
        if isinstance(node, dict) and "label_id" in node and "label" in node:
            label_id = node["label_id"]
            if isinstance(label_id, bool) or not isinstance(label_id, int):
                raise DataError(f"{path}: taxonomy[{i}].label_id: expected an integer, got {label_id!r}")
            names[label_id] = _label(node, f"{path}: taxonomy[{i}]")
    return names


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
    video_id: str, entry: Any, where: str, label_ids: dict[str, int], default_fps: float, force_default_fps: bool
) -> VideoAnnotation:
    subset = _subset_of(entry, where)
    if "duration" not in entry:
        raise DataError(f"{where}.duration: missing")
    duration = _positive_number(entry["duration"], f"{where}.duration")
    fps = default_fps
    if entry.get("fps") is not None:
        own_fps = _positive_number(entry["fps"], f"{where}.fps")  # checked even when not used
        fps = default_fps if force_default_fps else own_fps
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
        video_id=video_id, subset=subset, duration=duration, fps=fps, segments=segments, labels=labels
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
    label = ann["label"].strip()  # "braid hair " in the official labels
    if not label:
        raise DataError(f"{at}.label: empty class name")
    return label


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
    """A number > 0; a numeric string ("97.4") is read as one, as OpenTAD's float() does."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise DataError(f"{at}: expected a finite number, got {value!r}") from None
    number = _number(value, at)
    if number <= 0:
        raise DataError(f"{at}: must be > 0, got {value!r}")
    return number
