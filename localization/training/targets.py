"""Training targets: which pyramid point is responsible for which ground-truth action.

This is the ActionFormer rule (``label_points_single_video``). Each point
``(t, lo, hi, stride)`` may claim a ground truth ``(a, b)`` when it sits strictly inside the
centre-sampling interval of that action and the action's farthest boundary lies in the level's
regression range; of the claimable actions the shortest wins (easiest to regress). Everything is
in level-0 feature-grid units; only the regression target is rescaled by the level stride, because
the regression head predicts offsets in units of its own stride.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["assign_targets"]

# Actions whose durations are within this of the shortest one all label the point (multi-hot):
# the reference's tolerance for co-occurring classes such as THUMOS CliffDiving inside Diving.
DURATION_TIE_TOLERANCE = 1e-3


@torch.no_grad()
def assign_targets(
    points: Tensor,
    gt_segments: list[Tensor],
    gt_labels: list[Tensor],
    num_classes: int,
    center_sample: str,
    radius: float,
) -> tuple[Tensor, Tensor]:
    """Classification and regression targets of every point for every video of a batch.

    Args:
        points: (P, 4) rows ``[t, lo, hi, stride]`` over all levels, shared by the batch.
        gt_segments: per video a (N_b, 2) tensor of ``[start, end]`` in grid units.
        gt_labels: per video a (N_b,) int64 tensor of label ids in ``[0, num_classes)``.
        num_classes: K.
        center_sample: ``"radius"`` (centre sampling) or ``"none"`` (anywhere strictly inside).
        radius: centre-sampling radius in units of the point's stride.

    Returns:
        cls_targets (B, P, K) float multi-hot (all zeros = background) and reg_targets (B, P, 2)
        float ``(left, right)`` distances of the assigned action divided by the stride.
    """
    if points.dim() != 2 or points.shape[1] != 4:
        raise ValueError(f"assign_targets: points must be (P, 4), got {tuple(points.shape)}")
    if len(gt_segments) != len(gt_labels):
        raise ValueError(f"assign_targets: {len(gt_segments)} segment tensors but {len(gt_labels)} label tensors")
    if center_sample not in ("radius", "none"):
        raise ValueError(f"assign_targets: center_sample must be 'radius' or 'none', got {center_sample!r}")
    cls_targets, reg_targets = [], []
    for segments, labels in zip(gt_segments, gt_labels, strict=True):
        cls, reg = _assign_single_video(points, segments, labels, num_classes, center_sample, radius)
        cls_targets.append(cls)
        reg_targets.append(reg)
    if not cls_targets:  # an empty batch still has well-formed shapes
        return points.new_zeros((0, points.shape[0], num_classes)), points.new_zeros((0, points.shape[0], 2))
    return torch.stack(cls_targets), torch.stack(reg_targets)  # (B, P, K), (B, P, 2)


def _assign_single_video(
    points: Tensor, segments: Tensor, labels: Tensor, num_classes: int, center_sample: str, radius: float
) -> tuple[Tensor, Tensor]:
    """Targets of one video, vectorised over points x ground truths."""
    num_pts = points.shape[0]
    segments = segments.to(device=points.device, dtype=points.dtype).reshape(-1, 2)  # (N, 2)
    labels = labels.to(device=points.device, dtype=torch.long).reshape(-1)  # (N,)
    if segments.shape[0] != labels.shape[0]:
        raise ValueError(f"assign_targets: {segments.shape[0]} segments but {labels.shape[0]} labels")
    if segments.shape[0] == 0:
        return points.new_zeros((num_pts, num_classes)), points.new_zeros((num_pts, 2))

    t, lo, hi, stride = (points[:, i, None] for i in range(4))  # each (P, 1)
    start, end = segments[None, :, 0], segments[None, :, 1]  # each (1, N)
    left, right = t - start, end - t  # (P, N): distances to the action's boundaries

    if center_sample == "radius":
        mid = 0.5 * (start + end)  # (1, N)
        inner_start = torch.maximum(mid - radius * stride, start)  # (P, N)
        inner_end = torch.minimum(mid + radius * stride, end)  # (P, N)
        inside = torch.minimum(t - inner_start, inner_end - t) > 0  # (P, N), strictly inside
    else:
        inside = torch.minimum(left, right) > 0  # (P, N)
    farthest = torch.maximum(left, right)  # (P, N)
    in_range = (farthest >= lo) & (farthest <= hi)  # (P, N), both ends inclusive
    claimable = inside & in_range  # (P, N)

    durations = (end - start).expand(num_pts, -1)  # (P, N)
    durations = durations.masked_fill(~claimable, float("inf"))
    min_duration, chosen = durations.min(dim=1)  # (P,), (P,): shortest claimable action
    ties = claimable & (durations <= min_duration[:, None] + DURATION_TIE_TOLERANCE)  # (P, N)

    one_hot = F.one_hot(labels, num_classes).to(points.dtype)  # (N, K)
    cls_targets = (ties.to(points.dtype) @ one_hot).clamp_(0.0, 1.0)  # (P, K), duplicates stay 1

    rows = torch.arange(num_pts, device=points.device)
    reg_targets = torch.stack((left[rows, chosen], right[rows, chosen]), dim=-1) / stride  # (P, 2)
    # Deviation from the reference: points that claim no action get zero regression targets; the
    # reference leaves the first action's (possibly negative) distances there. The losses never
    # read them (regression is on positives only), so training is unchanged.
    positive = claimable.any(dim=1, keepdim=True)  # (P, 1)
    reg_targets = torch.where(positive, reg_targets, torch.zeros_like(reg_targets))
    return cls_targets, reg_targets
