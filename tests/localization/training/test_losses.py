"""Losses against values computed by hand."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from localization.config.schema import ModelConfig
from localization.training.losses import LossNormalizer, compute_losses, ctr_diou_loss_1d, sigmoid_focal_loss

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)


def close(actual: torch.Tensor, expected: float) -> bool:
    return math.isclose(float(torch.as_tensor(actual).detach()), expected, rel_tol=1e-6, abs_tol=1e-7)


# ---------------------------------------------------------------------------------------------
# sigmoid focal loss
# ---------------------------------------------------------------------------------------------


def test_focal_loss_hand_values():
    # x = 0: p = 1/2, CE = ln 2, (1 - p_t)^2 = 1/4; alpha_t = 1/4 (y = 1) or 3/4 (y = 0).
    # x = ln 3: p = 3/4. y = 1: CE = ln(4/3), (1/4)^2, alpha 1/4. y = 0: CE = ln 4, (3/4)^2, alpha 3/4.
    cases = [
        (0.0, 1.0, 0.25 * 0.25 * LN2),
        (0.0, 0.0, 0.75 * 0.25 * LN2),
        (LN3, 1.0, 0.25 * 0.0625 * (LN4 - LN3)),
        (LN3, 0.0, 0.75 * 0.5625 * LN4),
    ]
    for x, y, expected in cases:
        assert close(sigmoid_focal_loss(torch.tensor([x]), torch.tensor([y])), expected), (x, y)
    logits = torch.tensor([[c[0] for c in cases]])
    targets = torch.tensor([[c[1] for c in cases]])
    assert close(sigmoid_focal_loss(logits, targets), sum(c[2] for c in cases))  # summed


def test_focal_loss_alpha_and_gamma():
    x, y = torch.tensor([LN3]), torch.tensor([0.0])
    # gamma 0 and alpha < 0 (disabled): plain binary cross-entropy, -ln(1 - 3/4) = ln 4.
    assert close(sigmoid_focal_loss(x, y, alpha=-1.0, gamma=0.0), LN4)
    # gamma 1, alpha 0.5: 0.5 * (3/4) * ln 4.
    assert close(sigmoid_focal_loss(x, y, alpha=0.5, gamma=1.0), 0.5 * 0.75 * LN4)
    # A soft target y = 1/2 at x = 0: p_t = 1/2, alpha_t = 1/2 with alpha 0.25.
    assert close(sigmoid_focal_loss(torch.tensor([0.0]), torch.tensor([0.5])), 0.5 * 0.25 * LN2)


# ---------------------------------------------------------------------------------------------
# centre-based 1-D DIoU
# ---------------------------------------------------------------------------------------------


def test_diou_identical_segments_is_zero():
    seg = torch.tensor([[2.0, 3.0], [0.5, 7.0]])
    assert close(ctr_diou_loss_1d(seg, seg), 0.0)


def test_diou_disjoint_segments_touching_at_the_point():
    # pred [t, t + 2], target [t - 3, t]: IoU 0, enclosing 5, centre shift 0.5 * (2 - (-3)) = 2.5.
    loss = ctr_diou_loss_1d(torch.tensor([[0.0, 2.0]]), torch.tensor([[3.0, 0.0]]))
    assert close(loss, 1.0 + (2.5 / 5) ** 2)


def test_diou_nested_with_centre_shift():
    # pred [t - 1, t + 1] inside target [t - 2, t + 4]: IoU 2/6, enclosing 6, shift 0.5 * (0 - 2) = -1.
    loss = ctr_diou_loss_1d(torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 4.0]]))
    assert close(loss, 1 - 1 / 3 + 1 / 36)


def test_diou_is_summed_over_rows():
    pred = torch.tensor([[1.0, 1.0], [0.0, 2.0], [5.0, 5.0]])
    target = torch.tensor([[2.0, 4.0], [3.0, 0.0], [5.0, 5.0]])
    assert close(ctr_diou_loss_1d(pred, target), (1 - 1 / 3 + 1 / 36) + 1.25 + 0.0)


def test_diou_rejects_negative_offsets():
    good = torch.tensor([[1.0, 1.0]])
    with pytest.raises(ValueError, match="predicted offsets must be non-negative"):
        ctr_diou_loss_1d(torch.tensor([[-0.1, 1.0]]), good)
    with pytest.raises(ValueError, match="target offsets must be non-negative"):
        ctr_diou_loss_1d(good, torch.tensor([[1.0, -2.0]]))


# ---------------------------------------------------------------------------------------------
# loss normaliser
# ---------------------------------------------------------------------------------------------


def test_normalizer_ema_sequence():
    norm = LossNormalizer(100.0)
    assert math.isclose(norm.update(10), 91.0)
    assert math.isclose(norm.update(0), 0.9 * 91 + 0.1)  # counts below 1 count as 1
    assert math.isclose(norm.update(50), 0.9 * (0.9 * 91 + 0.1) + 5.0)
    assert math.isclose(norm.value, 78.8)


def test_normalizer_state_round_trip_makes_resume_exact(tmp_path):
    norm = LossNormalizer(100.0)
    for n in (10, 3, 40):
        norm.update(n)
    torch.save({"loss_norm": norm.state_dict()}, tmp_path / "ckpt.pt")
    resumed = LossNormalizer(100.0)
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["loss_norm"])
    assert resumed.update(7) == norm.update(7)


def test_normalizer_rejects_bad_values():
    with pytest.raises(ValueError, match="init"):
        LossNormalizer(0.0)
    with pytest.raises(ValueError, match="momentum"):
        LossNormalizer(1.0, momentum=1.0)
    with pytest.raises(ValueError, match="saved value"):
        LossNormalizer(1.0).load_state_dict(float("nan"))


# ---------------------------------------------------------------------------------------------
# compute_losses
# ---------------------------------------------------------------------------------------------


def two_level_batch(logit_dtype=torch.float32):
    """B = 1, K = 1, levels of 2 and 1 points; the level-1 point is padding (mask False).

    Point 0: positive, logit 0, offsets pred (1, 1) vs target (2, 4): DIoU 25/36.
    Point 1: negative, logit 0.  Point 2: padded, with a huge logit that must not count.
    """
    output = SimpleNamespace(
        cls_logits=[torch.zeros(1, 2, 1, dtype=logit_dtype), torch.full((1, 1, 1), 9.0, dtype=logit_dtype)],
        offsets=[
            torch.tensor([[[1.0, 1.0], [3.0, 3.0]]], dtype=logit_dtype),
            torch.tensor([[[0.0, 9.0]]], dtype=logit_dtype),
        ],
        masks=[torch.tensor([[True, True]]), torch.tensor([[False]])],
    )
    cls_targets = torch.tensor([[[1.0], [0.0], [1.0]]])  # (B, P, K)
    reg_targets = torch.tensor([[[2.0, 4.0], [0.0, 0.0], [1.0, 1.0]]])  # (B, P, 2)
    return output, cls_targets, reg_targets


def model_cfg(**changes) -> ModelConfig:
    return dataclasses.replace(ModelConfig(), **changes)


def test_compute_losses_hand_values():
    output, cls_t, reg_t = two_level_batch()
    norm = LossNormalizer(10.0)
    losses = compute_losses(output, cls_t, reg_t, norm, model_cfg(loss_weight=2.0))
    assert math.isclose(norm.value, 9.1)  # one positive among the valid points
    cls = (0.25 * 0.25 * LN2 + 0.75 * 0.25 * LN2) / 9.1
    reg = (1 - 1 / 3 + 1 / 36) / 9.1
    assert close(losses["cls_loss"], cls)
    assert close(losses["reg_loss"], reg)
    assert close(losses["final_loss"], cls + 2.0 * reg)
    assert set(losses) == {"cls_loss", "reg_loss", "final_loss"}


def test_label_smoothing_softens_targets_over_k_plus_1():
    output, cls_t, reg_t = two_level_batch()
    output.cls_logits[0] = torch.tensor([[[LN3], [LN3]]])  # p = 3/4 at both valid points
    eps = 0.2
    losses = compute_losses(output, cls_t, reg_t, LossNormalizer(10.0), model_cfg(label_smoothing=eps))

    # K = 1: positive target 1 * 0.8 + 0.2 / 2 = 0.9, negative target 0.1.
    def focal(x: float, y: float) -> float:
        p = 1 / (1 + math.exp(-x))
        ce = -(y * math.log(p) + (1 - y) * math.log(1 - p))
        p_t = p * y + (1 - p) * (1 - y)
        return (0.25 * y + 0.75 * (1 - y)) * (1 - p_t) ** 2 * ce

    assert close(losses["cls_loss"], (focal(LN3, 0.9) + focal(LN3, 0.1)) / 9.1)
    plain = compute_losses(output, cls_t, reg_t, LossNormalizer(10.0), model_cfg())
    assert close(plain["cls_loss"], (focal(LN3, 1.0) + focal(LN3, 0.0)) / 9.1)
    assert close(losses["reg_loss"], float(plain["reg_loss"]))  # smoothing leaves regression alone


def test_loss_weight_zero_balances_regression_to_classification():
    output, cls_t, reg_t = two_level_batch()
    output.cls_logits = [t.clone().requires_grad_() for t in output.cls_logits]
    output.offsets = [t.clone().requires_grad_() for t in output.offsets]
    losses = compute_losses(output, cls_t, reg_t, LossNormalizer(10.0), model_cfg(loss_weight=0.0))
    assert close(losses["final_loss"], 2 * float(losses["cls_loss"].detach()))
    losses["final_loss"].backward()
    # The weight cls / reg is detached: classification gradients are those of cls_loss alone.
    logit_grad = output.cls_logits[0].grad.clone()
    for t in output.cls_logits:
        t.grad = None
    compute_losses(output, cls_t, reg_t, LossNormalizer(10.0), model_cfg())["cls_loss"].backward()
    assert torch.allclose(logit_grad, output.cls_logits[0].grad)


def test_loss_weight_zero_floors_the_regression_loss_at_0_01():
    output, cls_t, reg_t = two_level_batch()
    norm = LossNormalizer(1e4)  # a large divisor makes reg_loss (25/36) / 9000.1 fall below 0.01
    losses = compute_losses(output, cls_t, reg_t, norm, model_cfg(loss_weight=-1.0))
    reg = (1 - 1 / 3 + 1 / 36) / 9000.1
    assert close(losses["reg_loss"], reg)
    cls = float(losses["cls_loss"].detach())
    assert close(losses["final_loss"], cls + cls / 0.01 * reg)


def test_no_positive_points_gives_zero_regression_with_a_graph():
    output, cls_t, reg_t = two_level_batch()
    output.offsets = [t.clone().requires_grad_() for t in output.offsets]
    cls_t = torch.zeros_like(cls_t)
    norm = LossNormalizer(10.0)
    losses = compute_losses(output, cls_t, reg_t, norm, model_cfg())
    assert math.isclose(norm.value, 9.1)  # max(0, 1) = 1
    assert float(losses["reg_loss"].detach()) == 0.0 and losses["reg_loss"].requires_grad
    assert close(losses["cls_loss"], 2 * 0.75 * 0.25 * LN2 / 9.1)


def test_bf16_outputs_give_float32_losses():
    output, cls_t, reg_t = two_level_batch(torch.bfloat16)
    losses = compute_losses(output, cls_t, reg_t, LossNormalizer(10.0), model_cfg(loss_weight=2.0))
    assert all(v.dtype == torch.float32 for v in losses.values())
    assert close(losses["reg_loss"], (1 - 1 / 3 + 1 / 36) / 9.1)  # offsets 1, 2, 4 are exact in bf16


def test_target_shape_mismatch_is_an_error():
    output, cls_t, reg_t = two_level_batch()
    with pytest.raises(ValueError, match="do not match"):
        compute_losses(output, cls_t[:, :2], reg_t, LossNormalizer(10.0), model_cfg())
