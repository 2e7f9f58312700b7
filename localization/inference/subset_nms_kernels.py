"""The compiled loops of whole-subset NMS (``subset_postprocess``): one greedy step for many videos.

Numba compiles these loops (cached beside this file after the first call). A pick weighs a few
dozen candidates of its video, so the same step written with NumPy array operations over all
videos moved every one of those candidates through some thirty gathers, repeats and cumulative
sums; here each is read once or twice. The float32 operations are those of
``postprocess._greedy_select`` element for element; the one NumPy call left between the two
kernels, Soft-NMS's ``np.exp``, is the reference's own, so the detections stay bit for bit
identical (``tests/test_subset_postprocess.py``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from localization.inference.postprocess import _AREA_EPS, _REMOVED  # compile-time constants here


@njit(cache=True, nogil=True)
def pick_and_weigh(
    rows: np.ndarray,
    best: np.ndarray,
    table: np.ndarray,
    group_arg: np.ndarray,
    group_start: np.ndarray,
    longest: np.ndarray,
    windowed: bool,
    scores: np.ndarray,
    x1: np.ndarray,
    x2: np.ndarray,
    out: np.ndarray,
    iou: np.ndarray,
) -> tuple[int, int]:
    """One step's picks and the IoU of each pick with the members it weighs.

    For every video of ``rows`` (R,) whose best group (first maximum of its ``best`` (V, W) row:
    the lowest class) still has a candidate: the group's best candidate is picked and the members
    it weighs are its window (``windowed``: those starting in [start - the group's longest, end),
    as ``_greedy_select`` searches after a group's first pick) or its whole group, less the pick
    and those already removed (nothing can change them). ``out`` (R, 6) int64 receives per alive
    video: video, column, group, pick, window start, window end; ``iou`` (N,) float32 the weighed
    members' IoUs, window after window. Returns (alive videos, IoUs written). Scores are left as
    they are: the caller reads the picks' scores and removes them before ``suppress_and_rank``,
    which walks the same windows and skips the same members.
    """
    alive, written = 0, 0
    zero = np.float32(0.0)
    for r in range(len(rows)):
        video = rows[r]
        column = 0
        for c in range(1, best.shape[1]):
            if best[video, c] > best[video, column]:
                column = c
        if best[video, column] == _REMOVED:  # a video whose best is gone is done
            continue
        group = table[video, column]
        pick = group_arg[group]
        lo, hi = group_start[group], group_start[group + 1]
        if windowed:
            lo = _first_at_least(x1, lo, hi, np.float32(np.float64(x1[pick]) - longest[group]))
            hi = _first_at_least(x1, lo, hi, x2[pick])
        x1p, x2p = x1[pick], x2[pick]
        area = x2p - x1p + _AREA_EPS
        for i in range(lo, hi):
            if scores[i] != _REMOVED and i != pick:  # no NaN here: max() is np.maximum (-0.0 weighs the same)
                inter = max(min(x2p, x2[i]) - max(x1p, x1[i]), zero)
                iou[written] = inter / (area + (x2[i] - x1[i] + _AREA_EPS) - inter)
                written += 1
        out[alive, 0], out[alive, 1], out[alive, 2] = video, column, group
        out[alive, 3], out[alive, 4], out[alive, 5] = pick, lo, hi
        alive += 1
    return alive, written


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def group_maxima(scores: np.ndarray, group_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each group's best score and its first position (``np.argmax`` of every group's slice)."""
    groups = len(group_start) - 1
    best, arg = np.empty(groups, np.float32), np.empty(groups, np.int64)
    for g in range(groups):
        top = group_start[g]
        for i in range(top + 1, group_start[g + 1]):
            if scores[i] > scores[top]:
                top = i
        best[g], arg[g] = scores[top], top
    return best, arg


@njit(cache=True, nogil=True)
def suppress_and_rank(
    out: np.ndarray,
    alive: int,
    factor: np.ndarray,
    soft: bool,
    limit: np.float32,
    scores: np.ndarray,
    group_start: np.ndarray,
    group_arg: np.ndarray,
    best: np.ndarray,
) -> None:
    """Apply one step's suppression, then find each picked group's new best.

    Soft-NMS (``soft``): every weighed member's score is multiplied by its ``factor`` (the
    Gaussian weight) and dropped below ``limit`` (``min_score``; NaN from -inf * 0 too). Hard NMS:
    a member is removed when its ``factor`` (the IoU) is >= ``limit`` (``iou_threshold``). The
    weighed members are those ``pick_and_weigh`` weighed: the window's members not removed (the
    pick is by now). Then the group's best over all its members (first maximum in layout order, as
    ``np.argmax``) goes into ``group_arg`` and the video's row of ``best``.
    """
    k = 0
    for r in range(alive):
        video, column, group, lo, hi = out[r, 0], out[r, 1], out[r, 2], out[r, 4], out[r, 5]
        a, b = group_start[group], group_start[group + 1]
        top = a
        for i in range(a + 1, lo):  # before the window
            if scores[i] > scores[top]:
                top = i
        for i in range(lo, hi):
            if scores[i] != _REMOVED:
                if soft:
                    s = scores[i] * factor[k]
                    scores[i] = s if s >= limit else _REMOVED
                elif factor[k] >= limit:
                    scores[i] = _REMOVED
                k += 1
            if scores[i] > scores[top]:
                top = i
        for i in range(max(hi, a + 1), b):  # after it
            if scores[i] > scores[top]:
                top = i
        group_arg[group] = top
        best[video, column] = scores[top]
