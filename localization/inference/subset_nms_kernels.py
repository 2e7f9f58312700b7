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
    raw: np.ndarray,
    ready: np.ndarray,
    floor_rule: int,
    floor: np.float32,
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
    ``scores`` (N,) float32 is the working copy of the ``raw`` scores (N,), filled a group at a
    time at the group's first pick (``ready`` (G,) bool says which are), so a setting touches only
    the groups it picks from: below ``floor`` a member is removed (``floor_rule`` 1, Soft-NMS:
    kept when >= floor, except the group's best, which that first pick takes; 2, hard NMS: kept
    when > floor; 0: none).
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
        if not ready[group]:
            fill(raw, scores, lo, hi, floor_rule, floor)
            scores[pick] = raw[pick]
            ready[group] = True
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
def fill(raw: np.ndarray, scores: np.ndarray, a: int, b: int, floor_rule: int, floor: np.float32) -> None:
    """``scores[a:b]`` = ``raw[a:b]``, those below ``floor`` removed (``pick_and_weigh``'s rules)."""
    if floor_rule == 1:
        for i in range(a, b):
            scores[i] = raw[i] if raw[i] >= floor else _REMOVED
    elif floor_rule == 2:
        for i in range(a, b):
            scores[i] = raw[i] if raw[i] > floor else _REMOVED
    else:
        scores[a:b] = raw[a:b]


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


_SHORT = 64  # _first_maximum: ranges up to this long are scanned once


@njit(cache=True, nogil=True, error_model="numpy")
def _first_maximum(scores: np.ndarray, a: int, b: int) -> tuple[np.float32, int]:
    """(max, first position of it) of ``scores[a:b]`` (b > a), as ``np.argmax``.

    A long range's maximum is taken over the float32 bits as integers that order as the floats do
    (-0.0 as 0.0; a NaN above everything, as ``np.argmax`` has it): that loop vectorises, where a
    running float argmax does not (a group is rescanned after every pick from it). A short one
    (a trained model's groups) is scanned once."""
    if b - a <= _SHORT:
        top, value = a, scores[a]
        for i in range(a + 1, b):
            if scores[i] > value:
                top, value = i, scores[i]
        return value, top
    bits = scores[a:b].view(np.int32)
    top = _ordered(bits[0])
    for i in range(1, b - a):
        top = max(top, _ordered(bits[i]))
    for i in range(b - a):
        if _ordered(bits[i]) == top:
            return scores[a + i], a + i
    return scores[a], a  # not reached


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _ordered(bits: np.int32) -> np.int32:
    """float32 bits -> an int32 that orders as the float (negative floats' bits reversed; -0.0 -> 0)."""
    sign = bits >> np.int32(31)  # -1 for negative floats, else 0
    return (bits ^ (sign & np.int32(0x7FFFFFFF))) - sign


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


# ---- the layout: sorting and grouping, once per candidate set ----------------------------------

_DIGIT_BITS = 11  # radix digits: 2,048 buckets, few against a dense video's ~21k candidates


@njit(cache=True, nogil=True, error_model="numpy")
def order_within_videos(offsets: np.ndarray, bits: np.ndarray, descending: bool, order: np.ndarray) -> None:
    """Each video's rows ``offsets[v]:offsets[v+1]`` ordered by value, then index, into ``order``
    (N,): ``bits`` (N,) are float32 values' bits (``view(np.uint32)``; -0.0 sorts as 0.0, as float
    comparison has it), ascending or ``descending``."""
    keys, rows, spare_keys, spare_rows, buckets = _sort_buffers(offsets)
    for v in range(len(offsets) - 1):
        a, n = offsets[v], offsets[v + 1] - offsets[v]
        for i in range(n):
            keys[i], rows[i] = np.uint64(_sortable(bits[a + i], descending)), a + i
        spare = _radix_sort(keys, rows, spare_keys, spare_rows, buckets, n, 32)
        order[a : a + n] = spare_rows[:n] if spare else rows[:n]


