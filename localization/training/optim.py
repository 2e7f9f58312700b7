"""The optimiser side of training, as the reference trainer sets it up: AdamW
parameter groups (minGPT style, reference train_utils.make_optimizer), the learning-rate
schedule and the weight EMA."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from localization.model.blocks import AffineDropPath, LayerNorm, Scale

_DECAY_MODULES = (nn.Linear, nn.Conv1d)  # MaskedConv1D holds its weight in a child nn.Conv1d
_NO_DECAY_MODULES = (LayerNorm, Scale, AffineDropPath)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """[{decayed params, weight_decay}, {the rest, 0.0}] for torch.optim.AdamW.

    Decay: the weights of Linear / Conv1d (so of every MaskedConv1D). No decay: all biases,
    LayerNorm weights, the ``scale`` of Scale and AffineDropPath (the reference also exempts
    ``rel_pe``, which we do not implement). The absolute position table is a buffer and never
    reaches the optimizer. A parameter that fits no rule is a bug: it raises.
    """
    decay, no_decay = [], []
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if name == "weight" and isinstance(module, _DECAY_MODULES):
                decay.append(param)
            elif name == "bias" or isinstance(module, _NO_DECAY_MODULES):
                no_decay.append(param)
            else:
                raise ValueError(f"param_groups: no weight-decay rule for {module_name}.{name}")
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int, eta_min: float) -> float:
    """Learning rate at optimizer step ``step`` (0-based), stepped every iteration.

    Linear warm-up from 0 reaching ``base_lr`` at step ``warmup_steps - 1`` (the reference's
    LinearWarmupCosineAnnealingLR), then cosine decay from ``base_lr`` to ``eta_min`` over the
    remaining steps.
    """
    if step < warmup_steps:
        return base_lr * step / max(warmup_steps - 1, 1)
    span = max(total_steps - warmup_steps, 1)
    progress = min(step - warmup_steps, span) / span
    return eta_min + 0.5 * (base_lr - eta_min) * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, eta_min: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying :func:`warmup_cosine_lr` to every parameter group (all share one lr)."""
    base_lr = optimizer.param_groups[0]["lr"]

    def factor(step: int) -> float:
        return warmup_cosine_lr(step, base_lr, warmup_steps, total_steps, eta_min) / base_lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class ModelEma:
    """Exponential moving average of every state-dict entry (parameters and buffers).

    After each optimizer step: ema <- decay * ema + (1 - decay) * model, as the reference's
    ModelEma. Evaluation uses the EMA copy.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        ema_state, live_state = self.module.state_dict(), model.state_dict()
        names = list(live_state)
        floats = [n for n in names if live_state[n].dtype.is_floating_point]
        others = [n for n in names if not live_state[n].dtype.is_floating_point]
        # state_dict() tensors share storage with the modules, so these lists stay live views.
        self._float_ema = [ema_state[n] for n in floats]
        self._float_live = [live_state[n] for n in floats]
        self._other_pairs = [(ema_state[n], live_state[n]) for n in others]

    @torch.no_grad()
    def update(self) -> None:
        """Blend the live weights (of the model given at construction) into the average."""
        torch._foreach_lerp_(self._float_ema, self._float_live, 1.0 - self.decay)
        for ema, live in self._other_pairs:  # integer buffers are copied, not averaged
            ema.copy_(live)
