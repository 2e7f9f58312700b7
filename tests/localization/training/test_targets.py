"""Target assignment on hand-made points and ground truths."""

from __future__ import annotations

import random

import pytest
import torch

from localization.training.targets import assign_targets

WIDE = [0.0, 1e4]  # a regression range that never filters


def make_points(lengths: list[int], strides: list[int], ranges: list[list[float]]) -> torch.Tensor:
    """(sum T_l, 4) rows [t, lo, hi, stride] with t = 0, s, 2s, ... (written here, not imported)."""
    rows = [
        [float(i * s), float(lo), float(hi), float(s)]
        for n, s, (lo, hi) in zip(lengths, strides, ranges, strict=True)
        for i in range(n)
    ]
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def assign_one(points, segments, labels, num_classes=1, center_sample="radius", radius=1.5):
    cls, reg = assign_targets(
        points,
        [torch.tensor(segments, dtype=torch.float32).reshape(-1, 2)],
        [torch.tensor(labels, dtype=torch.long)],
        num_classes,
        center_sample,
        radius,
    )
    return cls[0], reg[0]


def positives(points, cls):
    """{(stride, t)} of the points with any class."""
    idx = cls.sum(-1).nonzero().flatten().tolist()
    return {(int(points[i, 3]), float(points[i, 0])) for i in idx}


def test_centre_sampling_positive_set_at_strides_1_and_2():
    points = make_points([16, 8], [1, 2], [WIDE, WIDE])
    cls, reg = assign_one(points, [[2.0, 9.0]], [0])
    # mid 5.5, r 1.5: stride 1 -> (4, 7) strict -> t 5, 6; stride 2 -> (2.5, 8.5) -> t 4, 6, 8.
    assert positives(points, cls) == {(1, 5.0), (1, 6.0), (2, 4.0), (2, 6.0), (2, 8.0)}
    expected = {
        (1, 5.0): (3, 4),
        (1, 6.0): (4, 3),  # stride 1: (t - 2, 9 - t)
        (2, 4.0): (1, 2.5),
        (2, 6.0): (2, 1.5),
        (2, 8.0): (3, 0.5),
    }  # stride 2: halved
    for i in range(points.shape[0]):
        key = (int(points[i, 3]), float(points[i, 0]))
        assert reg[i].tolist() == list(expected.get(key, (0.0, 0.0)))


def test_without_centre_sampling_every_point_strictly_inside_is_positive():
    points = make_points([16, 8], [1, 2], [WIDE, WIDE])
    cls, _ = assign_one(points, [[2.0, 9.0]], [0], center_sample="none")
    assert positives(points, cls) == {(1, float(t)) for t in range(3, 9)} | {(2, 4.0), (2, 6.0), (2, 8.0)}


def test_regression_range_assigns_long_action_only_to_coarse_level():
    points = make_points([32, 16, 8], [1, 2, 4], [[0, 4], [4, 8], [8, 10000]])
    cls, reg = assign_one(points, [[0.0, 30.0]], [0])
    # Only stride 4 has farthest distances (18, 16, 20) inside its range; finer levels are > hi.
    assert positives(points, cls) == {(4, 12.0), (4, 16.0), (4, 20.0)}
    i = int(((points[:, 3] == 4) & (points[:, 0] == 12)).nonzero())
    assert reg[i].tolist() == [3.0, 4.5]  # (12, 18) / 4


def test_regression_range_bounds_are_inclusive():
    points = make_points([32, 16, 8], [1, 2, 4], [[0, 4], [4, 8], [8, 10000]])
    cls, reg = assign_one(points, [[0.0, 8.0]], [0])
    # t = 4 has farthest distance 4: equal to stride 1's hi and to stride 2's lo, so both keep it.
    # Stride 1 also sees t = 3 and 5 inside (2.5, 5.5), but their farthest distance 5 exceeds 4.
    assert positives(points, cls) == {(1, 4.0), (2, 2.0), (2, 4.0), (2, 6.0)}
    i = int(((points[:, 3] == 2) & (points[:, 0] == 2)).nonzero())
    assert reg[i].tolist() == [1.0, 3.0]  # (2, 6) / 2


def test_shortest_action_wins_where_two_overlap():
    points = make_points([12], [1], [WIDE])
    cls, reg = assign_one(points, [[0.0, 10.0], [3.0, 6.0]], [0, 1], num_classes=2, center_sample="none")
    for t in range(12):
        if t in (4, 5):
            assert cls[t].tolist() == [0.0, 1.0]
            assert reg[t].tolist() == [t - 3.0, 6.0 - t]
        elif 1 <= t <= 9:
            assert cls[t].tolist() == [1.0, 0.0]
            assert reg[t].tolist() == [float(t), 10.0 - t]
        else:
            assert cls[t].tolist() == [0.0, 0.0]
            assert reg[t].tolist() == [0.0, 0.0]


def test_identical_segments_with_different_labels_give_multi_hot():
    points = make_points([12], [1], [WIDE])
    cls, reg = assign_one(points, [[2.0, 8.0], [2.0, 8.0], [2.0, 8.0]], [0, 2, 2], num_classes=3, center_sample="none")
    for t in range(3, 8):
        assert cls[t].tolist() == [1.0, 0.0, 1.0]  # the duplicate label 2 is clamped to 1
        assert reg[t].tolist() == [t - 2.0, 8.0 - t]
    assert cls[2].sum() == 0 and cls[8].sum() == 0


