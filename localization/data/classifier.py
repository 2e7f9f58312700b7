"""External video-level classifier scores (``test.ext_score_file``): the labels of class-agnostic segments.

The published ActionFormer-family FineAction numbers detect
class-agnostic segments and name them with a video classifier's top classes
(``new_swinB_1x1x256_views2x3_max_label_avg_prob.json``, top 2). Accepted layout, the ActivityNet
classifier JSON as OpenTAD's ``StandardClassifier`` reads it::

    {"class": ["name_0", ..., "name_{K-1}"],          # or "classes"
     "results": {"v_00000000": [p_0, ..., p_{K-1}],   # one score per class, in "class" order
                 ...}}

or, without ``class``, ``"results": {video_id: {"name": p, ...}}``. Names are compared stripped
and must be classes of the model; scores must be finite and >= 0. Every video scored needs an
entry. A segment of score s in a video whose top-k classes score p_1..p_k becomes k segments,
labelled with those classes, scored ``sqrt(s * p_j)`` (OpenTAD's and ActionFormer's fusion).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from localization.errors import DataError


@dataclass(frozen=True)
class ClassifierScores:
    """Per video, one score per model class (a class the file does not score gets -inf)."""

    source: str
    scores: dict[str, np.ndarray]  # video id -> (C,) float64 in model class order

    def top(self, video_id: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(class ids, scores) of the video's k best classes, best first (ties: lower id first)."""
        if video_id not in self.scores:
            raise DataError(f"{self.source}: results: no scores for video {video_id!r} (test.ext_score_file)")
        scores = self.scores[video_id]
        order = np.argsort(-scores, kind="stable")[:k]
        order = order[np.isfinite(scores[order])]
        return order, scores[order]


def load_classifier_scores(path: str | Path, class_names: list[str]) -> ClassifierScores:
    """Read ``path`` (layout in the module docstring) onto the model's ``class_names``."""
    src = str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{src}: file not found (test.ext_score_file)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{src}: cannot read as JSON (test.ext_score_file): {exc}") from None
    results = raw.get("results") if isinstance(raw, dict) else None
    if not isinstance(results, dict):
        raise DataError(f"{src}: results: missing, or not a mapping of video id -> class scores")
    names = raw.get("class", raw.get("classes"))
    index = {name.strip(): i for i, name in enumerate(class_names)}
    columns = None if names is None else _columns(names, index, src)
    scores = {}
    for video_id, entry in results.items():
        where = f"{src}: results.{video_id}"
        row = np.full(len(class_names), -np.inf)  # (C,)
        if columns is not None:
            if not isinstance(entry, list) or len(entry) != len(columns):
                raise DataError(f"{where}: expected a list of {len(columns)} scores (one per 'class' entry)")
            row[columns] = [_score(value, f"{where}[{i}]") for i, value in enumerate(entry)]
        else:
            if not isinstance(entry, dict):
                raise DataError(f"{where}: expected a mapping of class name -> score (the file has no 'class' list)")
            for name, value in entry.items():
                row[_class_id(name, index, f"{where}.{name}")] = _score(value, f"{where}.{name}")
        scores[video_id] = row
    return ClassifierScores(source=src, scores=scores)


def label_segments(
    segments: np.ndarray, scores: np.ndarray, top: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class-agnostic (N, 2) segments and (N,) scores -> (kN, 2), (kN,) fused scores, (kN,) labels,
    grouped by class rank (all segments with the best class first)."""
    classes, class_scores = top
    k = len(classes)
    fused = np.sqrt(scores[None, :].astype(np.float64) * class_scores[:, None])  # (k, N)
    return np.tile(segments, (k, 1)), fused.reshape(-1), np.repeat(classes, len(scores)).astype(np.int64)


def _columns(names: Any, index: dict[str, int], src: str) -> np.ndarray:
    if not isinstance(names, list):
        raise DataError(f"{src}: class: expected a list of class names")
    return np.array([_class_id(name, index, f"{src}: class[{i}]") for i, name in enumerate(names)], dtype=np.int64)


def _class_id(name: Any, index: dict[str, int], where: str) -> int:
    if not isinstance(name, str) or name.strip() not in index:
        raise DataError(f"{where}: {name!r} is not a class of the model (test.ext_score_file)")
    return index[name.strip()]


def _score(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise DataError(f"{where}: expected a finite score >= 0, got {value!r}")
    return float(value)
