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
every setting scored. An early model leaves ~21k candidates per video (~87 M on a FineAction-sized
set) where a trained one leaves ~1,500, and a setting picks from a small part of them, so the
candidates are stored compactly (float32, labels int16), sorted video by video (a radix sort that
stays in the CPU's caches), and a setting's working scores go into one buffer the settings
share, filled a group at a time at the group's first pick when groups are large (an early model
picks from few of them): a setting costs what it picks, not the set's size.

A video's picks lie among its best-scored candidates (on the benchmark's early-model set, the 100
picks of each of 4,171 videos among its 155 best, of ~21k), so a setting first searches them
among each video's ``SHORTLIST_PER_PICK`` x ``max_seg_num`` best (a smaller set with its own
layout, made once): a video whose last pick scores at least its lowest candidate kept is done, as
no candidate left out could have been picked or have changed one that was. The others run again
with all their candidates (the whole set's layout is built only then).
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

    order: np.ndarray  # (N,) int32 (int64 beyond 2**31 rows) flat index of the candidate at each sorted position
    x1: np.ndarray  # (N,) float32 starts, ascending within a group
    x2: np.ndarray  # (N,) float32 ends
    group_start: np.ndarray  # (G + 1,) sorted position where each group starts; N at the end
    longest: np.ndarray  # (G,) float64 the group's longest segment (exact)
    scores: np.ndarray  # (N,) float32 the raw scores in this order
    group_best: np.ndarray  # (G,) float32 each group's best raw score ...
    group_arg: np.ndarray  # (G,) ... and its first position
    table: np.ndarray  # (V, W) int64 group of each video's column (ascending class), -1: none
    work: np.ndarray  # (N,) float32 a setting's working scores (one setting at a time), filled per group


@dataclass(frozen=True)
class _Suppression:
    """What a pick does to the members of its group it weighs (``subset_nms_kernels``)."""

    soft: bool  # Soft-NMS: scores times exp(-IoU^2 / sigma), dropped below ``limit`` (min_score)
    limit: np.float32  # Soft-NMS: min_score; hard NMS: the IoU at which a member is removed
    windowed: bool  # weigh only the members that may overlap the pick (else the whole group)
    sigma: np.float32  # Soft-NMS's sigma (hard NMS: unused)


@dataclass(frozen=True)
class _Shortlist:
    """Each video's best-scored rows: where a setting searches its picks first (``CandidateSet._select``)."""

    size: int  # the rows kept per video (and those tied with the last)
    candidates: CandidateSet  # those rows, in their order (with their own layouts)
    rows: np.ndarray  # (K,) int64 each one's row in the whole set
    lowest: np.ndarray  # (V,) float32 each video's lowest score kept: every row left out scores below it
    whole: np.ndarray  # (V,) bool every row of the video is kept


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
    labels: np.ndarray  # (N,) int16 class ids (int32 from 2**15 classes)
    _layouts: dict[bool, _Layout] = field(default_factory=dict, repr=False)  # by multiclass_nms
    _by_score: np.ndarray | None = field(default=None, repr=False)  # (N,) each video's rows by descending score
    _short: _Shortlist | None = field(default=None, repr=False)  # the largest shortlist made yet

    @staticmethod
    def from_raw(raw: Mapping[str, Candidates], videos: Sequence[VideoTiming]) -> CandidateSet:
        """The candidates of ``videos`` (in that order) from ``raw`` (which must hold every one),
        copied once into compact flat arrays."""
        parts = [raw[video.video_id] for video in videos]
        counts = [len(c) for c in parts]
        lowest = min((int(c.labels.min()) for c in parts if len(c)), default=0)
        highest = max((int(c.labels.max()) for c in parts if len(c)), default=0)
        if lowest < 0 or highest >= 2**31:
            raise ValueError(f"raw candidates: labels: class id {lowest if lowest < 0 else highest} out of range")
        return CandidateSet(
            videos=list(videos),
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            segments=np.concatenate([c.segments for c in parts] or [np.zeros((0, 2))], dtype=np.float32),
            scores=np.concatenate([c.scores for c in parts] or [np.zeros(0)], dtype=np.float32),
            labels=np.concatenate(
                [c.labels for c in parts] or [np.zeros(0, np.int64)], dtype=np.int16 if highest < 2**15 else np.int32
            ),
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
        labels = self.labels[keep].astype(np.int64)  # the per-video functions' dtype
        return Detections(self.video_ids, offsets, np.clip(seconds, 0.0, duration), scores, labels)

    # ---- selection ----------------------------------------------------------------------------

    def _select(self, cfg: TestConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(video (M,), flat index (M,), score (M,)) of the kept candidates, video by video in
        selection order (descending score), at most ``max_seg_num`` per video."""
        if cfg.nms_method == "none":  # the top max_seg_num by score; equal scores by index
            counts = np.minimum(np.diff(self.offsets), max(cfg.max_seg_num, 0))
            video = np.repeat(np.arange(len(self.videos)), counts)
            rank = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            keep = self._score_order()[self.offsets[video] + rank].astype(np.int64)
            return video, keep, self.scores[keep]
        size = SHORTLIST_PER_PICK * cfg.max_seg_num
        if cfg.max_seg_num <= 0 or 4 * size * len(self.videos) > len(self):  # it would keep over a quarter
            return self._greedy(cfg, np.arange(len(self.videos)))
        shortlist = self._shortlist(size)
        video, keep, scores = shortlist.candidates._greedy(cfg, np.arange(len(self.videos)))
        counts = np.bincount(video, minlength=len(self.videos))
        last = np.full(len(self.videos), -np.inf, np.float32)  # each video's last pick's score
        last[counts > 0] = scores[np.cumsum(counts)[counts > 0] - 1]
        # A pick multiplies the rows it weighs by exp(-IoU^2 / sigma) <= 1 or removes them, so scores
        # only fall and a video's picks score at least its last one, while a row left out scores
        # below the lowest kept. When that lowest is at most the last pick's score, no row left out
        # was ever its video's best or tied with it, and none changed another (only picks do).
        exact = shortlist.whole | ((counts == cfg.max_seg_num) & (last >= shortlist.lowest))
        done = exact[video]
        video, keep, scores = video[done], shortlist.rows[keep[done]], scores[done]
        if exact.all():
            return video, keep, scores
        again = self._greedy(cfg, np.flatnonzero(~exact))  # the others with all their rows
        video, keep, scores = (np.concatenate(pair) for pair in zip((video, keep, scores), again, strict=True))
        by_video = np.argsort(video, kind="stable")  # each video's picks come from one of the two
        return video[by_video], keep[by_video], scores[by_video]

    def _greedy(self, cfg: TestConfig, videos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``_select``'s NMS of ``videos`` (ascending) over all their rows: ``_greedy_all`` on the layout."""
        layout = self._layout(cfg.multiclass_nms)
        group_best = layout.group_best
        if cfg.nms_method == "soft":
            # A group's first pick floors every member (IoU 0 weighs 1, then the floor applies), so
            # flooring them before any pick changes nothing, except for the member that first pick
            # takes: then every pick, the first too, weighs only the members it may overlap.
            floor_rule = 1
            rule = _Suppression(True, np.float32(cfg.min_score), windowed=True, sigma=np.float32(cfg.nms_sigma))
        else:
            floor_rule = 2 if cfg.min_score > 0 else 0  # hard_nms leaves those out; here they are never picked
            if floor_rule:  # a group with nothing above min_score has nothing to pick
                group_best = np.where(group_best > np.float32(cfg.min_score), group_best, _REMOVED)
            threshold = np.float32(cfg.iou_threshold)  # <= 0: IoU 0 >= it, a first pick empties its group
            rule = _Suppression(False, threshold, windowed=bool(threshold > 0), sigma=np.float32(1))
        floor = (floor_rule, np.float32(cfg.min_score))
        video, position, kept = _greedy_all(layout, group_best, cfg.max_seg_num, rule, floor, videos)
        return video, layout.order[position].astype(np.int64), kept

    def _shortlist(self, size: int) -> _Shortlist:
        """Each video's ``size`` best-scored rows or more, and those tied with the last of them:
        the cached shortlist when it keeps as many (any serves, ``_select`` checks against its own
        lowest score), else a new one in its place (one held at a time)."""
        if self._short is None or self._short.size < size:
            rows, offsets, lowest = kernels.best_of_videos(self.offsets, self.scores, size)
            kept = CandidateSet(self.videos, offsets, self.segments[rows], self.scores[rows], self.labels[rows])
            whole = np.diff(offsets) == np.diff(self.offsets)
            self._short = _Shortlist(size, kept, rows, lowest, whole)
        return self._short

    def _score_order(self) -> np.ndarray:
        """(N,) each video's rows by descending score, equal scores by index (cached)."""
        if self._by_score is None:
            order = np.empty(len(self), _index_dtype(len(self)))
            kernels.order_within_videos(self.offsets, self.scores.view(np.uint32), True, order)
            self._by_score = order
        return self._by_score

    def _layout(self, multiclass: bool) -> _Layout:
        """The (cached) order by video, then group, then start, then index (the per-video order)."""
        if multiclass not in self._layouts:
            n, group_bits = len(self), int(self.labels.max()).bit_length() if multiclass and len(self) else 0
            order = np.empty(n, _index_dtype(n))
            x1, x2, scores = np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.float32)
            capacity = min(n, len(self.videos) * (1 << group_bits))  # groups at most
            group_start, group_video, longest, group_best, group_arg = kernels.layout_within_videos(
                self.offsets, self.labels, group_bits, self.segments, self.scores, capacity, order, x1, x2, scores
            )
            first_of_video = np.searchsorted(group_video, group_video, "left")  # (G,) ascending videos
            column = np.arange(len(group_video)) - first_of_video
            table = np.full((len(self.videos), int(column.max()) + 1 if len(column) else 0), -1, np.int64)
            table[group_video, column] = np.arange(len(group_video))
            self._layouts[multiclass] = _Layout(
                order=order,
                x1=x1,
                x2=x2,
                group_start=group_start,
                longest=longest,
                scores=scores,
                group_best=group_best,
                group_arg=group_arg,
                table=table,
                work=np.empty(n, np.float32),
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


# A setting's picks are searched first among each video's this many best-scored rows per pick
# (``max_seg_num``), when that keeps at most a quarter of the set (an early model's ~21k rows per
# video, whose 100 picks lie within its ~160 best): a video whose picks all score at least its
# lowest kept row is done, the others run again with all their rows.
SHORTLIST_PER_PICK = 8

# A set whose groups hold at most this many candidates on average (a trained model's ~15; an
# early model's ~200) fills a setting's working scores in one pass before the first pick: most of
# its groups are picked from, and one streaming pass costs less than a fill per group.
EAGER_FILL_GROUP_SIZE = 64

# Videos that step together: their candidates stay in the CPU's caches from one step to the next
# (all of a FineAction-sized set at once do not), while the per-step calls stay few.
VIDEOS_PER_BLOCK = 128


def _greedy_all(
    layout: _Layout,
    group_best: np.ndarray,
    max_num: int,
    rule: _Suppression,
    floor: tuple[int, np.float32],
    videos: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_greedy_select`` of every video at once: each step picks, in every video that has one
    left, the best candidate of its best group (ties: the lowest class, then the earliest start,
    then the lowest index, as there) and lets it suppress the members of its group it may overlap
    (``subset_nms_kernels``).

    ``group_best`` (G,) is each group's best score (the layout's, or -inf where nothing can be
    picked); ``floor`` (rule, min_score) how a group's working scores are filled at its first
    pick (``kernels.pick_and_weigh``), into ``layout.work``. Returns (video, sorted position,
    score at selection) of the picks of ``videos`` (ascending), grouped by video, in selection order.
    """
    bounds, scores = layout.group_start, layout.work
    if len(scores) == 0 or max_num <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    group_arg = layout.group_arg.copy()
    ready = np.zeros(len(group_arg), bool)  # (G,) whose working scores are filled
    every_video = len(videos) == len(layout.table)  # not a shortlist's few videos run again
    if every_video and len(scores) <= EAGER_FILL_GROUP_SIZE * len(group_arg):  # small groups, most picked from:
        kernels.fill(layout.scores, scores, 0, len(scores), floor[0], floor[1])  # one streaming pass
        scores[group_arg] = layout.scores[group_arg]  # each group's first pick takes its best (Soft-NMS)
        ready[:] = True
    has_group = layout.table >= 0
    columns = 1 << max(layout.table.shape[1] - 1, 0).bit_length()  # W rounded up to a power of 2
    best = np.full((len(layout.table), columns), _REMOVED, np.float32)  # (V, C) each group's best score
    best[:, : layout.table.shape[1]][has_group] = group_best[layout.table[has_group]]
    tree = kernels.column_tree(best)  # (V, 2C) where each video's best group is
    videos = videos[has_group[videos, 0]] if has_group.size else np.zeros(0, np.int64)  # with candidates
    step = np.empty((min(len(videos), VIDEOS_PER_BLOCK), 4), np.int64)  # per alive video: column, group,
    # window start and end
    largest = int(np.diff(bounds).max())  # a window lies in one group: a step writes at most this per video
    weights = np.empty(min(len(scores), len(step) * largest), np.float32)  # the step's IoUs or exponents
    capacity = min(len(scores), len(videos) * max_num)
    picks, pick_scores, picked = np.empty((capacity, 2), np.int64), np.empty(capacity, np.float32), 0
    for block in np.array_split(videos, -(-len(videos) // VIDEOS_PER_BLOCK)):  # videos are independent
        rows, alive = block.copy(), len(block)  # the block's videos with picks left, compacted each step
        for _ in range(max_num):
            alive, written, picked = kernels.pick_and_weigh(
                rows, alive, best, tree, layout.table, group_arg, bounds, layout.longest, rule.windowed, rule.soft,
                rule.sigma, scores, layout.scores, ready, floor[0], floor[1], layout.x1, layout.x2, step, weights,
                picks, pick_scores, picked,
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


def _index_dtype(n: int) -> type:
    """Row indices of ``n`` rows: int32 while they fit (half the memory of int64)."""
    return np.int32 if n < 2**31 else np.int64