def test_duration_tie_tolerance_is_1e_3():
    points = make_points([12], [1], [WIDE])
    near, _ = assign_one(points, [[2.0, 8.0], [2.0, 8.0005]], [0, 1], num_classes=2, center_sample="none")
    far, _ = assign_one(points, [[2.0, 8.0], [2.0, 8.01]], [0, 1], num_classes=2, center_sample="none")
    assert near[5].tolist() == [1.0, 1.0]
    assert far[5].tolist() == [1.0, 0.0]


def test_regression_targets_are_divided_by_the_stride():
    points = make_points([8], [4], [WIDE])
    cls, reg = assign_one(points, [[0.0, 16.0]], [0], radius=100.0)
    assert positives(points, cls) == {(4, 4.0), (4, 8.0), (4, 12.0)}
    assert reg[1].tolist() == [1.0, 3.0]
    assert reg[2].tolist() == [2.0, 2.0]
    assert reg[3].tolist() == [3.0, 1.0]


def test_video_without_ground_truth_gets_zero_targets():
    points = make_points([16, 8], [1, 2], [WIDE, WIDE])
    segments = [torch.tensor([[2.0, 9.0]]), torch.zeros((0, 2))]
    labels = [torch.tensor([1]), torch.zeros((0,), dtype=torch.long)]
    cls, reg = assign_targets(points, segments, labels, 3, "radius", 1.5)
    assert cls.shape == (2, 24, 3) and reg.shape == (2, 24, 2)
    assert cls.dtype == torch.float32 and reg.dtype == torch.float32
    assert cls[1].abs().sum() == 0 and reg[1].abs().sum() == 0
    alone_cls, alone_reg = assign_one(points, [[2.0, 9.0]], [1], num_classes=3)
    assert torch.equal(cls[0], alone_cls) and torch.equal(reg[0], alone_reg)
    assert cls[0, :, 1].sum() == 5


def test_bad_arguments_raise_value_error():
    points = make_points([4], [1], [WIDE])
    with pytest.raises(ValueError, match="center_sample"):
        assign_targets(points, [torch.zeros((0, 2))], [torch.zeros((0,), dtype=torch.long)], 1, "centre", 1.5)
    with pytest.raises(ValueError, match="2 segments but 1 labels"):
        assign_targets(points, [torch.zeros((2, 2))], [torch.zeros((1,), dtype=torch.long)], 1, "none", 1.5)
    with pytest.raises(ValueError, match=r"\(P, 4\)"):
        assign_targets(points[:, :3], [], [], 1, "none", 1.5)


def naive_assign(points, segments, labels, num_classes, center_sample, radius):
    """Point-by-point, action-by-action transcription of ActionFormer's label assignment in plain Python."""
    cls = torch.zeros(points.shape[0], num_classes)
    reg = torch.zeros(points.shape[0], 2)
    for p, (t, lo, hi, s) in enumerate(points.tolist()):
        passing = []
        for g, (a, b) in enumerate(segments):
            left, right = t - a, b - t
            if center_sample == "radius":
                mid = (a + b) / 2
                inside = t - max(mid - radius * s, a) > 0 and min(mid + radius * s, b) - t > 0
            else:
                inside = left > 0 and right > 0
            if inside and lo <= max(left, right) <= hi:
                passing.append(g)
        if not passing:
            continue
        shortest = min(segments[g][1] - segments[g][0] for g in passing)
        first = next(g for g in passing if segments[g][1] - segments[g][0] == shortest)
        for g in passing:
            if segments[g][1] - segments[g][0] <= shortest + 1e-3:
                cls[p, labels[g]] = 1.0
        reg[p] = torch.tensor([t - segments[first][0], segments[first][1] - t]) / s
    return cls, reg


@pytest.mark.parametrize("center_sample", ["radius", "none"])
def test_matches_a_naive_transcription_on_random_videos(center_sample):
    rng = random.Random(7)
    points = make_points([64, 32, 16, 8], [1, 2, 4, 8], [[0, 4], [4, 8], [8, 16], [16, 10000]])
    for _ in range(20):
        n = rng.randint(1, 6)
        segments = []
        for _ in range(n):
            start = rng.choice([rng.uniform(-3, 60), float(rng.randint(0, 60))])  # floats and grid ties
            segments.append([start, start + rng.choice([rng.uniform(0.5, 40), float(rng.randint(1, 20))])])
        if rng.random() < 0.3:
            segments.append(list(segments[0]))  # an exact duplicate interval
        labels = [rng.randrange(5) for _ in segments]
        segs = torch.tensor(segments, dtype=torch.float32)
        cls, reg = assign_one(points, segs.tolist(), labels, 5, center_sample, 1.5)
        ref_cls, ref_reg = naive_assign(points, segs.tolist(), labels, 5, center_sample, 1.5)
        assert torch.equal(cls, ref_cls)
        assert torch.allclose(reg, ref_reg, atol=1e-5)
