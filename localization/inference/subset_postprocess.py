"""Post-processing of a whole subset at once: the NMS of every video runs in one vectorised loop.

``localization.inference.postprocess`` handles one video; a FineAction-sized validation set is ~4,000 such
calls per setting, which made comparing post-processing settings cost far more than scoring the
detections. Here all videos' candidates sit in flat arrays, and each greedy step makes, for every
video at once, the pick the per-video loop makes at that step: the best remaining candidate of the
video's best group (class), which then decays (Soft-NMS) or removes (NMS) the candidates of its
group. Per video the float32 operations are those of ``_greedy_select``, element for element, so
the detections are identical (``tests/test_subset_postprocess.py`` compares the two on random
cases with ties); the per-video functions stay as that reference.

One difference in the work done, not the result: each step here weighs the picked candidate's
whole group, where the per-video loop visits only candidates that can overlap it. A candidate
that cannot overlap has IoU 0, weight exp(0) = 1 (Soft-NMS) and IoU 0 < threshold (NMS, where a
threshold <= 0 empties the group at its first pick), so it is left as it was. This needs
segments of positive length, which ``select_candidates`` guarantees (``duration_thresh`` >= 0).

What does not depend on the setting (the order by video, group and start; the group table) is
computed once per :class:`CandidateSet` and grouping, and reused by every setting scored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from localization.config.schema import TestConfig
from localization.data.timegrid import grid_to_seconds
from localization.inference.postprocess import _AREA_EPS, _REMOVED, Candidates, score_voting

SuppressAll = Callable[[np.ndarray, np.ndarray], None]  # (scores (L,), IoU with each one's pick (L,)) in place


@dataclass(frozen=True)
class VideoTiming:
    """What turns one video's grid units into seconds."""

    video_id: str
    fps: float
    duration: float
    stride: float  # frames between feature steps (the video's time grid, localization.data.timegrid)
    clip: float  # frames one feature step sees


@dataclass
class Detections:
    """Every video's detections in seconds, flat: rows of video ``v`` are ``offsets[v]:offsets[v+1]``,
    in descending score order (the per-video functions' output order)."""

    video_ids: list[str]
    offsets: np.ndarray  # (V + 1,) int64
    segments: np.ndarray  # (M, 2) float64 seconds
    scores: np.ndarray  # (M,) float32
    labels: np.ndarray  # (M,) int64

    @property
    def video(self) -> np.ndarray:
        """(M,) int64: the video index of every row."""
        return np.repeat(np.arange(len(self.video_ids)), np.diff(self.offsets))

    def per_video(self) -> dict[str, Candidates]:
        """``{video id: Candidates}`` (views into the flat arrays), in video order."""
        bounds = zip(self.video_ids, self.offsets[:-1], self.offsets[1:], strict=True)
        return {vid: Candidates(self.segments[a:b], self.scores[a:b], self.labels[a:b]) for vid, a, b in bounds}


@dataclass(frozen=True)
class _Layout:
    """The candidates ordered by (video, group, start, index): what every greedy step indexes."""

    order: np.ndarray  # (N,) flat index of the candidate at each sorted position
    x1: np.ndarray  # (N,) float32 starts, ascending within a group
    x2: np.ndarray  # (N,) float32 ends
    areas: np.ndarray  # (N,) float32 end - start + 1e-6 (the reference's areas)
    group_start: np.ndarray  # (G + 1,) sorted position where each group starts; N at the end
    group_video: np.ndarray  # (G,) video of each group
    group_column: np.ndarray  # (G,) the group's rank among its video's groups (ascending class)
    width: int  # most groups in one video


