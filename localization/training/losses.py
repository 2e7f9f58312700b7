"""ActionFormer training losses: sigmoid focal loss on every valid point,
centre-based 1-D DIoU on the positive points, both normalised by an EMA of the positive count.

Losses are computed in float32 whatever the autocast dtype of the model outputs, because the
focal loss sums many tiny terms and bf16 would lose them.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor
from torch.nn import functional as F

from localization.config.schema import ModelConfig

__all__ = ["LossNormalizer", "compute_losses", "ctr_diou_loss_1d", "sigmoid_focal_loss"]


class HeadOutput(Protocol):
    """What :func:`compute_losses` reads from the model output (``ModelOutput`` fits)."""

    cls_logits: list[Tensor]  # per level (B, T_l, K)
    offsets: list[Tensor]  # per level (B, T_l, 2)
    masks: list[Tensor]  # per level (B, T_l) bool


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Summed focal loss (RetinaNet): down-weights easy negatives, which dominate dense points.

    ``targets`` may be soft (label smoothing). ``alpha < 0`` disables the class-balance factor,
    as in the reference.
    """
    logits, targets = logits.float(), targets.float()
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum()


def ctr_diou_loss_1d(pred: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Summed 1-D Distance-IoU loss between segments that share their anchor point.

    ``pred`` and ``target`` are (N, 2) ``(left, right)`` offsets from the same point, both >= 0;
    the squared centre-distance term keeps a gradient when the segments do not overlap.
    """
    pred, target = pred.float(), target.float()
    # The reference asserts non-negative offsets; we raise instead so the check survives `python -O`.
    # `< 0` (not `not >= 0`): NaN offsets pass here and surface as a NaN loss the trainer reports.
    if bool((pred < 0).any()):
        raise ValueError("ctr_diou_loss_1d: predicted offsets must be non-negative")
    if bool((target < 0).any()):
        raise ValueError("ctr_diou_loss_1d: target offsets must be non-negative")
    lp, rp = pred[:, 0], pred[:, 1]  # (N,)
    lg, rg = target[:, 0], target[:, 1]  # (N,)
    intersection = torch.minimum(lp, lg) + torch.minimum(rp, rg)  # (N,)
    union = (lp + rp) + (lg + rg) - intersection  # (N,)
    iou = intersection / union.clamp(min=eps)  # (N,)
    enclosing = torch.maximum(lp, lg) + torch.maximum(rp, rg)  # (N,)
    centre_shift = 0.5 * ((rp - lp) - (rg - lg))  # (N,)
    return (1.0 - iou + torch.square(centre_shift / enclosing.clamp(min=eps))).sum()


class LossNormalizer:
    """EMA of the number of positive points per mini-batch, the divisor of both losses.

    A smoothed count keeps the loss scale stable when a batch happens to have few positives.
    Deviation from the reference: the reference keeps this as a plain attribute that is not saved,
    so a resumed run restarts it from ``init``; we checkpoint it (``state_dict``) so resuming is exact.
    """

    def __init__(self, init: float, momentum: float = 0.9) -> None:
        if not (math.isfinite(init) and init > 0):
            raise ValueError(f"LossNormalizer: init must be a finite number > 0, got {init}")
        if not 0 <= momentum < 1:
            raise ValueError(f"LossNormalizer: momentum must be in [0, 1), got {momentum}")
        self.value = float(init)
        self.momentum = float(momentum)

    def update(self, num_pos: int) -> float:
        """Fold one mini-batch's positive count in (at least 1) and return the new divisor."""
        self.value = self.momentum * self.value + (1 - self.momentum) * max(num_pos, 1)
        return self.value

    def state_dict(self) -> float:
        """The current divisor: a plain float, safe for ``torch.load(weights_only=True)``."""
        return self.value

    def load_state_dict(self, state: float) -> None:
        """Restore the divisor saved by :meth:`state_dict`."""
        value = float(state)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"LossNormalizer: saved value must be a finite number > 0, got {state!r}")
        self.value = value


def compute_losses(
    output: HeadOutput,
    cls_targets: Tensor,
    reg_targets: Tensor,
    normalizer: LossNormalizer,
    cfg: ModelConfig,
) -> dict[str, Tensor]:
    """``cls_loss``, ``reg_loss`` and ``final_loss`` (what is back-propagated) of one mini-batch.

    ``cls_targets`` (B, P, K) and ``reg_targets`` (B, P, 2) come from
    :func:`localization.training.targets.assign_targets` on the points of the same levels. Updates
    ``normalizer`` once (call this once per optimisation step, as the reference does).
    """
    logits = torch.cat(output.cls_logits, dim=1).float()  # (B, P, K)
    offsets = torch.cat(output.offsets, dim=1).float()  # (B, P, 2)
    valid = torch.cat(output.masks, dim=1)  # (B, P) bool
    if cls_targets.shape != logits.shape or reg_targets.shape != offsets.shape:
        raise ValueError(
            f"compute_losses: targets {tuple(cls_targets.shape)} / {tuple(reg_targets.shape)} do not match "
            f"the outputs {tuple(logits.shape)} / {tuple(offsets.shape)}"
        )
    cls_targets = cls_targets.to(logits.device, torch.float32)
    reg_targets = reg_targets.to(offsets.device, torch.float32)

    positive = valid & (cls_targets.sum(dim=-1) > 0)  # (B, P)
    num_pos = int(positive.sum().item())
    norm = normalizer.update(num_pos)

    eps = cfg.label_smoothing
    num_classes = logits.shape[-1]
    smoothed = cls_targets[valid] * (1 - eps) + eps / (num_classes + 1)  # (V, K)
    cls_loss = sigmoid_focal_loss(logits[valid], smoothed) / norm

    pred_pos = offsets[positive]  # (num_pos, 2)
    if num_pos == 0:
        reg_loss = 0 * pred_pos.sum()  # keeps the graph (and the device) without a division
    else:
        reg_loss = ctr_diou_loss_1d(pred_pos, reg_targets[positive]) / norm

    if cfg.loss_weight > 0:
        weight: float | Tensor = cfg.loss_weight
    else:  # auto-balance: regression contributes as much as classification
        weight = cls_loss.detach() / reg_loss.detach().clamp(min=0.01)
    return {"cls_loss": cls_loss, "reg_loss": reg_loss, "final_loss": cls_loss + weight * reg_loss}
