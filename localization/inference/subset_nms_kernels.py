"""The compiled loops of whole-subset NMS (``subset_postprocess``): one greedy step for many videos.

Numba compiles these loops (cached beside this file after the first call). A pick weighs a few
dozen to a few hundred candidates of its video; the same step written with NumPy array
operations over all videos moved every one of them through some thirty gathers, repeats and
cumulative sums. Here the loops over a pick's window vectorise: they have no branch, indices
count from 0 (no wraparound test) and ``error_model="numpy"`` drops Python's test for a division
by zero (NumPy's inf or NaN instead, as the reference gets). A video's best group is the root of
a tournament tree over its groups, so a pick updates log2(groups) nodes instead of rescanning
the row.

The float32 operations are those of ``postprocess._greedy_select`` element for element, and
they apply, as there, to every member of the window, those already removed too (a removed score
is -inf and stays removed). The one NumPy call left between the two kernels, Soft-NMS's
``np.exp``, is the reference's own, so the detections stay bit for bit identical
(``tests/localization/inference/test_subset_postprocess.py``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from localization.inference.postprocess import _AREA_EPS, _REMOVED  # compile-time constants here


@njit(cache=True, nogil=True, error_model="numpy")
def pick_and_weigh(
    rows: np.ndarray,
    count: int,
    best: np.ndarray,
    tree: np.ndarray,
    table: np.ndarray,
    group_arg: np.ndarray,
    group_start: np.ndarray,
    longest: np.ndarray,
    windowed: bool,
    soft: bool,
    sigma: np.float32,
    scores: np.ndarray,
    x1: np.ndarray,
    x2: np.ndarray,
    step: np.ndarray,
    weights: np.ndarray,
    picks: np.ndarray,
    pick_scores: np.ndarray,
    picked: int,
) -> tuple[int, int, int]:
    """One step's picks, and what each does to the members of its window.

    For every video of ``rows[:count]`` whose best group (first maximum of its ``best`` (V, C)
    row: the lowest class; the root of its ``tree``) still has a candidate, the group's best
    candidate is picked: its video and sorted position go to row ``picked`` of ``picks`` (P, 2)
    int64, its score to ``pick_scores`` (P,) float32, and it is removed.
    Its window is the members starting in [start - the group's longest, end) (``windowed``: those
    that may overlap it, as ``_greedy_select`` searches after a group's first pick) or the whole
    group. ``weights`` (N,) float32 receives, window after window, each member's IoU with the pick
    (hard NMS) or -IoU^2 / sigma (Soft-NMS: the exponent of its weight); ``step`` (R, 4) int64 per
    alive video its column, group and window; ``rows`` is compacted to the alive videos.
    Returns (alive videos, weights written, picks recorded).
    """
    alive, written = 0, 0
    zero = np.float32(0.0)
    for r in range(count):
        video = rows[r]
        column = _winner(tree, video, 1)
        if best[video, column] == _REMOVED:  # a video whose best is gone is done
            continue
        group = table[video, column]
        pick = group_arg[group]
        lo, hi = group_start[group], group_start[group + 1]
        if windowed:
            lo = _first_at_least(x1, lo, hi, np.float32(np.float64(x1[pick]) - longest[group]))
            hi = _first_at_least(x1, lo, hi, x2[pick])
        picks[picked, 0], picks[picked, 1], pick_scores[picked] = video, pick, scores[pick]
        picked += 1
        scores[pick] = _REMOVED
        x1p, x2p = x1[pick], x2[pick]
        area = x2p - x1p + _AREA_EPS
        members_x1, members_x2, out = x1[lo:hi], x2[lo:hi], weights[written : written + hi - lo]
        for j in range(hi - lo):  # indices from 0: no wraparound check, so LLVM vectorises it
            inter = max(min(x2p, members_x2[j]) - max(x1p, members_x1[j]), zero)  # no NaN: max() is np.maximum
            iou = inter / (area + (members_x2[j] - members_x1[j] + _AREA_EPS) - inter)
            out[j] = -(iou * iou) / sigma if soft else iou
        written += hi - lo
        rows[alive] = video
        step[alive, 0], step[alive, 1], step[alive, 2], step[alive, 3] = column, group, lo, hi
        alive += 1
    return alive, written, picked


@njit(cache=True, nogil=True, error_model="numpy")
def _first_at_least(values: np.ndarray, a: int, b: int, bound: np.float32) -> int:
    """The first position in [a, b) of ascending ``values`` holding one >= ``bound`` (b if none):
    ``a + np.searchsorted(values[a:b], bound, "left")``."""
    while a < b:
        mid = (a + b) // 2
        if values[mid] < bound:
            a = mid + 1
        else:
            b = mid
    return a


@njit(cache=True, nogil=True, error_model="numpy")
def group_maxima(scores: np.ndarray, group_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each group's best score and its first position (``np.argmax`` of every group's slice)."""
    groups = len(group_start) - 1
    best, arg = np.empty(groups, np.float32), np.empty(groups, np.int64)
    for g in range(groups):
        best[g], arg[g] = _first_maximum(scores, group_start[g], group_start[g + 1])
    return best, arg


@njit(cache=True, nogil=True, error_model="numpy")
def _first_maximum(scores: np.ndarray, a: int, b: int) -> tuple[np.float32, int]:
    """(max, first position of it) of ``scores[a:b]`` (b > a), as ``np.argmax``."""
    top, value = a, scores[a]
    for i in range(a + 1, b):
        if scores[i] > value:
            top, value = i, scores[i]
    return value, top


@njit(cache=True, nogil=True, error_model="numpy")
def suppress_and_rank(
    rows: np.ndarray,
    step: np.ndarray,
    alive: int,
    weights: np.ndarray,
    soft: bool,
    limit: np.float32,
    scores: np.ndarray,
    group_start: np.ndarray,
    group_arg: np.ndarray,
    best: np.ndarray,
    tree: np.ndarray,
) -> None:
    """Apply one step's suppression to every window, then find each picked group's new best.

    Soft-NMS (``soft``): every member's score is multiplied by its weight (``weights``, by now
    the Gaussian exp(-IoU^2 / sigma)) and dropped below ``limit`` (``min_score``; NaN from
    -inf * 0 too). Hard NMS: a member is removed when its weight (the IoU) is >= ``limit``
    (``iou_threshold``). Then the group's best (first maximum in layout order, as ``np.argmax``)
    goes into ``group_arg`` and the video's row of ``best`` and ``tree``.
    """
    k = 0
    for r in range(alive):
        column, group, lo, hi = step[r, 0], step[r, 1], step[r, 2], step[r, 3]
        members, weight = scores[lo:hi], weights[k : k + hi - lo]
        for j in range(hi - lo):
            if soft:
                s = members[j] * weight[j]
                members[j] = s if s >= limit else _REMOVED
            elif weight[j] >= limit:
                members[j] = _REMOVED
        k += hi - lo
        video = rows[r]
        best[video, column], group_arg[group] = _first_maximum(scores, group_start[group], group_start[group + 1])
        node = (tree.shape[1] // 2 + column) // 2  # the column's parent, then up to the root
        while node >= 1:
            tree[video, node] = _match(best, tree, video, 2 * node)
            node //= 2


@njit(cache=True, nogil=True, error_model="numpy")
def column_tree(best: np.ndarray) -> np.ndarray:
    """(V, 2C) int64 a tournament tree over each row of ``best`` (V, C), C a power of 2: node
    n >= 1 of row v holds the first maximum's column among the columns below it (leaves C + c:
    column c; ties go left, to the lower column), so the root (node 1) is ``np.argmax(best[v])``
    and lowering one column's value updates its log2(C) ancestors, not the whole row."""
    videos, columns = best.shape
    tree = np.zeros((videos, 2 * columns), np.int64)
    for v in range(videos):
        for node in range(columns - 1, 0, -1):
            tree[v, node] = _match(best, tree, v, 2 * node)
    return tree


@njit(cache=True, nogil=True, error_model="numpy")
def _match(best: np.ndarray, tree: np.ndarray, video: int, left: int) -> int:
    """The winner of siblings ``left`` and ``left + 1`` of ``video``'s tree (ties: the left)."""
    a, b = _winner(tree, video, left), _winner(tree, video, left + 1)
    return a if best[video, a] >= best[video, b] else b


@njit(cache=True, nogil=True, error_model="numpy")
def _winner(tree: np.ndarray, video: int, node: int) -> int:
    """The column node ``node`` of ``video``'s tree stands for (a leaf is its own column)."""
    columns = tree.shape[1] // 2
    return node - columns if node >= columns else tree[video, node]