@dataclass
class CandidateSet:
    """Every video's raw (pre-NMS) candidates in grid units, flat, with what seconds need.

    Built once per evaluation (:meth:`from_raw`); :meth:`detect` post-processes the whole set with
    any settings, reusing the setting-independent order across calls.
    """

    videos: list[VideoTiming]
    offsets: np.ndarray  # (V + 1,) int64
    segments: np.ndarray  # (N, 2) float32 grid units
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64
    _layouts: dict[bool, _Layout] = field(default_factory=dict, repr=False)  # by multiclass_nms

    @staticmethod
    def from_raw(raw: Mapping[str, Candidates], videos: Sequence[VideoTiming]) -> CandidateSet:
        """The candidates of ``videos`` (in that order) from ``raw`` (which must hold every one)."""
        parts = [raw[video.video_id] for video in videos]
        counts = [len(c) for c in parts]
        return CandidateSet(
            videos=list(videos),
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            segments=np.concatenate([c.segments for c in parts] or [np.zeros((0, 2))]).astype(np.float32),
            scores=np.concatenate([c.scores for c in parts] or [np.zeros(0)]).astype(np.float32),
            labels=np.concatenate([c.labels for c in parts] or [np.zeros(0)]).astype(np.int64),
        )

    @property
    def video_ids(self) -> list[str]:
        return [video.video_id for video in self.videos]

    def __len__(self) -> int:
        return len(self.scores)

    def detect(self, test_cfg: TestConfig) -> Detections:
        """Every video's detections in seconds: what ``postprocess`` gives video by video."""
        cfg = test_cfg
        video, keep, scores = self._select(cfg)  # (M,) each, grouped by video, selection order
        offsets = np.concatenate([[0], np.cumsum(np.bincount(video, minlength=len(self.videos)))]).astype(np.int64)
        segments = self.segments[keep]
        if cfg.nms_method != "none" and not cfg.multiclass_nms and cfg.voting_thresh > 0:
            segments = self._voted(offsets, segments, cfg.voting_thresh)

        def per_row(name: str) -> np.ndarray:  # (M, 1): the value of each kept row's video
            return np.array([getattr(v, name) for v in self.videos], np.float64)[video, None]

        grid = segments.astype(np.float64)
        seconds = grid_to_seconds(grid, per_row("fps"), per_row("stride"), per_row("clip"))
        duration = per_row("duration")
        return Detections(self.video_ids, offsets, np.clip(seconds, 0.0, duration), scores, self.labels[keep])

    # ---- selection ----------------------------------------------------------------------------

    def _video_of_rows(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.videos)), np.diff(self.offsets))  # (N,)

    def _select(self, cfg: TestConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(video (M,), flat index (M,), score (M,)) of the kept candidates, video by video in
        selection order (descending score), at most ``max_seg_num`` per video."""
        if cfg.nms_method == "none":  # the top max_seg_num by score; equal scores by index
            video = self._video_of_rows()
            order = np.lexsort((-self.scores, video))
            rank = np.arange(len(order)) - self.offsets[video[order]]
            keep = order[rank < cfg.max_seg_num]
            return video[keep], keep, self.scores[keep]
        layout = self._layout(cfg.multiclass_nms)
        scores = self.scores[layout.order]  # (N,) working copy in sorted order
        if cfg.nms_method == "soft":
            sigma, floor = np.float32(cfg.nms_sigma), np.float32(cfg.min_score)

            def suppress(s: np.ndarray, iou: np.ndarray) -> None:
                s *= np.exp(-(iou * iou) / sigma)
                s[~(s >= floor)] = _REMOVED

        else:
            threshold = np.float32(cfg.iou_threshold)
            if cfg.min_score > 0:  # hard_nms leaves these out; here they can never be picked
                scores[~(scores > cfg.min_score)] = _REMOVED

            def suppress(s: np.ndarray, iou: np.ndarray) -> None:
                s[iou >= threshold] = _REMOVED

        video, position, kept = _greedy_all(layout, scores, len(self.videos), cfg.max_seg_num, suppress)
        return video, layout.order[position], kept

    def _layout(self, multiclass: bool) -> _Layout:
        """The (cached) order by video, then group, then start, then index (the per-video order)."""
        if multiclass not in self._layouts:
            video = self._video_of_rows()
            group = self.labels if multiclass else np.zeros(len(self), np.int64)
            num_groups = int(group.max()) + 1 if len(group) else 1
            key = video * num_groups + group  # (N,) one key per (video, group)
            order = _stable_order(key, self.segments[:, 0])
            key = key[order]
            starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
            group_video = key[starts] // num_groups
            first_of_video = np.searchsorted(group_video, group_video, "left")  # (G,) ascending videos
            column = np.arange(len(starts)) - first_of_video
            x1 = np.ascontiguousarray(self.segments[order, 0], dtype=np.float32)
            x2 = np.ascontiguousarray(self.segments[order, 1], dtype=np.float32)
            self._layouts[multiclass] = _Layout(
                order=order,
                x1=x1,
                x2=x2,
                areas=x2 - x1 + _AREA_EPS,
                group_start=np.r_[starts, len(key)].astype(np.int64),
                group_video=group_video,
                group_column=column,
                width=int(column.max()) + 1 if len(column) else 0,
            )
        return self._layouts[multiclass]

    def _voted(self, offsets: np.ndarray, kept: np.ndarray, voting_thresh: float) -> np.ndarray:
        """``score_voting`` of each video's kept segments (rows ``offsets[v]:offsets[v+1]``) against
        its own candidates, video by video (only class-agnostic NMS votes)."""
        out = np.empty_like(kept, dtype=np.float32)
        for v in range(len(self.videos)):
            a, b = offsets[v], offsets[v + 1]
            if b > a:
                lo, hi = self.offsets[v], self.offsets[v + 1]
                out[a:b] = score_voting(kept[a:b], self.segments[lo:hi], self.scores[lo:hi], voting_thresh)
        return out


def _greedy_all(
    layout: _Layout, scores: np.ndarray, num_videos: int, max_num: int, suppress: SuppressAll
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_greedy_select`` of every video at once: each step picks, in every video that has one
    left, the best candidate of its best group (ties: the lowest class, then the earliest start,
    then the lowest index, as there) and lets it suppress its group.

    ``scores`` (N,) float32 in layout order is the working array (modified). Returns (video,
    sorted position, score at selection) of the picks, grouped by video, in selection order.
    """
    bounds = layout.group_start
    if len(scores) == 0 or max_num <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    group_best, group_arg = _segment_argmax(scores, bounds[:-1])  # (G,) each
    table = np.full((num_videos, layout.width), -1, np.int64)  # (V, W) group id, -1: none
    table[layout.group_video, layout.group_column] = np.arange(len(group_best))
    best = np.full((num_videos, layout.width), _REMOVED, np.float32)  # (V, W) best remaining score
    best[layout.group_video, layout.group_column] = group_best
    rows = np.unique(layout.group_video)  # (R,) videos with candidates
    picked_rows, picked, picked_scores = [], [], []
    for _ in range(max_num):
        column = np.argmax(best[rows], axis=1)  # (R,) first maximum: the lowest class
        alive = best[rows, column] != _REMOVED  # a video whose best is gone is done, as there
        if not alive.all():
            rows, column = rows[alive], column[alive]
            if len(rows) == 0:
                break
        group = table[rows, column]  # (R,)
        pick = group_arg[group]  # (R,) sorted positions
        picked_rows.append(rows)
        picked.append(pick)
        picked_scores.append(scores[pick])
        scores[pick] = _REMOVED
        lengths = bounds[group + 1] - bounds[group]  # (R,) >= 1
        members = _concatenated_ranges(bounds[group], lengths)  # (L,) every member of the picked groups
        x1p, x2p = np.repeat(layout.x1[pick], lengths), np.repeat(layout.x2[pick], lengths)
        inter = np.maximum(np.minimum(x2p, layout.x2[members]) - np.maximum(x1p, layout.x1[members]), 0)
        member_scores = scores[members]
        suppress(member_scores, inter / (np.repeat(layout.areas[pick], lengths) + layout.areas[members] - inter))
        scores[members] = member_scores
        segment_starts = np.cumsum(lengths) - lengths
        group_best_now, arg = _segment_argmax(member_scores, segment_starts)
        group_arg[group] = members[arg]
        best[rows, column] = group_best_now
    video = np.concatenate(picked_rows)
    by_video = np.argsort(video, kind="stable")  # steps are in order: selection order per video
    return video[by_video], np.concatenate(picked)[by_video], np.concatenate(picked_scores)[by_video]


def _segment_argmax(values: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per segment ``values[starts[i]:starts[i+1]]`` (all non-empty, no NaN): the maximum and the
    index of its first occurrence (np.argmax's tie-break)."""
    maxima = np.maximum.reduceat(values, starts)  # (S,)
    lengths = np.diff(np.r_[starts, len(values)])
    hits = np.cumsum(values == np.repeat(maxima, lengths))  # (L,) non-decreasing
    before = np.where(starts > 0, hits[np.maximum(starts - 1, 0)], 0)
    return maxima, np.searchsorted(hits, before + 1, "left")


def _stable_order(key: np.ndarray, start: np.ndarray) -> np.ndarray:
    """``np.lexsort((start, key))`` (by key, then float32 start, then index), ~10x faster.

    Both keys go into one uint64 (key above 32 bits, start as order-preserving float32 bits, -0.0
    folded into 0.0 as float comparison does), sorted by quicksort; runs of equal values, rare,
    are then put back in index order.
    """
    if len(key) and (key.min() < 0 or key.max() >= 2**32):
        return np.lexsort((start, key))
    bits = (start.astype(np.float32) + np.float32(0)).view(np.uint32)  # + 0: -0.0 -> 0.0
    sortable = np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))  # negative floats: reversed bits
    combined = (key.astype(np.uint64) << np.uint64(32)) | sortable.astype(np.uint64)
    order = np.argsort(combined)
    ordered = combined[order]
    tied = np.flatnonzero(ordered[1:] == ordered[:-1])  # (T,) position i ties with i + 1
    if len(tied):
        members = np.unique(np.r_[tied, tied + 1])  # positions inside a run of equal values
        run = np.cumsum(np.r_[True, np.diff(members) > 1] | np.r_[True, ordered[members[1:]] != ordered[members[:-1]]])
        order[members] = order[members][np.lexsort((order[members], run))]
    return order


def _concatenated_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])`` without the loop."""
    ends = np.cumsum(lengths)
    return np.arange(ends[-1] if len(ends) else 0) + np.repeat(starts - (ends - lengths), lengths)