@njit(cache=True, nogil=True, error_model="numpy")
def layout_within_videos(
    offsets: np.ndarray,
    group: np.ndarray,
    group_bits: int,
    segments: np.ndarray,
    scores: np.ndarray,
    capacity: int,
    order: np.ndarray,
    x1: np.ndarray,
    x2: np.ndarray,
    ordered_scores: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The layout every greedy step indexes, video by video while the video is in the caches.

    Each video's rows are ordered by (group, start, index) into ``order`` (N,) (``group`` (N,)
    non-negative ids below 2**group_bits; group_bits 0: one group per video, ``group`` unread;
    starts -0.0 as 0.0), and their starts, ends and scores gathered in that order into ``x1``,
    ``x2`` and ``ordered_scores`` (N,) float32. Returns the groups (runs of one video and group,
    at most ``capacity``): start position (G + 1,), video (G,), longest segment (G,) float64
    (exact), best score (G,) and its first position (G,).
    """
    keys, rows, spare_keys, spare_rows, buckets = _sort_buffers(offsets)
    starts, videos = np.empty(capacity + 1, np.int64), np.empty(capacity, np.int64)
    bits = segments.view(np.uint32)  # (N, 2) the float32 bits
    groups = 0
    for v in range(len(offsets) - 1):
        a, n = offsets[v], offsets[v + 1] - offsets[v]
        for i in range(n):
            key = np.uint64(_sortable(bits[a + i, 0], False))
            if group_bits:
                key |= np.uint64(group[a + i]) << np.uint64(32)
            keys[i], rows[i] = key, a + i
        spare = _radix_sort(keys, rows, spare_keys, spare_rows, buckets, n, 32 + group_bits)
        sorted_keys, sorted_rows = (spare_keys, spare_rows) if spare else (keys, rows)
        for i in range(n):
            p, row = a + i, sorted_rows[i]
            order[p] = row
            x1[p], x2[p], ordered_scores[p] = segments[row, 0], segments[row, 1], scores[row]
            if i == 0 or sorted_keys[i] >> np.uint64(32) != sorted_keys[i - 1] >> np.uint64(32):
                starts[groups], videos[groups] = p, v
                groups += 1
    starts[groups] = len(order)
    longest, best, arg = np.empty(groups, np.float64), np.empty(groups, np.float32), np.empty(groups, np.int64)
    for g in range(groups):
        a, b = starts[g], starts[g + 1]
        top = np.float64(x2[a]) - np.float64(x1[a])
        for p in range(a + 1, b):
            top = max(top, np.float64(x2[p]) - np.float64(x1[p]))
        longest[g] = top
        best[g], arg[g] = _first_maximum(ordered_scores, a, b)
    return starts[: groups + 1].copy(), videos[:groups].copy(), longest, best, arg


@njit(cache=True, nogil=True, error_model="numpy")
def best_of_videos(offsets: np.ndarray, scores: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each video's ``size`` best-scored rows (of ``offsets[v]:offsets[v+1]``, ``scores`` (N,)
    float32; -0.0 as 0.0), with every row tied with the last of them, in row order: (rows (K,),
    each video's start in them (V + 1,), the lowest score kept (V,) float32: -inf where the video
    has ``size`` rows or fewer, all kept)."""
    videos, bits = len(offsets) - 1, scores.view(np.uint32)
    most = 0
    for v in range(videos):
        most = max(most, offsets[v + 1] - offsets[v])
    keys, cut = np.empty(most, np.uint32), np.zeros(videos, np.uint32)  # cut: the lowest key kept
    total = 0
    for v in range(videos):
        a, n = offsets[v], offsets[v + 1] - offsets[v]
        if n > size:
            for i in range(n):
                keys[i] = _sortable(bits[a + i], False)
            cut[v] = np.partition(keys[:n], n - size)[n - size]
            for i in range(n):
                total += keys[i] >= cut[v]
        else:
            total += n
    rows, starts = np.empty(total, np.int64), np.empty(videos + 1, np.int64)
    lowest = np.full(videos, -np.inf, np.float32)
    k = 0
    for v in range(videos):
        starts[v] = k
        for i in range(offsets[v], offsets[v + 1]):
            key = _sortable(bits[i], False)
            if key >= cut[v]:
                rows[k] = i
                k += 1
                if key == cut[v] and offsets[v + 1] - offsets[v] > size:
                    lowest[v] = scores[i]
    starts[videos] = k
    return rows, starts, lowest


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _sortable(bits: np.uint32, descending: bool) -> np.uint32:
    """float32 bits -> a uint32 that orders as the float (-0.0 as 0.0; no NaN), or reversed."""
    u = np.uint32(bits)
    sign = np.uint32(0x80000000)
    if u == sign:  # -0.0
        u = np.uint32(0)
    u = ~u if u & sign else u | sign  # negative floats: reversed bits
    return ~u if descending else u


@njit(cache=True, nogil=True, error_model="numpy")
def _sort_buffers(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(keys, rows, spare keys, spare rows, buckets) for ``_radix_sort``, sized for the largest video."""
    most = 0
    for v in range(len(offsets) - 1):
        most = max(most, offsets[v + 1] - offsets[v])
    return (
        np.empty(most, np.uint64),
        np.empty(most, np.int64),
        np.empty(most, np.uint64),
        np.empty(most, np.int64),
        np.empty(1 << _DIGIT_BITS, np.int64),
    )


@njit(cache=True, nogil=True, error_model="numpy")
def _radix_sort(
    keys: np.ndarray,
    rows: np.ndarray,
    spare_keys: np.ndarray,
    spare_rows: np.ndarray,
    buckets: np.ndarray,
    n: int,
    key_bits: int,
) -> bool:
    """Sort ``keys[:n]`` (their ``key_bits`` low bits) and ``rows[:n]`` with them: a least-
    significant-digit radix sort, stable (equal keys keep the order they were written in), one
    video at a time so its few passes stay in the CPU's caches. Returns whether the result is
    in the spare buffers (the passes alternate between the two)."""
    mask, spare = np.uint64((1 << _DIGIT_BITS) - 1), False
    for shift in range(0, key_bits, _DIGIT_BITS):
        source_keys, source_rows = (spare_keys, spare_rows) if spare else (keys, rows)
        target_keys, target_rows = (keys, rows) if spare else (spare_keys, spare_rows)
        buckets[:] = 0
        for i in range(n):
            buckets[(source_keys[i] >> np.uint64(shift)) & mask] += 1
        if n == 0 or buckets[(source_keys[0] >> np.uint64(shift)) & mask] == n:
            continue  # one digit value throughout: the pass changes nothing
        total = 0
        for d in range(len(buckets)):
            buckets[d], total = total, total + buckets[d]
        for i in range(n):
            d = (source_keys[i] >> np.uint64(shift)) & mask
            target_keys[buckets[d]], target_rows[buckets[d]] = source_keys[i], source_rows[i]
            buckets[d] += 1
        spare = not spare
    return spare
