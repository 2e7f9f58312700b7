"""Post-processing of a whole subset at once: the NMS of all videos runs as one greedy loop.

``localization.inference.postprocess`` handles one video; a FineAction-sized validation set is ~4,000 such
calls per setting, which made comparing post-processing settings cost far more than scoring the
detections. Here all videos' candidates sit in flat arrays, and each greedy step makes, for a
block of videos at once, the pick the per-video loop makes at that step: the best remaining
candidate of the video's best group (class), which then decays (Soft-NMS) or removes (NMS) the
candidates of its group that may overlap it (``subset_nms_kernels``, compiled). Per video the
float32 operations are those of ``_greedy_select``, element for element, so the detections are
identical (``tests/localization/inference/test_subset_postprocess.py`` compares the two on random cases with ties); the
per-video functions stay as that reference.

One difference in the work done, not the result: Soft-NMS floors every candidate below
``min_score`` before the first pick (except each group's best, which that pick takes), where the
per-video loop floors a group's members at its first pick. Nothing reads them in between, so
every pick, the first too, may weigh only the candidates it can overlap (IoU 0 weighs exp(0) = 1).
This needs segments of positive length, which ``select_candidates`` guarantees (``duration_thresh``
>= 0).

What does not depend on the setting (the order by video, group and start; each group's best raw
score; the group table) is computed once per :class:`CandidateSet` and grouping, and reused by
every setting scored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from localization.config.schema import TestConfig
from localization.data.timegrid import grid_to_seconds
from localization.inference import subset_nms_kernels as kernels
from localization.inference.postprocess import _REMOVED, Candidates, score_voting


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
    group_start: np.ndarray  # (G + 1,) sorted position where each group starts; N at the end
    longest: np.ndarray  # (G,) float64 the group's longest segment (exact)
    scores: np.ndarray  # (N,) float32 the raw scores in this order
    group_best: np.ndarray  # (G,) float32 each group's best raw score ...
    group_arg: np.ndarray  # (G,) ... and its first position
    table: np.ndarray  # (V, W) int64 group of each video's column (ascending class), -1: none


@dataclass(frozen=True)
class _Suppression:
    """What a pick does to the members of its group it weighs (``subset_nms_kernels``)."""

    soft: bool  # Soft-NMS: scores times exp(-IoU^2 / sigma), dropped below ``limit`` (min_score)
    limit: np.float32  # Soft-NMS: min_score; hard NMS: the IoU at which a member is removed
    windowed: bool  # weigh only the members that may overlap the pick (else the whole group)
    sigma: np.float32  # Soft-NMS's sigma (hard NMS: unused)


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
        scores = layout.scores.copy()  # (N,) working copy in sorted order
        group_best, group_arg = layout.group_best, layout.group_arg
        if cfg.nms_method == "soft":
            # A group's first pick floors every member (IoU 0 weighs 1, then the floor applies), so
            # flooring them before any pick changes nothing, except for the member that first pick
            # takes: then every pick, the first too, weighs only the members it may overlap.
            below = ~(scores >= np.float32(cfg.min_score))
            below[group_arg] = False
            scores[below] = _REMOVED  # every group's best, and where it is, stay as they were
            rule = _Suppression(True, np.float32(cfg.min_score), windowed=True, sigma=np.float32(cfg.nms_sigma))
        else:
            if cfg.min_score > 0:  # hard_nms leaves these out; here they can never be picked
                scores[~(scores > cfg.min_score)] = _REMOVED
                group_best, group_arg = kernels.group_maxima(scores, layout.group_start)
            threshold = np.float32(cfg.iou_threshold)  # <= 0: IoU 0 >= it, a first pick empties its group
            rule = _Suppression(False, threshold, windowed=bool(threshold > 0), sigma=np.float32(1))
        video, position, kept = _greedy_all(layout, scores, group_best, group_arg, cfg.max_seg_num, rule)
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
            group_start = np.r_[starts, len(key)].astype(np.int64)
            scores = self.scores[order]
            group_best, group_arg = kernels.group_maxima(scores, group_start)
            table = np.full((len(self.videos), int(column.max()) + 1 if len(column) else 0), -1, np.int64)
            table[group_video, column] = np.arange(len(starts))
            self._layouts[multiclass] = _Layout(
                order=order,
                x1=x1,
                x2=x2,
                group_start=group_start,
                longest=np.maximum.reduceat(x2.astype(np.float64) - x1, starts) if len(key) else np.zeros(0),
                scores=scores,
                group_best=group_best,
                group_arg=group_arg,
                table=table,
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


# Videos that step together: their candidates stay in the CPU's caches from one step to the next
# (all of a FineAction-sized set at once do not), while the per-step calls stay few.
VIDEOS_PER_BLOCK = 128


def _greedy_all(
    layout: _Layout,
    scores: np.ndarray,
    group_best: np.ndarray,
    group_arg: np.ndarray,
    max_num: int,
    rule: _Suppression,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_greedy_select`` of every video at once: each step picks, in every video that has one
    left, the best candidate of its best group (ties: the lowest class, then the earliest start,
    then the lowest index, as there) and lets it suppress the members of its group it may overlap
    (``subset_nms_kernels``).

    ``scores`` (N,) float32 in layout order is the working array (modified), ``group_best`` and
    ``group_arg`` (G,) each group's best score in it and where (not modified). Returns (video,
    sorted position, score at selection) of the picks, grouped by video, in selection order.
    """
    bounds = layout.group_start
    if len(scores) == 0 or max_num <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    group_arg = group_arg.copy()
    has_group = layout.table >= 0
    columns = 1 << max(layout.table.shape[1] - 1, 0).bit_length()  # W rounded up to a power of 2
    best = np.full((len(layout.table), columns), _REMOVED, np.float32)  # (V, C) each group's best score
    best[:, : layout.table.shape[1]][has_group] = group_best[layout.table[has_group]]
    tree = kernels.column_tree(best)  # (V, 2C) where each video's best group is
    videos = np.flatnonzero(has_group[:, 0]) if has_group.size else np.zeros(0, np.int64)  # with candidates
    step = np.empty((min(len(videos), VIDEOS_PER_BLOCK), 4), np.int64)  # per alive video: column, group,
    # window start and end
    weights = np.empty(len(scores), np.float32)  # the step's window members' IoUs or Soft-NMS exponents
    capacity = min(len(scores), len(videos) * max_num)
    picks, pick_scores, picked = np.empty((capacity, 2), np.int64), np.empty(capacity, np.float32), 0
    for block in np.array_split(videos, -(-len(videos) // VIDEOS_PER_BLOCK)):  # videos are independent
        rows, alive = block.copy(), len(block)  # the block's videos with picks left, compacted each step
        for _ in range(max_num):
            alive, written, picked = kernels.pick_and_weigh(
                rows, alive, best, tree, layout.table, group_arg, bounds, layout.longest, rule.windowed, rule.soft,
                rule.sigma, scores, layout.x1, layout.x2, step, weights, picks, pick_scores, picked,
            )  # fmt: skip
            if alive == 0:
                break
            if rule.soft:  # the reference's np.exp: its float32 bits
                np.exp(weights[:written], out=weights[:written])
            kernels.suppress_and_rank(
                rows, step, alive, weights, rule.soft, rule.limit, scores, bounds, group_arg, best, tree
            )  # fmt: skip
    by_video = np.argsort(picks[:picked, 0], kind="stable")  # steps are in order: selection order per video
    return picks[by_video, 0], picks[by_video, 1], pick_scores[:picked][by_video]


def _stable_order(key: np.ndarray, start: np.ndarray) -> np.ndarray:
    """``np.lexsort((start, key))`` (by key, then float32 start, then index), ~10x faster.

    Both keys go into one uint64 (key above 32 bits, start as order-preserving float32 bits, -0.0
    folded into 0.0 as float comparison does), sorted by quicksort; runs of equal values, rare,
    are then put back in index order.
    """
    if len(key) and (key.min() < 0 or key.max() >= 2**32):
        return np.lexsort((start, key))
    combined = (key.astype(np.uint64) << np.uint64(32)) | _order_bits(start).astype(np.uint64)
    order = np.argsort(combined)
    ordered = combined[order]
    tied = np.flatnonzero(ordered[1:] == ordered[:-1])  # (T,) position i ties with i + 1
    if len(tied):
        members = np.unique(np.r_[tied, tied + 1])  # positions inside a run of equal values
        run = np.cumsum(np.r_[True, np.diff(members) > 1] | np.r_[True, ordered[members[1:]] != ordered[members[:-1]]])
        order[members] = order[members][np.lexsort((order[members], run))]
    return order


def _order_bits(values: np.ndarray) -> np.ndarray:
    """(N,) uint32 that sort as the float32 ``values`` compare (no NaN; -0.0 equals 0.0)."""
    bits = (values.astype(np.float32) + np.float32(0)).view(np.uint32)  # + 0: -0.0 -> 0.0
    return np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))  # negative floats: reversed bits
